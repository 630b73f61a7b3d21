"""Interventions act exactly where the design says, on every built-in architecture."""

import numpy as np
import pytest
import torch

import pytest_interp as pi
from pytest_interp.engine.interventions import Patch
from pytest_interp.engine.hooks import Edit
from pytest_interp.engine.runner import run

from tests.helpers import ARCHS, tiny_model


def logits_with(subject, tokens, edits):
    return run(subject, tokens, edits, lambda logits, rows, clean: logits.detach().clone())


def out_proj_weight_zeroed(model, arch, layer, cols):
    ad = pi.load(model).adapter
    proj = ad.attn_out(layer)
    with torch.no_grad():
        if arch == "gpt2":  # Conv1D stores [in, out]
            proj.weight[cols, :] = 0
        else:
            proj.weight[:, cols] = 0


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_ablating_a_head_equals_zeroing_its_out_projection_columns(arch, tokens):
    subject = pi.load(tiny_model(arch))
    layer, h = 1, 2
    site = pi.head(layer, h)
    hooked = logits_with(subject, tokens, [Edit(site, pi.Zero().prepare(subject, site, tokens))])
    surgery = tiny_model(arch)
    hd = subject.adapter.head_dim
    out_proj_weight_zeroed(surgery, arch, layer, slice(h * hd, (h + 1) * hd))
    expected = logits_with(pi.load(surgery), tokens, [])
    assert torch.allclose(hooked, expected, atol=1e-5)
    assert not torch.allclose(hooked, logits_with(subject, tokens, []), atol=1e-5)


def test_two_heads_at_once_equal_zeroing_both(tiny_llama, tokens):
    sites = [pi.head(1, 0), pi.head(1, 3)]
    hooked = logits_with(tiny_llama, tokens, [Edit(s, pi.Zero().prepare(tiny_llama, s, tokens)) for s in sites])
    surgery = tiny_model("llama")
    hd = tiny_llama.adapter.head_dim
    out_proj_weight_zeroed(surgery, "llama", 1, slice(0, hd))
    out_proj_weight_zeroed(surgery, "llama", 1, slice(3 * hd, 4 * hd))
    assert torch.allclose(hooked, logits_with(pi.load(surgery), tokens, []), atol=1e-5)


@pytest.mark.parametrize("site", [pi.head(0, 1), pi.attn(1), pi.mlp(0), pi.resid(1), pi.resid(2),
                                  pi.resid(0).at(3)])
def test_patching_clean_into_clean_changes_nothing(tiny_llama, tokens, site):
    how = Patch(source=tokens)
    patched = logits_with(tiny_llama, tokens, [Edit(site, how.prepare(tiny_llama, site, tokens), False)])
    assert torch.equal(patched, logits_with(tiny_llama, tokens, []))


def test_effect_of_a_noop_is_exactly_zero(tiny_llama, tokens):
    # the last position's residual stream cannot change any counted next-token prediction in a causal model
    e = pi.ablate(tiny_llama, pi.resid(1).at(-1), inputs=tokens, metric=pi.metrics.loss(), how=pi.Zero())
    assert e.mean == 0.0 and e.ci == (0.0, 0.0) and e.ci[0] <= 0 <= e.ci[1]
    assert e.p_value == 1.0


def test_position_restriction_leaves_earlier_logits_untouched(tiny_llama, tokens):
    site = pi.resid(1).at(10)
    hit = logits_with(tiny_llama, tokens, [Edit(site, pi.Zero().prepare(tiny_llama, site, tokens))])
    clean = logits_with(tiny_llama, tokens, [])
    assert torch.equal(hit[:, :10], clean[:, :10])
    assert not torch.allclose(hit[:, 10:], clean[:, 10:])


def test_mask_positions_per_example(tiny_llama, tokens):
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[0, 5] = True
    site = pi.resid(1).at(mask)
    hit = logits_with(tiny_llama, tokens, [Edit(site, pi.Zero().prepare(tiny_llama, site, tokens))])
    clean = logits_with(tiny_llama, tokens, [])
    assert torch.equal(hit[1:], clean[1:])
    assert not torch.allclose(hit[0, 5:], clean[0, 5:])


def test_mean_replaces_each_example_with_the_mean_of_the_others(tiny_llama, tokens):
    from pytest_interp.engine.runner import capture

    site = pi.head(0, 2)
    acts = capture(tiny_llama, tokens, [site])[site]
    n = tokens.shape[0]
    fn = pi.Mean().prepare(tiny_llama, site, tokens)
    out = fn(acts, torch.arange(n))
    others = torch.cat([acts[:3], acts[4:]])
    assert torch.allclose(out[3], others.mean(0), atol=1e-6)
    assert not torch.allclose(out[3], acts.mean(0), atol=1e-6)  # the example's own activation is left out
    flat = pi.Mean(per_position=False).prepare(tiny_llama, site, tokens)(acts[:2], torch.arange(2))
    assert torch.allclose(flat[0, 0], acts[1:].mean((0, 1)), atol=1e-6)
    whole = pi.Mean(exclude_self=False).prepare(tiny_llama, site, tokens)(acts, torch.arange(n))
    assert torch.allclose(whole[3], acts.mean(0))
    ref = pi.Mean(reference=tokens).prepare(tiny_llama, site, tokens)(acts, torch.arange(n))
    assert torch.allclose(ref[3], acts.mean(0))  # a separate reference batch is averaged whole
    with pytest.raises(pi.InterpError, match="at least 2 examples"):
        pi.Mean().prepare(tiny_llama, site, tokens[:1])


def test_size_corrected_mean_extrapolates_from_the_leave_one_out_and_a_random_half(tiny_llama, tokens):
    from pytest_interp.engine.runner import capture

    site = pi.head(0, 2)
    acts = capture(tiny_llama, tokens, [site])[site]
    n = tokens.shape[0]
    k1, k2 = n - 1, (n - 1) // 2
    assert pi.Mean().weights(n) == pytest.approx((k1 / (k1 - k2), -k2 / (k1 - k2)))
    assert pi.Mean().weights(16) == pytest.approx((15 / 8, -7 / 8))
    for one_run in (pi.Mean(debias=False), pi.Mean(exclude_self=False), pi.Mean(reference=tokens), pi.Zero()):
        assert one_run.weights(n) == (1.0,)
    half = pi.Mean(seed=3).prepare_run(tiny_llama, site, tokens, 1)(acts, torch.arange(n))
    for i in range(n):  # each example's second replacement is the mean of k2 of the others, never itself
        w = torch.linalg.lstsq(acts.reshape(n, -1).T.double(), half[i].reshape(-1).double()).solution
        assert w[i].abs() < 1e-4
        assert sorted(round(float(x) * k2) for x in w if abs(float(x)) > 1e-4) == [1] * k2
    again = pi.Mean(seed=3).prepare_run(tiny_llama, site, tokens, 1)(acts, torch.arange(n))
    assert torch.equal(half, again)

    class Half(pi.Intervention):  # the second run alone
        pure = True

        def prepare(self, subject, s, toks):
            return pi.Mean().prepare_run(subject, s, toks, 1)

        def describe(self):
            return "half"

    metric = pi.metrics.loss()
    e1 = pi.ablate(tiny_llama, site, inputs=tokens, metric=metric, how=pi.Mean(debias=False)).mean
    e2 = pi.ablate(tiny_llama, site, inputs=tokens, metric=metric, how=Half()).mean
    corrected = pi.ablate(tiny_llama, site, inputs=tokens, metric=metric)
    w1, w2 = pi.Mean().weights(n)
    assert corrected.mean == pytest.approx(w1 * e1 + w2 * e2, abs=1e-6)
    assert "size-corrected" in corrected.intervention
    assert pi.sweep(tiny_llama, [site], inputs=tokens, metric=metric)[site].mean == pytest.approx(corrected.mean,
                                                                                                 abs=1e-6)


def test_size_corrected_mean_removes_the_small_n_bias_of_a_strong_head(induction):
    # head 0.3 of the induction fixture: its leave-one-out effect at n = 8 overstates the large-n effect by
    # about 0.3 nats (benchmarks/calibration.py); the correction brings the average over batches close to it
    site = pi.head(0, 3)

    def effect(n, seed, how):
        data = pi.repeated_tokens(induction, n=n, seed=seed, layout="halves")
        return pi.ablate(induction, site, inputs=data.tokens, metric=pi.metrics.loss(mask=data.second_half),
                         how=how).mean

    large = effect(256, 999, pi.Mean())
    loo = np.mean([effect(8, s, pi.Mean(debias=False)) for s in range(24)])
    corrected = np.mean([effect(8, s, pi.Mean()) for s in range(24)])
    assert loo - large > 0.15
    assert abs(corrected - large) < 0.5 * (loo - large)


def test_resample_is_seeded_and_never_uses_the_example_itself(tiny_llama, tokens):
    from pytest_interp.engine.runner import capture

    site = pi.mlp(0)
    acts = capture(tiny_llama, tokens, [site])[site]
    rows = torch.arange(tokens.shape[0])
    a = pi.Resample(seed=1).prepare(tiny_llama, site, tokens)(acts, rows)
    b = pi.Resample(seed=1).prepare(tiny_llama, site, tokens)(acts, rows)
    c = pi.Resample(seed=2).prepare(tiny_llama, site, tokens)(acts, rows)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not any(torch.equal(a[i], acts[i]) for i in range(len(rows)))


def test_noise_is_seeded_and_scaled(tiny_llama, tokens):
    from pytest_interp.engine.runner import capture

    site = pi.resid(0)
    acts = capture(tiny_llama, tokens, [site])[site]
    rows = torch.arange(tokens.shape[0])
    a = pi.Noise(scale=3.0, seed=0).prepare(tiny_llama, site, tokens)(acts, rows)
    b = pi.Noise(scale=3.0, seed=0).prepare(tiny_llama, site, tokens)(acts, rows)
    assert torch.equal(a, b)
    ratio = float((a - acts).std() / acts.std())
    assert 2.8 < ratio < 3.2


def test_metrics_match_manual_computation(tiny_llama, tokens):
    logits = logits_with(tiny_llama, tokens, [])
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, 4:9] = True
    rows = torch.arange(tokens.shape[0])
    got = pi.metrics.loss(mask=mask).bind(tiny_llama, tokens)(logits, rows)
    nll = torch.nn.functional.cross_entropy(logits[:, 4:9].reshape(-1, 48), tokens[:, 5:10].reshape(-1),
                                            reduction="none").view(-1, 5).mean(1)
    assert torch.allclose(got, nll, atol=1e-5)
    lp = pi.metrics.logprob(tokens[:, -1], position=-2).bind(tiny_llama, tokens)(logits, rows)
    assert torch.allclose(lp, torch.log_softmax(logits[:, -2], -1).gather(1, tokens[:, -1:])[:, 0])
    ld = pi.metrics.logit_diff(3, 5).bind(tiny_llama, tokens)(logits, rows)
    assert torch.allclose(ld, logits[:, -1, 3] - logits[:, -1, 5])
    kl = pi.metrics.kl().bind(tiny_llama, tokens)(logits, rows, logits)
    assert torch.allclose(kl, torch.zeros_like(kl))
    assert pi.metrics.loss().higher_is_better is False and pi.metrics.accuracy().higher_is_better is True


def test_last_position_named_by_its_index_reads_the_last_logits(tiny_llama, tokens):
    # the LM head runs at the last position only; position=seq-1 must read it as position=-1 does
    seq = tokens.shape[1]
    by_index = pi.metrics.logprob(tokens[:, 3], position=seq - 1)
    by_end = pi.metrics.logprob(tokens[:, 3], position=-1)
    one = pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=by_index, how=pi.Zero())
    other = pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=by_end, how=pi.Zero())
    np.testing.assert_allclose(one.values, other.values, atol=1e-6)
    sw = pi.sweep(tiny_llama, [pi.mlp(0), pi.resid(1).at(seq - 1)], inputs=tokens, metric=by_index, how=pi.Zero())
    assert sw[pi.mlp(0)].mean == pytest.approx(one.mean, abs=1e-6)


def test_user_metric(tiny_llama, tokens):
    m = pi.metrics.Metric(lambda logits, toks: logits[:, -1].max(-1).values, higher_is_better=True, name="maxlogit")
    e = pi.ablate(tiny_llama, pi.mlp(1), inputs=tokens, metric=m, how=pi.Zero())
    assert e.metric == "maxlogit" and e.n == tokens.shape[0]


def test_ablate_sign_convention(tiny_llama, tokens):
    # damage: positive when behaviour gets worse, for lower-is-better and higher-is-better metrics alike
    loss = pi.ablate(tiny_llama, pi.resid(1), inputs=tokens, metric=pi.metrics.loss(), how=pi.Noise(scale=10))
    lp = pi.ablate(tiny_llama, pi.resid(1), inputs=tokens,
                   metric=pi.metrics.logprob(tokens[:, -1], position=-2), how=pi.Noise(scale=10))
    assert loss.mean == pytest.approx(loss.details["ablated_mean"] - loss.details["clean_mean"], abs=1e-5)
    assert lp.mean == pytest.approx(lp.details["clean_mean"] - lp.details["ablated_mean"], abs=1e-5)


def test_patch_both_directions_on_a_known_gap(tiny_llama, tokens):
    corrupt = tokens.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 7) % 47 + 1
    target = tokens[:, -1]
    metric = pi.metrics.logprob(target, position=-2)
    clean_s = pi.ablate(tiny_llama, pi.resid(0).at(3), inputs=tokens, metric=metric, how=pi.Zero())
    assert clean_s.n == 12
    # patching the whole residual stream entering layer 0 at the corrupted position restores everything
    whole = pi.resid(0).at(3)
    try:
        e = pi.patch(tiny_llama, whole, clean=tokens, corrupt=corrupt, metric=metric)
    except pi.InterpError:
        e = pi.patch(tiny_llama, whole, clean=corrupt, corrupt=tokens, metric=metric)
    assert e.mean == pytest.approx(1.0, abs=1e-5)
    try:
        n = pi.patch(tiny_llama, whole, clean=tokens, corrupt=corrupt, metric=metric, into="clean")
    except pi.InterpError:
        n = pi.patch(tiny_llama, whole, clean=corrupt, corrupt=tokens, metric=metric, into="clean")
    assert n.mean == pytest.approx(1.0, abs=1e-5)
    assert n.intervention == "patch corrupt -> clean" and e.intervention == "patch clean -> corrupt"


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "olmoe"])
def test_moe_adapters_locate_router_and_experts(arch):
    subject = pi.load(tiny_model(arch))
    ad = subject.adapter
    assert ad.n_experts == 4 and ad.top_k == 2
    for layer in range(subject.n_layers):
        assert ad.router(layer) is ad.block(layer).mlp.gate
        assert ad.experts(layer) is ad.block(layer).mlp.experts
        assert ad.mlp(layer) is ad.block(layer).mlp
    assert subject.identity()["experts"] == 4


def test_capture_survives_a_full_memo(tiny_llama, tokens, monkeypatch):
    # the memo used to be cleared after the sites it already held were counted as present: a KeyError
    from pytest_interp.engine import runner

    monkeypatch.setattr(runner, "_MEMO_LIMIT", 3)
    tiny_llama.clean_memo.clear()
    a, b = pi.head(0, 1), pi.head(0, 2)
    runner.capture(tiny_llama, tokens, [a])
    for i in range(3):
        runner.capture(tiny_llama, tokens[i:i + 2], [a])
    got = runner.capture(tiny_llama, tokens, [a, b])
    assert set(got) == {a, b} and got[a].shape[0] == tokens.shape[0]
    assert len(tiny_llama.clean_memo) <= 3
