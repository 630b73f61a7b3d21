"""SAEs read from the SAELens format; features as sites (the error term kept, an intervention on nothing leaves
the run exactly as it was); steering; fidelity; feature claims; bad input. Ground truth: fixtures/addition-gpt2
(CARD.md: feature 137 of the block-0 SAE fires on no-carry problems at position 8 and is used there)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import pytest_interp as pi
from tests.helpers import FIXTURES

from .test_bad_input import check

ADDITION = FIXTURES / "addition-gpt2"
SAE0 = ADDITION / "saes" / "blocks.0.hook_resid_post"
SAE1 = ADDITION / "saes" / "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def addition():
    return pi.load(ADDITION)


@pytest.fixture(scope="module")
def problems():
    sys.path.insert(0, str(FIXTURES))
    from train_addition_gpt2 import make_problems

    p = make_problems("heldout", seed=0)
    carry = p["carry"].bool()
    # prompt + s0 (9 tokens; the last predicts s1, the digit that needs the carry) and the s1 token
    return {"carry": (p["ids"][carry][:48, :9], p["ids"][carry][:48, 9]),
            "none": (p["ids"][~carry][:48, :9], p["ids"][~carry][:48, 9]), "full": p["ids"][:64]}


def _manual_logprob(model, tokens, answers, edit=None):
    """log p(answer) at the last position, with an optional edit of block 0's output (plain torch hooks)."""
    handle = None
    if edit is not None:
        handle = model.transformer.h[0].register_forward_hook(lambda m, a, out: (edit(out[0]), *out[1:])
                                                               if isinstance(out, tuple) else edit(out))
    try:
        with torch.no_grad():
            logits = model(input_ids=tokens).logits[:, -1].float()
    finally:
        if handle is not None:
            handle.remove()
    return logits.log_softmax(-1).gather(-1, answers[:, None])[:, 0]


def test_load_maps_the_hook_to_a_site_and_reads_the_weights():
    sae = pi.load_sae(SAE0)
    assert sae.site == pi.resid(1) and sae.d_in == 64 and sae.d_sae == 256 and sae.architecture == "standard"
    assert str(sae.feature(137)) == "feature 137 (resid 1)"
    assert str(sae.features([1, 2]).at(pi.last)) == "features 1, 2 (resid 1) @ -1"
    assert pi.load_sae(SAE1).site == pi.resid(2)
    assert pi.load_sae(SAE1, site=pi.resid(1)).site == pi.resid(1)
    x = torch.randn(5, 64)
    w = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(SAE0 / "sae_weights.safetensors")).items()}
    expected = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # apply_b_dec_to_input is true
    assert torch.allclose(sae.encode(x), expected, atol=1e-6)


def test_an_intervention_on_nothing_reproduces_the_clean_run_exactly(addition, problems):
    from pytest_interp.engine.hooks import hooks, install
    from pytest_interp.engine.runner import forward

    sae = pi.load_sae(SAE0)
    tokens = problems["full"]
    clean = forward(addition, tokens).logits
    for site in (sae.features(), sae.feature(137)):
        with hooks([install(addition, site, lambda acts: acts.clone())]):
            same = forward(addition, tokens).logits
        assert torch.equal(same, clean)  # the SAE's error term stays: no reconstruction error is introduced
    steered = pi.ablate(addition, sae.feature(137), inputs=tokens, metric=pi.metrics.loss(), how=pi.Steer(0.0))
    assert np.all(steered.values == 0.0)


def test_zero_ablating_the_no_carry_feature_matches_plain_torch(addition, problems):
    from safetensors.torch import load_file

    sae = pi.load_sae(SAE0)
    w = load_file(str(SAE0 / "sae_weights.safetensors"))
    f = sae.feature(137).at(pi.last)
    for key, must_damage in (("none", True), ("carry", False)):
        tokens, answers = problems[key]
        metric = pi.metrics.logprob(answers, position=pi.last)
        eff = pi.ablate(addition, f, inputs=tokens, metric=metric, how=pi.Zero())

        def edit(h):
            a = torch.relu((h[:, -1] - w["b_dec"]) @ w["W_enc"][:, 137] + w["b_enc"][137])
            h = h.clone()
            h[:, -1] -= a[:, None] * w["W_dec"][137]
            return h

        manual = _manual_logprob(addition.model, tokens, answers) - _manual_logprob(addition.model, tokens, answers,
                                                                                    edit)
        assert np.allclose(eff.values, manual.numpy(), atol=1e-5)
        if must_damage:
            assert eff.ci[0] > 0.1
        else:
            assert abs(eff.mean) < 1e-4
    sweep = pi.sweep(addition, [f, sae.feature(246).at(pi.last)], inputs=problems["none"][0],
                     metric=pi.metrics.logprob(problems["none"][1], position=pi.last), how=pi.Zero())
    one = pi.ablate(addition, f, inputs=problems["none"][0], metric=pi.metrics.logprob(problems["none"][1],
                    position=pi.last), how=pi.Zero())
    assert np.allclose(sweep[f].values, one.values, rtol=1e-4, atol=1e-4)  # float32 batching


@pytest.mark.parametrize("how", [pi.Mean(), pi.Resample(seed=1), pi.Noise(seed=1), pi.Steer(2.0)], ids=repr)
def test_interventions_are_defined_on_features(addition, problems, how):
    sae = pi.load_sae(SAE0)
    tokens, answers = problems["none"]
    eff = pi.ablate(addition, sae.features([137, 246]).at(pi.last), inputs=tokens,
                    metric=pi.metrics.logprob(answers, position=pi.last), how=how)
    assert eff.n == len(tokens) and np.isfinite(eff.mean)


def test_patching_a_feature_from_another_run_matches_plain_torch(addition, problems):
    from safetensors.torch import load_file

    from pytest_interp.engine.interventions import Patch

    sae = pi.load_sae(SAE0)
    w = load_file(str(SAE0 / "sae_weights.safetensors"))
    (none, ans), (carry, _) = problems["none"], problems["carry"]
    eff = pi.ablate(addition, sae.feature(137).at(pi.last), inputs=none,
                    metric=pi.metrics.logprob(ans, position=pi.last), how=Patch(source=carry))

    def act(h):
        return torch.relu((h[:, -1] - w["b_dec"]) @ w["W_enc"][:, 137] + w["b_enc"][137])

    with torch.no_grad():
        donor = act(addition.model(input_ids=carry, output_hidden_states=True).hidden_states[1])

    def edit(h):
        h = h.clone()
        h[:, -1] += (donor - act(h))[:, None] * w["W_dec"][137]
        return h

    manual = _manual_logprob(addition.model, none, ans) - _manual_logprob(addition.model, none, ans, edit)
    assert np.allclose(eff.values, manual.numpy(), atol=1e-5)
    assert eff.ci[0] > 0.1  # the carry problems' (absent) feature costs the no-carry answer


def _predicts(target):
    """1 where the model's top prediction at the last position is ``target`` (per example)."""
    return pi.metrics.Metric(lambda logits, tokens, rows: (logits[:, -1].argmax(-1) == target[rows]).float(),
                             reads=pi.last, name="predicts s1 - 1")


def test_steering_matches_plain_torch(addition, problems):
    from safetensors.torch import load_file

    sae = pi.load_sae(SAE0)
    w = load_file(str(SAE0 / "sae_weights.safetensors"))
    tokens, answers = problems["carry"]
    eff = pi.ablate(addition, sae.feature(137).at(pi.last), inputs=tokens,
                    metric=pi.metrics.logprob(answers, position=pi.last), how=pi.Steer(3.0))

    def edit(h):
        h = h.clone()
        h[:, -1] += 3.0 * w["W_dec"][137]
        return h

    manual = _manual_logprob(addition.model, tokens, answers) - _manual_logprob(addition.model, tokens, answers, edit)
    assert np.allclose(eff.values, manual.numpy(), atol=1e-5)
    assert eff.ci[0] > 0.5  # adding the no-carry feature to carry problems costs the right s1


def test_fidelity_and_the_faithfulness_claim(addition, problems):
    tokens = problems["full"]
    good = pi.assert_sae_faithful(addition, pi.load_sae(SAE0), inputs=tokens, ce_recovered_at_least=0.9)
    assert good.ci[0] >= 0.9
    fid = pi.sae_fidelity(addition, pi.load_sae(SAE0), tokens)
    assert fid.explained_variance > 0.9 and 0 < fid.l0 < 64 and 0 <= fid.dead < 256
    other = pi.load_sae(SAE1, site=pi.resid(1))  # the block-1 SAE read at block 0: not faithful there
    with pytest.raises(pi.ClaimFailed, match="is faithful at resid 1"):
        pi.assert_sae_faithful(addition, other, inputs=tokens, ce_recovered_at_least=0.9)
    assert pi.sae_fidelity(addition, other, tokens).recovered.ci[1] < 0.9


def test_an_sae_of_another_model_is_not_faithful(induction):
    # the addition model's block-0 SAE has the width of induction-llama's residual stream (64), so it loads there
    # and runs, and recovers little of what zero-ablating the site costs
    data = pi.repeated_tokens(induction, n=32, seed=0, layout="halves")
    foreign = pi.load_sae(SAE0)
    fid = pi.sae_fidelity(induction, foreign, data.tokens)
    assert fid.recovered.ci[1] < 0.5 and fid.explained_variance < 0.5
    with pytest.raises(pi.ClaimFailed, match="is faithful"):
        pi.assert_sae_faithful(induction, foreign, inputs=data.tokens, ce_recovered_at_least=0.8)


def test_feature_claims_hold_and_fail(addition, problems):
    sae = pi.load_sae(SAE0)
    f = sae.feature(137).at(pi.last)
    (none, ans_none), (carry, ans_carry) = problems["none"], problems["carry"]
    eff = pi.assert_feature_necessary(addition, f, inputs=none, metric=pi.metrics.logprob(ans_none, position=pi.last),
                                      at_least=0.1)
    assert eff.ci[0] >= 0.1
    with pytest.raises(pi.ClaimFailed):  # on carry problems it is off: nothing to ablate
        pi.assert_feature_necessary(addition, f, inputs=carry, metric=pi.metrics.logprob(ans_carry, position=pi.last),
                                    at_least=0.1)
    # steering by the no-carry feature's mean activation (1.07) makes carry problems answer s1 - 1 (98% of 48);
    # the carry-selective decoy feature 246, steered alike, changes no answer
    minus_one = torch.where(ans_carry == 1, torch.tensor(10), ans_carry - 1)  # ids: digit d is d + 1
    pi.assert_feature_sufficient(addition, f, inputs=carry, metric=_predicts(minus_one), steer=1.0, at_least=0.8)
    with pytest.raises(pi.ClaimFailed, match="steering"):
        pi.assert_feature_sufficient(addition, sae.feature(246).at(pi.last), inputs=carry, metric=_predicts(minus_one),
                                     steer=1.0, at_least=0.8)
    sel = pi.assert_feature_selective(addition, sae.feature(137), positive=none, negative=carry, auc_at_least=0.9)
    assert sel.mean > 0.95
    with pytest.raises(pi.ClaimFailed, match="selective"):
        pi.assert_feature_selective(addition, sae.feature(137), positive=carry, negative=none, auc_at_least=0.9)


def test_feature_activations_and_top_examples(addition, problems):
    sae = pi.load_sae(SAE0)
    tokens = torch.cat([problems["none"][0][:8], problems["carry"][0][:8]])
    acts = pi.features(addition, sae, tokens)
    assert acts.acts.shape == (16, 9, 256)
    top = acts.top(137, k=5)
    assert all(pos == 8 and ex < 8 for ex, pos, _ in top)  # no-carry examples, at the carry position
    assert acts.at(pi.last)[:8, 137].min() > 0 and acts.frequency().shape == (256,)


def _write(tmp_path, cfg, weights):
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "sae_weights.safetensors"))
    return tmp_path


def _weights(d_in=64, d_sae=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
            "b_enc": torch.randn(d_sae, generator=g), "b_dec": torch.randn(d_in, generator=g)}


def test_jumprelu_topk_and_flat_configs(tmp_path):
    w = _weights()
    x = torch.randn(7, 64)
    pre = x @ w["W_enc"] + w["b_enc"]
    thr = torch.full((32,), 0.5)
    jump = pi.load_sae(_write(tmp_path / "j", {"architecture": "jumprelu", "d_in": 64, "d_sae": 32,
                                               "metadata": {"hook_name": "blocks.1.hook_mlp_out"}},
                              {**w, "threshold": thr}))
    assert jump.site == pi.mlp(1)
    assert torch.allclose(jump.encode(x), pre * (pre > 0.5))
    topk = pi.load_sae(_write(tmp_path / "k", {"architecture": "topk", "k": 3,
                                               "metadata": {"hook_name": "blocks.0.hook_attn_out"}}, w))
    got = topk.encode(x)
    assert topk.site == pi.attn(0) and bool(((got > 0).sum(-1) <= 3).all())
    assert torch.allclose(got.max(-1).values, pre.max(-1).values.relu())
    for sae in (jump, topk, pi.load_sae(SAE0)):  # encoding only some features gives their full-encoding values
        xs = x if sae.d_in == 64 else x[:, :sae.d_in]
        assert torch.allclose(sae.encode(xs, [3, 7, 1]), sae.encode(xs)[..., [3, 7, 1]], atol=1e-6)
    flat = pi.load_sae(_write(tmp_path / "f", {"hook_point": "blocks.0.attn.hook_z", "hook_point_head_index": 2,
                                               "d_in": 64, "d_sae": 32}, w))
    assert flat.site == pi.head(0, 2)


def test_bad_saes_get_clear_errors(tmp_path, addition, problems):
    w = _weights()
    ok = {"metadata": {"hook_name": "blocks.0.hook_resid_post"}}
    cases = [
        ({"metadata": {"hook_name": "blocks.0.hook_resid_mid"}}, w, ("cannot map", "hook_resid_mid")),
        ({"metadata": {"hook_name": "blocks.0.attn.hook_z"}}, w, ("every head's z",)),
        ({**ok, "architecture": "gated"}, w, ("not supported", "gated")),
        ({**ok, "normalize_activations": "layer_norm"}, w, ("normalisation",)),
        (ok, {**w, "W_enc": torch.full((64, 32), float("nan"))}, ("NaN",)),
        (ok, {**w, "W_dec": torch.randn(64, 32)}, ("wrong shape", "W_dec")),
        ({**ok, "d_sae": 99}, w, ("d_sae = 99",)),
        ({}, w, ("names no hook",)),
    ]
    for i, (cfg, weights, words) in enumerate(cases):
        with pytest.raises(pi.InterpError) as err:
            pi.load_sae(_write(tmp_path / str(i), cfg, weights))
        check(err, *words)
    with pytest.raises(pi.InterpError) as err:
        pi.load_sae(tmp_path / "nowhere")
    check(err, "cfg.json")
    sae = pi.load_sae(SAE0)
    with pytest.raises(pi.InterpError) as err:
        sae.feature(256)
    check(err, "out of range", "0..255")
    with pytest.raises(pi.InterpError) as err:
        sae.features(["a"])
    check(err, "must be ints")
    wide = pi.load_sae(_write(tmp_path / "wide", ok, _weights(d_in=32)))
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(addition, wide.feature(0), inputs=problems["full"], metric=pi.metrics.loss(), how=pi.Zero())
    check(err, "does not fit", "d_in = 64", "d_in = 32")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(addition, pi.resid(1), inputs=problems["full"], metric=pi.metrics.loss(), how=pi.Steer(1.0))
    check(err, "needs a direction")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(addition, pi.resid(1), inputs=problems["full"], metric=pi.metrics.loss(),
                  how=pi.Steer(1.0, direction=torch.zeros(64)))
    check(err, "zero")
    with pytest.raises(pi.InterpError) as err:
        pi.assert_feature_necessary(addition, pi.head(0, 0), inputs=problems["full"], metric=pi.metrics.loss(),
                                    at_least=0.1)
    check(err, "SAE features")


@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu"])
def test_a_dictionary_learning_ae_pt_converts(tmp_path, kind):
    import subprocess

    from tests.helpers import ROOT

    g = torch.Generator().manual_seed(1)
    d_in, d_sae = 16, 40
    enc_w, enc_b = torch.randn(d_sae, d_in, generator=g), torch.randn(d_sae, generator=g)
    dec_w, bias = torch.randn(d_in, d_sae, generator=g), torch.randn(d_in, generator=g)
    x = torch.randn(6, d_in, generator=g)
    if kind == "standard":  # dictionary_learning's AutoEncoder
        state = {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "bias": bias}
        expected = torch.relu((x - bias) @ enc_w.T + enc_b)
    elif kind == "topk":
        state = {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "b_dec": bias,
                 "k": torch.tensor(4)}
        pre = torch.relu((x - bias) @ enc_w.T + enc_b)
        top = pre.topk(4, dim=-1)
        expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    else:
        thr = torch.rand(d_sae, generator=g)
        state = {"W_enc": enc_w.T.clone(), "b_enc": enc_b, "W_dec": dec_w.T.clone(), "b_dec": bias, "threshold": thr}
        pre = x @ enc_w.T + enc_b
        expected = torch.relu(pre) * (pre > thr)
    torch.save(state, tmp_path / "ae.pt")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_sae.py"), str(tmp_path / "ae.pt"),
                          str(tmp_path / "sae"), "--hook", "blocks.2.hook_resid_pre"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sae = pi.load_sae(tmp_path / "sae")
    assert sae.site == pi.resid(2) and sae.architecture == kind
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    assert torch.allclose(sae.decode(expected), expected @ dec_w.T + bias, atol=1e-5)


def test_the_feature_screen_ranks_like_exact_ablation(addition, problems):
    sae = pi.load_sae(SAE0)
    tokens = torch.cat([problems["none"][0][:32], problems["carry"][0][:32]])
    s1 = torch.cat([problems["none"][1][:32], problems["carry"][1][:32]])
    wrong = torch.where(s1 == 1, torch.tensor(10), s1 - 1)
    metric = pi.metrics.logit_diff(s1, wrong, position=pi.last)
    est = pi.attribution_sweep(addition, [sae.features(range(64)).at(pi.last)], inputs=tokens, metric=metric,
                               how=pi.Zero())
    assert len(est) == 64 and sae.feature(5).at(pi.last) in est
    exact = pi.sweep(addition, [sae.feature(i).at(pi.last) for i in range(64)], inputs=tokens, metric=metric,
                     how=pi.Zero())
    assert pi.rank_agreement(est, exact) > 0.8
