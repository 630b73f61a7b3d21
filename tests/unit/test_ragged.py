"""Ragged batches: examples of different lengths, right-padded, give each example the numbers it gets alone; per-
example positions (pi.last, negative indices); hidden-state metrics; metrics that see their rows."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from pytest_interp.core.batch import PAD

from .test_bad_input import check

LENGTHS = [9, 14, 6, 16, 11, 7, 12, 10]
SENTENCES = ["The cat sat on the mat.", "A dog barked at the mailman all morning long.", "Rain.",
             "Stocks fell sharply after the central bank raised interest rates again.", "She reads books.",
             "Birds sing at dawn in the old oak tree.", "He forgot his keys.", "The train was late."]


def _ragged(n_vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[0] + torch.randint(1, n_vocab, (n - 1,), generator=g).tolist() for n in lengths]


def _alone(fn, rows):
    return torch.cat([torch.as_tensor(fn([r])) for r in rows])


def test_lists_of_different_lengths_are_right_padded(induction):
    rows = _ragged(64, [3, 5, 2])
    t = induction.tokens(rows)
    assert t.tolist() == [rows[0] + [PAD] * 2, rows[1], rows[2] + [PAD] * 3]
    assert pi.real(t).sum(1).tolist() == [3, 5, 2]


@pytest.mark.parametrize("metric", ["loss", "logprob_last"])
def test_a_padded_causal_batch_scores_each_example_as_alone(induction, metric):
    rows = _ragged(64, LENGTHS)

    def make(batch):
        if metric == "loss":
            return pi.metrics.loss()
        return pi.metrics.logprob([r[-1] for r in batch], position=-2)  # each example's own next-to-last token

    def values(batch, how, site):
        return torch.as_tensor(pi.ablate(induction, site, inputs=batch, metric=make(batch), how=how).values)

    for how, site in ((pi.Zero(), pi.head(1, 0)), (pi.Zero(), pi.mlp(0).at(pi.last)),
                      (pi.Zero(), pi.resid(1).at([-2, -3]))):
        together = values(rows, how, site)
        alone = torch.cat([values([r, r], how, site)[:1] for r in rows])
        assert torch.allclose(together, alone, atol=1e-5), (site, (together - alone).abs().max())


def test_a_padded_encoder_batch_embeds_each_sentence_as_alone(minilm):
    together = pi.embeddings(minilm, SENTENCES)
    alone = torch.cat([pi.embeddings(minilm, [s]) for s in SENTENCES])
    assert torch.allclose(together, alone, atol=1e-5)
    metric = pi.metrics.cosine()
    for site in (pi.head(2, 3), pi.mlp(4).at(pi.last), pi.resid(3).at(0)):
        got = pi.ablate(minilm, site, inputs=SENTENCES, metric=metric, how=pi.Zero()).values
        one = [pi.ablate(minilm, site, inputs=[s, s], metric=metric, how=pi.Zero()).values[0] for s in SENTENCES]
        assert torch.allclose(torch.as_tensor(got), torch.as_tensor(one), atol=1e-5), site


def test_strings_get_the_tokenizers_special_tokens(minilm):
    t = minilm.tokens(["A dog.", "The cat sat."])
    tok = minilm.tokenizer
    assert t[0, 0] == tok.cls_token_id and t[0, pi.real(t)[0].sum() - 1] == tok.sep_token_id
    plain = minilm.tokens(["A dog."], add_special_tokens=False)
    assert tok.cls_token_id not in plain.tolist()[0]


def test_the_mean_over_a_ragged_batch_leaves_out_padding(induction):
    from pytest_interp.engine.runner import capture

    rows = _ragged(64, [4, 6, 3, 6])
    t = induction.tokens(rows)
    site = pi.resid(1)
    acts = capture(induction, t, [site])[site]
    per_pos = pi.Mean(per_position=True)
    rep = per_pos.prepare(induction, site, t)(acts, torch.arange(4))
    # example 0, position 3: examples 1 and 3 have a real token there (example 2 is padding)
    assert torch.allclose(rep[0, 3], (acts[1, 3] + acts[3, 3]) / 2, atol=1e-5)
    # at pi.last the examples are aligned at their ends: example 2's last token against the others' last tokens
    last = per_pos.prepare(induction, site.at(pi.last), t)(acts, torch.arange(4))
    assert torch.allclose(last[2, 2], (acts[0, 3] + acts[1, 5] + acts[3, 5]) / 3, atol=1e-5)
    with pytest.raises(pi.InterpError) as err:  # only example 1 reaches position 6
        per_pos.prepare(induction, site, induction.tokens(_ragged(64, [4, 7, 3])))
    check(err, "no other example", "per_position=False")
    # the default on examples of different lengths: the mean over the other examples' real tokens, all positions
    assert pi.Mean().for_inputs(t).per_position is False
    assert pi.Mean().for_inputs(t[:, :3]).per_position is True
    for how in (pi.Mean(per_position=False), pi.Mean()):
        flat = how.prepare(induction, site, t)(acts, torch.arange(4))
        others = torch.cat([acts[i, :n] for i, n in ((1, 6), (2, 3), (3, 6))])
        assert torch.allclose(flat[0, 0], others.mean(0), atol=1e-5)
    eff = pi.ablate(induction, site, inputs=t, metric=pi.metrics.loss())
    assert "all positions" in eff.intervention


def test_a_sweep_on_a_ragged_batch_equals_ablating_each_site(induction, minilm):
    rows = _ragged(64, LENGTHS * 2, seed=3)
    sites = [pi.head(0, 1), pi.mlp(1).at(pi.last), pi.resid(1).at(2)]
    for subject, inputs, metric in ((induction, rows, pi.metrics.loss()),
                                    (induction, rows, pi.metrics.logprob(5, position=pi.last)),
                                    (minilm, SENTENCES * 2, pi.metrics.cosine())):
        sw = pi.sweep(subject, sites, inputs=inputs, metric=metric)
        for s in sites:
            one = pi.ablate(subject, s, inputs=inputs, metric=metric)
            assert sw[s].mean == pytest.approx(one.mean, abs=1e-5), (subject, s)


def test_a_custom_metric_sees_its_rows_for_any_n_and_batch_size(induction):
    pi.configure(batch_size=4)
    rows = _ragged(64, LENGTHS + LENGTHS[:4])  # n = 3 x batch size
    answers = torch.tensor([r[-1] for r in rows])
    last = torch.tensor([len(r) - 2 for r in rows])

    def own_answer(logits, tokens, rows):
        at = logits[torch.arange(len(rows)), last[rows]]
        return torch.log_softmax(at.float(), -1).gather(-1, answers[rows][:, None])[:, 0]

    mine = pi.ablate(induction, pi.head(1, 0), inputs=rows, metric=pi.metrics.Metric(own_answer), how=pi.Zero())
    ref = pi.ablate(induction, pi.head(1, 0), inputs=rows, metric=pi.metrics.logprob(answers, position=-2),
                    how=pi.Zero())
    assert mine.values == pytest.approx(ref.values, abs=1e-5)

    shapes = []

    def at_last(logits, tokens, rows):  # declared reads: each example's logits at its last token only
        shapes.append(tuple(logits.shape))
        return torch.log_softmax(logits[:, 0].float(), -1).gather(-1, answers[rows][:, None])[:, 0]

    declared = pi.metrics.Metric(at_last, reads=pi.last)
    sw = pi.sweep(induction, [pi.head(1, 0), pi.mlp(1).at(pi.last)], inputs=rows, metric=declared)
    builtin = pi.sweep(induction, [pi.head(1, 0), pi.mlp(1).at(pi.last)], inputs=rows,
                       metric=pi.metrics.logprob(answers, position=pi.last))
    for s in sw:
        assert sw[s].values == pytest.approx(builtin[s].values, abs=1e-5)
    assert {s[1:] for s in shapes} == {(1, induction.vocab_size)}
    with pytest.raises(pi.InterpError) as err:
        pi.metrics.Metric(at_last, reads=[1, 2])
    check(err, "not a position")

    def to_clean(logits, tokens, clean):  # a metric may also read the clean run
        return -(logits.float() - clean.float()).abs().amax((1, 2))

    moved = pi.ablate(induction, pi.head(1, 0), inputs=rows, metric=pi.metrics.Metric(to_clean), how=pi.Zero())
    assert moved.mean > 0


def test_paraphrase_similarity_against_reference_embeddings(minilm):
    para = ["A cat was sitting on the mat.", "A dog was barking at the postman all morning.", "It rained.",
            "Share prices dropped steeply after rates went up again.", "She is reading books.",
            "At sunrise birds sing in the old oak.", "He left his keys behind.", "The train arrived late."]
    ref = pi.embeddings(minilm, para)
    clean = torch.nn.functional.cosine_similarity(pi.embeddings(minilm, SENTENCES), ref)
    assert float(clean.mean()) > 0.6  # the model's own paraphrase similarity
    eff = pi.ablate(minilm, pi.mlp(4), inputs=SENTENCES, metric=pi.metrics.cosine(reference=ref), how=pi.Zero())
    assert eff.details["clean_mean"] == pytest.approx(float(clean.mean()), abs=1e-5)
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(minilm, pi.mlp(4), inputs=SENTENCES, metric=pi.metrics.cosine(reference=ref[:3]))
    check(err, "wrong shape", "pi.embeddings")


# bad input ------------------------------------------------------------------------------------------------

def test_a_model_without_logits_points_to_hidden_state_metrics(minilm):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(minilm, pi.head(0, 0), inputs=SENTENCES, metric=pi.metrics.logprob(1012, position=1))
    check(err, "no logits", "pi.metrics.cosine")
    assert "ForMaskedLM" not in str(err.value)  # never advise a load that gives random head weights
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(minilm, pi.head(0, 0), inputs=SENTENCES, metric=pi.metrics.loss())
    check(err, "not a causal LM", "cosine")


def test_padding_errors(induction):
    t = induction.tokens(_ragged(64, [4, 6, 3]))
    inner = t.clone()
    inner[0, 1] = PAD
    with pytest.raises(pi.InterpError) as err:
        induction.tokens(inner)
    check(err, "padding inside an example")
    allpad = t.clone()
    allpad[2] = PAD
    with pytest.raises(pi.InterpError) as err:
        induction.tokens(allpad)
    check(err, "all padding")
    with pytest.raises(pi.InterpError) as err:
        induction.tokens([[0, 1, 2], []])
    check(err, "empty example")


def test_positions_past_an_example_end(induction):
    rows = _ragged(64, [9, 5, 8])
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(induction, pi.mlp(0).at(6), inputs=rows, metric=pi.metrics.loss(), how=pi.Zero())
    check(err, "past an example's end", "pi.last")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(induction, pi.mlp(0).at(-7), inputs=rows, metric=pi.metrics.loss(), how=pi.Zero())
    check(err, "out of range")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(induction, pi.mlp(0), inputs=rows, metric=pi.metrics.logprob(3, position=6), how=pi.Zero())
    check(err, "past the end of an example", "example 1 has 5 tokens")
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[1, 7] = True
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(induction, pi.mlp(0), inputs=rows, metric=pi.metrics.loss(mask=mask), how=pi.Zero())
    check(err, "prediction of padding")


def test_text_errors(minilm, induction):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(minilm, pi.mlp(0), inputs=["A dog.", "  "], metric=pi.metrics.cosine())
    check(err, "empty string")
    with pytest.raises(pi.InterpError) as err:  # a word-level tokenizer without an unknown token
        induction.tokens(["<bos> t1 zebra"])
    check(err, "cannot encode", "zebra")
    with pytest.raises(pi.InterpError) as err:
        induction.token_ids(["zebra"])
    check(err, "zebra")
    with pytest.raises(pi.InterpError) as err:  # a word-piece tokenizer maps it to [UNK]
        minilm.token_ids(["\u2603"])
    check(err, "not in the vocabulary")


def test_resample_on_a_ragged_batch_draws_donors_long_enough(induction):
    from pytest_interp.engine.runner import capture

    rows = _ragged(64, [9, 5, 8, 6, 9])
    tokens = induction.tokens(rows)
    L = pi.real(tokens).sum(1)
    acts = capture(induction, tokens, [pi.mlp(0)])[pi.mlp(0)]
    alone = [capture(induction, induction.tokens([r]), [pi.mlp(0)])[pi.mlp(0)][0] for r in rows]
    every = torch.arange(len(rows))
    for site, from_end in ((pi.mlp(0).at(pi.last), True), (pi.mlp(0), False), (pi.mlp(0).at(4), False)):
        out = pi.Resample(seed=3).prepare(induction, site, tokens)(acts, every)
        for i in range(len(rows)):
            n = int(L[i])
            # the donor: the other example whose activations fill example i (aligned at the end for pi.last)
            fits = [j for j in range(len(rows)) if j != i and (
                torch.allclose(out[i, n - 1], alone[j][-1], atol=1e-5) if from_end
                else len(alone[j]) >= n and torch.allclose(out[i, :n], alone[j][:n], atol=1e-5)
                if site.positions is None
                else torch.allclose(out[i, 4], alone[j][4], atol=1e-5))]
            assert len(fits) == 1, (site, i)
            assert torch.equal(out[i, n:], acts[i, n:])  # padding keeps its own value; no donor padding is used
    # a sweep gives pi.ablate's numbers
    metric = pi.metrics.logprob([r[-1] for r in rows], position=-2)
    for site in (pi.mlp(0), pi.head(0, 1).at(pi.last - 1)):
        one = pi.ablate(induction, site, inputs=rows, metric=metric, how=pi.Resample(seed=2))
        swept = pi.sweep(induction, [site, pi.mlp(1)], inputs=rows, metric=metric, how=pi.Resample(seed=2))[site]
        assert torch.allclose(torch.as_tensor(one.values), torch.as_tensor(swept.values), atol=1e-5)
    # the longest example has no other example as long: a whole-sequence resample cannot fill it
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(induction, pi.mlp(0), inputs=_ragged(64, [9, 5, 8, 6]), metric=pi.metrics.loss(),
                  how=pi.Resample())
    check(err, "no other input long enough for example 0", "at least 9 tokens", "longest other input has 8",
          ".at(pi.last)")


def test_interventions_that_would_read_padding_refuse(induction):
    rows = _ragged(64, [9, 5, 8, 6])
    shorter = [r[:-1] for r in rows]
    with pytest.raises(pi.InterpError) as err:
        pi.patch(induction, pi.resid(1).at(1), clean=[r + [1] for r in shorter[:2]] + shorter[2:], corrupt=rows,
                 metric=pi.metrics.loss())
    check(err, "padded differently")
    noisy = pi.ablate(induction, pi.mlp(0), inputs=rows, metric=pi.metrics.loss(), how=pi.Noise(seed=1))
    assert noisy.n == 4


def test_methods_that_read_fixed_positions_refuse_ragged_batches(induction):
    rows = _ragged(64, [9, 5, 8, 6])
    with pytest.raises(pi.InterpError) as err:
        pi.explain.grad_x_input(induction, rows, answer=3)
    check(err, "one length", "from 5 to 9")
    with pytest.raises(pi.InterpError) as err:
        pi.trace(induction, rows, answer=3, subject_tokens=[1, 2])
    check(err, "causal tracing", "one length")


def test_the_routing_log_refuses_ragged_batches():
    from tests.helpers import tiny_model

    moe = pi.load(tiny_model("mixtral"))
    with pytest.raises(pi.InterpError) as err:
        pi.routing(moe, _ragged(48, [9, 5, 8]))
    check(err, "routing log", "one length")
