"""Sweeps give, site by site, exactly what the single-site experiments give."""

import numpy as np
import pytest
import torch

import pytest_interp as pi


def test_ablation_sweep_equals_single_ablations(tiny_llama, tokens):
    metric = pi.metrics.loss()
    sw = pi.sweep(tiny_llama, inputs=tokens, metric=metric, how=pi.Zero())
    assert len(sw) == 8 and set(sw) == {pi.head(l, h) for l in range(2) for h in range(4)}
    for site in [pi.head(0, 0), pi.head(1, 3)]:
        one = pi.ablate(tiny_llama, site, inputs=tokens, metric=metric, how=pi.Zero())
        assert sw[site].mean == pytest.approx(one.mean, abs=1e-6)
        assert sw[site].ci == pytest.approx(one.ci, abs=1e-6)
        np.testing.assert_allclose(sw[site].values, one.values, atol=1e-6)
    assert sw.work.fraction == pytest.approx(0.75)  # layer-1 heads reuse the clean layer 0
    grid, rows, cols = sw.grid()
    assert grid.shape == (2, 4) and rows == ["L0", "L1"] and cols == ["H0", "H1", "H2", "H3"]
    assert grid[1, 3] == pytest.approx(sw[pi.head(1, 3)].mean)
    ranked = sw.ranked()
    assert [e.mean for _, e in ranked] == sorted((e.mean for e in sw.values()), reverse=True)


def test_patch_sweep_equals_single_patches(tiny_llama, tokens):
    corrupt = tokens.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 5) % 47 + 1
    metric = pi.metrics.logprob(tokens[:, -1], position=-2)
    try:
        pi.patch(tiny_llama, pi.resid(0).at(2), clean=tokens, corrupt=corrupt, metric=metric)
        clean, bad = tokens, corrupt
    except pi.InterpError:
        clean, bad = corrupt, tokens
    sw = pi.patch_sweep(tiny_llama, clean=clean, corrupt=bad, metric=metric, positions=[1, 2, 3])
    assert sw.to_numpy().shape == (2, 3)
    for site in [pi.resid(0).at(2), pi.resid(1).at(3)]:
        one = pi.patch(tiny_llama, site, clean=clean, corrupt=bad, metric=metric)
        assert sw[site].mean == pytest.approx(one.mean, abs=1e-6)
    # only the corrupted position carries the difference into layer 0
    assert sw[pi.resid(0).at(2)].mean == pytest.approx(1.0, abs=1e-5)
    assert sw[pi.resid(0).at(1)].mean == pytest.approx(0.0, abs=1e-6)


def test_sweep_rejects_unknown_sites(tiny_llama, tokens):
    sw = pi.sweep(tiny_llama, [pi.mlp(0), pi.mlp(1)], inputs=tokens, metric=pi.metrics.loss(), how=pi.Zero())
    assert sw.grid()[2] == ["mlp"]
    with pytest.raises(pi.InterpError, match="not in this sweep"):
        sw[pi.mlp(5)]
    with pytest.raises(pi.InterpError, match="kind"):
        pi.patch_sweep(tiny_llama, clean=tokens, corrupt=torch.flip(tokens, [0]), metric=pi.metrics.loss(),
                       kind="heads")


@pytest.mark.parametrize("how", [pi.Mean(), pi.Resample(seed=2), pi.Noise(seed=1)], ids=["mean", "resample", "noise"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "bert"])
def test_prefix_reuse_and_packing_do_not_change_numbers(arch, how, tokens):
    from pytest_interp.core import settings as _settings
    from tests.helpers import tiny_model

    subject = pi.load(tiny_model(arch))
    sites = [pi.head(1, 0), pi.head(1, 2), pi.attn(1), pi.mlp(1).at(5), pi.resid(1), pi.resid(2)]
    metric = pi.metrics.kl()
    _settings.configure(batch_size=48)  # 4 sites of 12 examples per forward
    sw = pi.sweep(subject, sites, inputs=tokens, metric=metric, how=how)
    _settings.configure(batch_size=64)
    for site in sites:
        one = pi.ablate(subject, site, inputs=tokens, metric=metric, how=how)
        assert sw[site].mean == pytest.approx(one.mean, abs=1e-5), site
    assert sw.work.fraction < 0.6


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_patches_that_change_nothing_are_not_run(arch, tokens):
    from tests.helpers import tiny_model

    subject = pi.load(tiny_model(arch))
    corrupt = tokens.clone()
    corrupt[:, 3] = corrupt[:, 3] % 47 + 1
    # an encoder has no next-token loss: it is scored by the log-prob of the clean token at position 6
    metric = pi.metrics.loss() if arch != "bert" else pi.metrics.logprob(tokens[:, 6], position=6)
    try:  # random weights: whichever of the two scores better is the clean run
        sw = pi.patch_sweep(subject, clean=tokens, corrupt=corrupt, metric=metric)
    except pi.InterpError:
        tokens, corrupt = corrupt, tokens
        sw = pi.patch_sweep(subject, clean=tokens, corrupt=corrupt, metric=metric)
    n_layers, seq = subject.n_layers, tokens.shape[1]
    for site in [pi.resid(0).at(1), pi.resid(1).at(0), pi.resid(0).at(5), pi.resid(0).at(3), pi.resid(1).at(3),
                 pi.resid(1).at(2), pi.resid(n_layers - 1).at(seq - 1)]:
        one = pi.patch(subject, site, clean=tokens, corrupt=corrupt, metric=metric)
        np.testing.assert_allclose(sw[site].values, one.values, atol=1e-6, err_msg=str(site))
    if arch == "bert":  # every position sees position 3 from layer 1 on: nothing can be skipped there
        assert sw[pi.resid(1).at(2)].mean != 0
        return
    # a causal model: positions before 3 are the same in both runs at every layer, and at layer 0 only
    # position 3 differs; the last position makes no prediction the loss counts. Those patches are not run and
    # restore exactly nothing
    same = [(lay, p) for lay in range(n_layers) for p in range(seq)
            if p < 3 or (lay == 0 and p != 3) or p == seq - 1]
    for lay, p in same:
        assert sw[pi.resid(lay).at(p)].mean == 0.0
    ran = sum((n_layers - lay) * (seq - p) for lay in range(n_layers) for p in range(seq) if (lay, p) not in same)
    assert sw.work.fraction == pytest.approx(ran / (n_layers * seq * n_layers * seq))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_the_lm_head_runs_only_where_the_metric_reads(arch, tokens):
    from tests.helpers import tiny_model

    subject = pi.load(tiny_model(arch))
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, 6:11] = True  # the predictions made at positions 6..10

    def manual(logits, toks):  # the same loss from every position's logits
        lp = torch.log_softmax(logits[:, 6:11].float(), -1).gather(-1, toks[:, 7:12, None])[..., 0]
        return -lp.mean(1)

    widths = []
    head = subject.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, o: widths.append(a[0].shape[1]))
    sites = [pi.head(0, 1), pi.head(1, 0), pi.mlp(1).at(8), pi.resid(1).at(3), pi.resid(1).at(12)]
    try:
        trimmed = pi.sweep(subject, sites, inputs=tokens, metric=pi.metrics.loss(mask=mask), how=pi.Zero())
    finally:
        handle.remove()
    assert widths and max(widths) == 5  # never more than the 5 positions read
    full = pi.sweep(subject, sites, inputs=tokens, metric=pi.metrics.Metric(manual, higher_is_better=False), how=pi.Zero())
    for site in sites:
        assert trimmed[site].mean == pytest.approx(full[site].mean, abs=1e-5), site
    assert trimmed[pi.resid(1).at(12)].mean == 0.0  # after every position read: not run
    middle = pi.metrics.logprob(tokens[:, 9], position=8)  # one position inside the sequence
    sw = pi.sweep(subject, sites, inputs=tokens, metric=middle, how=pi.Zero())
    for site in sites:
        one = pi.ablate(subject, site, inputs=tokens, metric=middle, how=pi.Zero())
        assert sw[site].mean == pytest.approx(one.mean, abs=1e-5), site


def test_interventions_of_unknown_purity_are_always_run(tiny_llama, tokens):
    class Keep(pi.Intervention):  # a user's intervention: the sweep cannot know it is deterministic
        must_change = False

        def prepare(self, subject, site, tokens):
            return lambda act, rows: act.clone()

        def describe(self):
            return "keep"

    sw = pi.sweep(tiny_llama, [pi.resid(1), pi.mlp(0)], inputs=tokens, metric=pi.metrics.loss(), how=Keep())
    assert sw.work.fraction == pytest.approx((1 + 2) / (2 * 2))
    assert sw[pi.resid(1)].mean == pytest.approx(0.0, abs=1e-6)
    assert not pi.Intervention.pure and pi.Zero.pure and pi.Mean.pure
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, 2:6] = True
    late = pi.sweep(tiny_llama, [pi.resid(1).at(9)], inputs=tokens, metric=pi.metrics.loss(mask=mask), how=Keep())
    assert late.work.fraction == pytest.approx((1 * (16 - 9)) / (2 * 16))  # run, though after every read position
    assert late[pi.resid(1).at(9)].mean == 0.0


def test_attribution_screen_matches_exact_effects_in_the_linear_regime(tiny_llama, tokens):
    metric = pi.metrics.loss()
    est = pi.attribution_sweep(tiny_llama, inputs=tokens, metric=metric)
    exact = pi.sweep(tiny_llama, inputs=tokens, metric=metric)
    assert pi.rank_agreement(est, exact) > 0.9
    for site in exact:
        assert est[site].mean == pytest.approx(exact[site].mean, abs=5e-4)
    assert est[pi.head(0, 0)].method == "attribution"
    with pytest.raises(pi.InterpError, match="deterministic replacement"):
        pi.attribution_sweep(tiny_llama, inputs=tokens, metric=metric, how=pi.Noise())


@pytest.mark.parametrize("fits", [True, False], ids=["one-pass", "chunked"])
def test_attribution_screen_reads_its_means_without_a_pass_per_site(fits, tokens):
    from pytest_interp.core import settings as _settings
    from tests.helpers import tiny_model

    subject = pi.load(tiny_model("llama"))
    calls = []
    handle = subject.model.register_forward_hook(lambda m, a, o: calls.append(1))
    if not fits:
        _settings.configure(batch_size=8)  # 12 examples: two chunks
    try:
        est = pi.attribution_sweep(subject, inputs=tokens, metric=pi.metrics.loss())
    finally:
        _settings.configure(batch_size=64)
        handle.remove()
    assert len(calls) == (1 if fits else 2 + 2)  # own pass; or capture, then screen (2 chunks)
    exact = pi.sweep(subject, inputs=tokens, metric=pi.metrics.loss())
    assert pi.rank_agreement(est, exact) > 0.9


def test_the_output_head_runs_per_slot_only_when_that_gives_the_models_own_logits(tokens):
    import transformers as tf

    from pytest_interp.engine.sweep import _head_split
    from tests.helpers import tiny_model

    plain = pi.load(tiny_model("llama"))
    assert _head_split(plain) is not None

    class Scaled(tf.LlamaForCausalLM):  # logits scaled after the head, as some architectures do
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    scaled_model = Scaled(plain.model.config).eval()
    scaled_model.load_state_dict(plain.model.state_dict())
    scaled = pi.load(scaled_model)
    assert _head_split(scaled) is None  # the check fails: the sweep uses the model's own logits
    metric = pi.metrics.loss()
    for subject in (plain, scaled):
        sw = pi.sweep(subject, [pi.head(1, 0), pi.mlp(0).at(5)], inputs=tokens, metric=metric)
        for s in sw:
            assert sw[s].mean == pytest.approx(pi.ablate(subject, s, inputs=tokens, metric=metric).mean, abs=1e-5)
