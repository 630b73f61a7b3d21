"""Generation under interventions (pi.Greedy, pi.Sample, metrics.generates), input families (strategies) and
stability claims (pi.assert_stable, pi.stability, pi.assert_rank_stable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import pytest_interp as pi
from pytest_interp import strategies as ps
from pytest_interp.core.decoding import example_seed
from pytest_interp.core.stats import mean_effect
from pytest_interp.engine.hooks import Edit
from pytest_interp.engine.runner import generate
from tests.helpers import tiny_model


def zero_head_hook(model, layer, head, positions=None):
    """A plain pre-hook zeroing one head's columns at the input of the out-projection (the hand-written edit)."""
    attn = model.model.layers[layer].self_attn
    d = attn.head_dim

    def pre(module, args):
        x = args[0].clone()
        if positions is None:
            x[..., head * d:(head + 1) * d] = 0
        else:
            for b, p in positions:
                x[b, p, head * d:(head + 1) * d] = 0
        return (x, *args[1:])
    return attn.o_proj.register_forward_pre_hook(pre)


def hand_greedy(model, ids, new):
    seqs = ids.clone()
    with torch.no_grad():
        for _ in range(new):
            nxt = model(input_ids=seqs).logits[:, -1].float().argmax(-1)
            seqs = torch.cat([seqs, nxt[:, None]], 1)
    return seqs[:, ids.shape[1]:]


def hand_sample(model, ids, new, *, n, seed, temperature, top_k=0, top_p=1.0):
    """The documented draw, written out: temperature, top-k, top-p, then inverse-CDF with per-example uniforms."""
    seqs = ids.repeat_interleave(n, 0)
    gens = [torch.Generator().manual_seed(example_seed(seed, i)) for i in range(ids.shape[0])]
    with torch.no_grad():
        for _ in range(new):
            z = model(input_ids=seqs).logits[:, -1].double() / temperature
            if top_k:
                kth = torch.topk(z, top_k, -1).values[:, -1:]
                z = z.masked_fill(z < kth, float("-inf"))
            p = torch.softmax(z, -1)
            if top_p < 1:
                sp, order = p.sort(dim=-1, descending=True, stable=True)
                sp[(sp.cumsum(-1) - sp) >= top_p] = 0
                p = torch.zeros_like(p).scatter(-1, order, sp)
                p = p / p.sum(-1, keepdim=True)
            u = torch.cat([torch.rand(n, generator=g, dtype=torch.float64) for g in gens])
            nxt = (p.cumsum(-1) < u[:, None]).sum(-1)
            seqs = torch.cat([seqs, nxt[:, None]], 1)
    return seqs[:, ids.shape[1]:].reshape(ids.shape[0], n, new)


def zero_edit(site):
    return Edit(site, lambda a, r: torch.zeros_like(a))


# ----------------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------------

def test_greedy_generation_under_ablation_equals_a_hand_written_loop(tiny_llama, tokens):
    ids = tokens[:6, :10]
    got = generate(tiny_llama, ids, pi.Greedy(max_new_tokens=6), [zero_edit(pi.head(1, 2))], torch.arange(6))
    h = zero_head_hook(tiny_llama.model, 1, 2)
    try:
        want = hand_greedy(tiny_llama.model, ids, 6)
        # transformers' own generate (key/value cache) with the same hook writes the same text
        hf = tiny_llama.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                       do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    finally:
        h.remove()
    assert torch.equal(got[:, 0], want)
    assert torch.equal(got[:, 0], hf)
    clean = generate(tiny_llama, ids, pi.Greedy(max_new_tokens=6), [], torch.arange(6))
    assert not torch.equal(clean, got)  # the ablation changes the text, so the comparison means something


@pytest.mark.parametrize("kw", [dict(temperature=0.8), dict(temperature=1.3, top_k=5), dict(temperature=0.9, top_p=0.7)])
def test_sampling_under_ablation_equals_a_hand_written_loop_with_the_same_seed(tiny_llama, tokens, kw):
    ids = tokens[:5, :8]
    d = pi.Sample(n=4, seed=3, max_new_tokens=5, **kw)
    got = generate(tiny_llama, ids, d, [zero_edit(pi.head(0, 1))], torch.arange(5))
    h = zero_head_hook(tiny_llama.model, 0, 1)
    try:
        want = hand_sample(tiny_llama.model, ids, 5, n=4, seed=3, **kw)
    finally:
        h.remove()
    assert torch.equal(got, want)
    assert len({tuple(x) for x in got.reshape(-1, 5).tolist()}) > 1  # it samples: not one text for all


def test_sampling_does_not_depend_on_the_batch(tiny_llama, tokens):
    ids = tokens[:6, :8]
    d = pi.Sample(temperature=1.0, n=3, seed=0, max_new_tokens=4)
    whole = generate(tiny_llama, ids, d, [], torch.arange(6))
    part = generate(tiny_llama, ids, d, [], torch.tensor([3, 4]))
    assert torch.equal(whole[3:5], part)


def test_a_prompt_position_site_edits_the_prompt_only(tiny_llama, tokens):
    ids = tokens[:4, :9]
    got = generate(tiny_llama, ids, pi.Greedy(max_new_tokens=5), [zero_edit(pi.head(1, 0).at(pi.last))],
                   torch.arange(4))
    h = zero_head_hook(tiny_llama.model, 1, 0, positions=[(b, 8) for b in range(4)])
    try:
        want = hand_greedy(tiny_llama.model, ids, 5)
    finally:
        h.remove()
    assert torch.equal(got[:, 0], want)


def test_ragged_prompts_generate_what_each_prompt_generates_alone(tiny_gpt2, tokens):
    from pytest_interp.core.batch import pad

    rows = [tokens[0, :5].tolist(), tokens[1, :9].tolist(), tokens[2, :7].tolist()]
    batch = pad(rows)
    d = pi.Greedy(max_new_tokens=4)
    got = generate(tiny_gpt2, batch, d, [zero_edit(pi.mlp(0))], torch.arange(3))
    for i, r in enumerate(rows):
        alone = generate(tiny_gpt2, torch.tensor([r]), d, [zero_edit(pi.mlp(0))], torch.arange(1))
        assert torch.equal(got[i], alone[0])


def test_a_generation_metric_makes_ablate_and_sweep_generate(tiny_gpt2, claim_tokens):
    ids = claim_tokens[:, :8]
    d = pi.Greedy(max_new_tokens=3)
    clean = generate(tiny_gpt2, ids, d, [], torch.arange(len(ids)))[:, 0]
    metric = pi.metrics.generates(clean[:, 0].tolist(), decoding=d)  # the clean run's first generated token
    e = pi.ablate(tiny_gpt2, pi.mlp(1), inputs=ids, metric=metric, how=pi.Zero())
    assert e.details["clean_mean"] == 1.0 and e.details["decoding"] == "greedy, 3 new tokens"
    ablated = generate(tiny_gpt2, ids, d, [zero_edit(pi.mlp(1))], torch.arange(len(ids)))[:, 0]
    want = 1.0 - (ablated == clean[:, :1]).any(-1).float().mean().item()
    assert e.mean == pytest.approx(want)
    sw = pi.sweep(tiny_gpt2, [pi.mlp(0), pi.mlp(1)], inputs=ids, metric=metric, how=pi.Zero())
    assert sw[pi.mlp(1)].mean == pytest.approx(e.mean)


def test_the_default_mean_ablation_averages_over_positions_when_generating(tiny_gpt2, claim_tokens):
    ids = claim_tokens[:, :8]
    metric = pi.metrics.generates(1, decoding=pi.Greedy(max_new_tokens=2))
    e = pi.ablate(tiny_gpt2, pi.mlp(0), inputs=ids, metric=metric)
    assert "all positions" in e.intervention


def test_a_positional_intervention_over_generated_positions_is_refused(tiny_gpt2, claim_tokens):
    ids = claim_tokens[:, :8]
    metric = pi.metrics.generates(1, decoding=pi.Greedy(max_new_tokens=2))
    with pytest.raises(pi.InterpError, match="position by position"):
        pi.ablate(tiny_gpt2, pi.mlp(0), inputs=ids, metric=metric, how=pi.Resample())
    pi.ablate(tiny_gpt2, pi.mlp(0).at(pi.last), inputs=ids, metric=metric, how=pi.Resample())  # the prompt only


def test_samples_per_prompt_make_a_rate(tiny_gpt2, claim_tokens):
    ids = claim_tokens[:, :6]
    d = pi.Sample(temperature=2.0, n=6, seed=1, max_new_tokens=3)
    metric = pi.metrics.generates(5, decoding=d)
    e = pi.ablate(tiny_gpt2, pi.mlp(0), inputs=ids, metric=metric, how=pi.Zero())
    gen = generate(tiny_gpt2, ids, d, [], torch.arange(len(ids)))
    rate = (gen == 5).any(-1).float().mean(-1)
    assert e.details["clean_mean"] == pytest.approx(float(rate.mean()))
    assert set(np.round(rate.numpy() * 6).tolist()) <= set(range(7))


def test_stop_tokens_end_the_text():
    from pytest_interp.core.decoding import cut_at_stop

    g = torch.tensor([[4, 7, 2, 7, 9], [1, 2, 3, 4, 5]])
    assert cut_at_stop(g, (7,)).tolist() == [[4, 7, -1, -1, -1], [1, 2, 3, 4, 5]]


@pytest.mark.parametrize("make, match", [
    (lambda: pi.Sample(temperature=0), "temperature"),
    (lambda: pi.Sample(temperature=-1.0), "temperature"),
    (lambda: pi.Sample(top_p=0.0), "top_p"),
    (lambda: pi.Sample(top_p=1.5), "top_p"),
    (lambda: pi.Sample(n=0), "n must be"),
    (lambda: pi.Greedy(max_new_tokens=0), "max_new_tokens"),
    (lambda: pi.Sample(top_k=-1), "top_k"),
    (lambda: pi.metrics.generates(1, decoding="greedy"), "decoding"),
])
def test_decoding_settings_out_of_range_are_refused(make, match):
    with pytest.raises(pi.InterpError, match=match):
        make()


def test_generation_needs_a_causal_model_and_fitting_lengths(tiny_gpt2, claim_tokens):
    bert = pi.load(tiny_model("bert"))
    metric = pi.metrics.generates(1)
    with pytest.raises(pi.InterpError, match="not a causal LM"):
        pi.ablate(bert, pi.mlp(0), inputs=claim_tokens, metric=metric, how=pi.Zero())
    long = pi.metrics.generates(1, decoding=pi.Greedy(max_new_tokens=60))
    with pytest.raises(pi.InterpError, match="do not fit"):
        pi.ablate(tiny_gpt2, pi.mlp(0), inputs=claim_tokens, metric=long, how=pi.Zero())
    with pytest.raises(pi.InterpError, match="longer than the generated text"):
        pi.ablate(tiny_gpt2, pi.mlp(0), inputs=claim_tokens, how=pi.Zero(),
                  metric=pi.metrics.generates([[1, 2, 3]] * len(claim_tokens), decoding=pi.Greedy(max_new_tokens=2)))


def test_claim_records_and_the_report_carry_the_decoding(tiny_gpt2, claim_tokens):
    from pytest_interp.core import records
    from pytest_interp.session import report

    records.drain()
    ids = claim_tokens[:, :8]
    metric = pi.metrics.generates(1, decoding=pi.Sample(temperature=0.7, n=2, max_new_tokens=2))
    pi.assert_necessary(tiny_gpt2, pi.mlp(0), inputs=ids, metric=metric, how=pi.Zero(), at_least=-1.0)
    pi.assert_necessary(tiny_gpt2, pi.mlp(0), inputs=ids, metric=pi.metrics.loss(), how=pi.Zero(), at_least=-9.0)
    recs = records.drain()
    assert recs[0]["decoding"].startswith("sample (temperature 0.7), 2 per prompt, seed 0")
    assert recs[1]["decoding"] is None
    for r in recs:
        r.update(test="t", outcome="passed", registry="no registry")
    out = report.build(recs, {"alpha": 0.05, "seed": 0, "n_boot": 1, "n_perm": 1, "batch_size": 8,
                              "device": "cpu", "decoding": None, "versions": {}}, None)
    assert out["controls"]["decoding"] == {"settings": [recs[0]["decoding"]], "claims": 1}
    assert "2 per prompt" in report.render_html(out)


# ----------------------------------------------------------------------------------------------------------------
# families and assert_stable
# ----------------------------------------------------------------------------------------------------------------

_MODEL: dict = {}


def synthetic(center: float, n: int = 32, seed: int = 0):
    """An Effect whose per-example values are centred on ``center`` (sd 0.1), on a tiny model's identity."""
    if not _MODEL:
        _MODEL.update(pi.load(tiny_model("gpt2")).identity())
    v = center + np.random.default_rng(seed).normal(0, 0.1, n)
    return mean_effect(v, alpha=0.05, n_boot=2000, n_perm=2000, seed=0, method="synthetic", metric="m",
                       model=dict(_MODEL))


def numbered(hi=100):
    return st.integers(0, hi).map(lambda k: pi.Family(list(range(32)), f"k={k}", params=(("k", k),)))


def test_a_failing_family_is_shrunk_to_the_smallest_and_shown():
    def claim(f):
        k = dict(f.params)["k"]
        return synthetic(1.0 if k < 37 else 0.0)

    with pytest.raises(pi.ClaimFailed) as err:
        pi.assert_stable(claim, numbered(), at_least=0.5, max_families=30, max_shrinks=60)
    msg = str(err.value)
    assert "failing family (the smallest found (shrunk from 'k=" in msg
    assert "k=37:" in msg and "held on" in msg and "k=0: 0.98" in msg


def test_a_claim_that_holds_everywhere_passes_and_reports_each_family():
    got = pi.assert_stable(lambda f: synthetic(1.0 + dict(f.params)["k"] / 1000), numbered(), at_least=0.5,
                           spread=0.5)
    assert len(got.effects) >= 3 and got.spread is not None and got.spread < 0.2


def test_the_spread_is_decided_on_bonferroni_intervals():
    fams = [pi.Family(list(range(32)), f"c={c}", params=(("c", c),)) for c in (1.0, 1.1, 1.2)]
    got = pi.assert_stable(lambda f: synthetic(dict(f.params)["c"]), fams, at_least=0.5, spread=0.4)
    assert got.spread == pytest.approx(0.2, abs=0.05)
    with pytest.raises(pi.ClaimFailed, match=r"Bonferroni bound .* allowed 0.25"):  # 0.2 apart, but not surely
        pi.assert_stable(lambda f: synthetic(dict(f.params)["c"]), fams, at_least=0.5, spread=0.25)


def test_families_can_be_decoding_settings(tiny_gpt2, claim_tokens):
    ids = claim_tokens[:, :8]
    decodings = [pi.Greedy(max_new_tokens=2), pi.Sample(temperature=0.7, n=2, max_new_tokens=2)]

    def claim(d):
        return pi.assert_necessary(tiny_gpt2, pi.mlp(0), inputs=ids, metric=pi.metrics.generates(1, decoding=d),
                                   how=pi.Zero(), at_least=-1.0)
    got = pi.assert_stable(claim, decodings)
    assert list(got.effects) == [d.describe() for d in decodings]


def test_inner_claims_stay_out_of_the_report():
    from pytest_interp.core import records

    records.drain()
    fams = [pi.Family(list(range(32)), "a"), pi.Family(list(range(32)), "b")]
    pi.assert_stable(lambda f: synthetic(1.0), fams, at_least=0.5)
    recs = records.drain()
    assert [r["kind"] for r in recs] == ["stable"]


def test_bad_families_are_refused(tiny_llama):
    with pytest.raises(pi.InterpError, match="is empty"):
        pi.assert_stable(lambda f: synthetic(1.0), [pi.Family([], "nothing")], at_least=0.5)
    with pytest.raises(pi.InterpError, match="no families"):
        pi.assert_stable(lambda f: synthetic(1.0), [], at_least=0.5)
    with pytest.raises(pi.InterpError, match="returned no Effect"):
        pi.assert_stable(lambda f: None, [pi.Family([1], "a")])
    with pytest.raises(pi.InterpError, match="without a decision"):
        pi.assert_stable(lambda f: synthetic(1.0), [pi.Family([1], "a")])
    with pytest.raises(pi.InterpError, match="strategy or a list"):
        pi.assert_stable(lambda f: synthetic(1.0), "families", at_least=0.5)
    toks = torch.randint(1, 48, (16, 10), generator=torch.Generator().manual_seed(0))
    # perturbing the token the answer is read from changes the answer: another task
    fams = ps.token_families(toks, toks[:, -1], vocab=range(1, 48), rate=(0.3, 0.3), answer_of=lambda t: t[:, -1])
    with pytest.raises(pi.InterpError, match="changes the answer"):
        pi.assert_stable(lambda f: synthetic(1.0), fams, at_least=0.5)
    keep = torch.zeros(16, 10, dtype=torch.bool)
    keep[:, -1] = True
    kept = ps.token_families(toks, toks[:, -1], vocab=range(1, 48), keep=keep, rate=(0.3, 0.3),
                             answer_of=lambda t: t[:, -1])
    pi.assert_stable(lambda f: synthetic(1.0), kept, at_least=0.5)


def test_induction_families_keep_the_answer_and_align_the_base_tokens():
    from pytest_interp.experiments.stability import draw

    fams, _ = draw(ps.induction_families(64, n=8), 5, 0)
    assert len(fams) >= 3
    for f in fams:
        s, p, g, k = (dict(f.params)[x] for x in "SPGk")
        toks = f.inputs
        assert toks.shape == (8, 1 + p + s + g + k)
        assert list(f.answers) == list(f.expected)
        for i in range(8):
            first = toks[i, 1 + p:1 + p + s]
            second = toks[i, 1 + p + s + g:]
            assert torch.equal(first[:k], second) and int(first[k]) == f.answers[i]
            al = f.align[i]
            assert al[1 + p] == 1 and al[1 + p + s + g] == 1 + 16
    # example i has the same segment in every family
    a = [int(f.inputs[0, 1 + dict(f.params)["P"]]) for f in fams]
    assert len(set(a)) == 1


def test_template_and_document_and_rewrite_families():
    from pytest_interp.experiments.stability import draw

    fams, _ = draw(ps.template_families(["{s} lives in", "{s} resides in", "{filler} {s} lives in"], answer="c",
                                        filler=(["so", "well"], 0, 3), s=["Ann", "Bo"], c=["Rome", "Oslo"]), 8, 0)
    f0 = fams[0]
    assert f0.label == "template 0, filler 0" and f0.inputs[0] == "Ann lives in" and f0.answers[0] == "Rome"
    assert any("so well" in x or "so" in x.split() for f in fams for x in f.inputs) or len(fams) < 8
    docs = [pi.Prompt(("text", "<bos>"), ("doc", "[DOC] k1 v1", "gold"), ("doc", "[DOC] k2 v2"),
                      ("question", "[Q] k1 [A]"), answer="v1")] * 3
    fams, _ = draw(ps.document_families(docs, distractors=["[DOC] k9 v9"], max_added=1), 6, 0)
    for f in fams:
        segs = f.inputs[0].segments
        assert segs[0].text == "<bos>" and segs[-1].kind == "question"
        assert {s.name for s in segs} >= {"gold"} and f.answers == ("v1",) * 3
    assert any(len(f.inputs[0].segments) == 5 for f in fams)  # a distractor was added somewhere
    fams, _ = draw(ps.rewrite_families(["It rained.", "I am hungry."], {"as written": lambda s: s,
                                                                         "no stop": lambda s: s.rstrip(".")}), 4, 0)
    assert {f.label for f in fams} == {"as written", "no stop"}
    with pytest.raises(pi.InterpError, match="empty or non-text"):
        draw(ps.rewrite_families(["x"], {"gone": lambda s: ""}), 2, 0)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    from pytest_interp.experiments.stability import spearman

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 9).astype(float), rng.normal(size=9)
        if np.ptp(a) == 0:
            continue
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman(np.ones(4), np.arange(4.0)) is None


def test_rank_stability_on_aligned_families(tiny_llama):
    fams = ps.induction_families(48, n=16, segment=(6, 10), prefix=(0, 6), gap=(0, 6), max_len=40)
    res = pi.stability(tiny_llama, "attention", fams, count=3, layer=1, head=0)
    assert res.kind == "rank" and len(res.families) == 3 and len(res.pairs) == 3
    assert -1 <= res.effect.ci[0] <= res.effect.mean <= res.effect.ci[1] <= 1
    eff = pi.stability(tiny_llama, lambda f: pi.ablate(tiny_llama, pi.head(1, 0), inputs=f.inputs,
                                                       metric=pi.metrics.logprob(list(f.answers)), how=pi.Zero()),
                       fams, count=3)
    assert eff.kind == "effect" and eff.cv[1][0] <= eff.cv[0] <= eff.cv[1][1]
    with pytest.raises(pi.InterpError, match="token alignments"):
        pi.stability(tiny_llama, "attention", [pi.Family(torch.ones(16, 8, dtype=torch.long), "a"),
                                               pi.Family(torch.ones(16, 8, dtype=torch.long), "b")], layer=1)
    with pytest.raises(pi.InterpError, match="unknown attribution"):
        pi.stability(tiny_llama, "saliency", fams)
