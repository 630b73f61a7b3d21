"""Models with other heads than a causal LM: masked-LM metrics, classification heads, and refusing next-token
metrics where they mean nothing."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import pytest_interp as pi

from .test_bad_input import check

COMMON = dict(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64)


@pytest.fixture(scope="module")
def mlm():
    torch.manual_seed(0)
    return pi.load(tf.BertForMaskedLM(tf.BertConfig(pad_token_id=0, **COMMON)).eval())


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(num_key_value_heads=2, num_labels=3, pad_token_id=0, id2label={0: "neg", 1: "neu", 2: "pos"},
                         label2id={"neg": 0, "neu": 1, "pos": 2}, **COMMON)
    return pi.load(tf.LlamaForSequenceClassification(cfg).eval())


def _rows(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 48, (n,), generator=g).tolist() for n in lengths]


def test_masked_logprob_scores_the_original_token_at_masked_positions(mlm):
    original = _rows([7, 9, 5, 8, 6, 9, 7, 8])
    masked = [r.copy() for r in original]
    for i, r in enumerate(masked):
        r[1 + i % 3] = 3  # the "mask" id of this tiny vocabulary
    eff = pi.ablate(mlm, pi.head(1, 2), inputs=masked, metric=pi.metrics.masked_logprob(original), how=pi.Zero())
    with torch.no_grad():  # the clean score by hand, example 0 alone (masked at position 1)
        lg = mlm.model(input_ids=torch.tensor([masked[0]])).logits[0].float().log_softmax(-1)
    one = pi.ablate(mlm, pi.head(1, 2), inputs=[masked[0], masked[0]],
                    metric=pi.metrics.masked_logprob([original[0], original[0]]), how=pi.Zero())
    assert one.details["clean_mean"] == pytest.approx(float(lg[1, original[0][1]]), abs=1e-5)
    assert eff.values[0] == pytest.approx(one.values[0], abs=1e-5)  # padded batch = alone
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(mlm, pi.head(1, 2), inputs=original, metric=pi.metrics.masked_logprob(original))
    check(err, "no masked token")


def test_next_token_metrics_are_refused_on_an_encoder(mlm, induction):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(mlm, pi.head(0, 0), inputs=_rows([6, 6]), metric=pi.metrics.loss())
    check(err, "not a causal LM", "masked_logprob")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(induction, pi.head(0, 0), inputs=_rows([6, 6]), metric=pi.metrics.masked_logprob(_rows([6, 6])))
    check(err, "causal LM")


def test_a_classification_head_is_scored_by_its_labels(classifier):
    rows = _rows([9, 14, 6, 16, 11, 7, 12, 10])
    metric = pi.metrics.label_logprob("pos")
    eff = pi.ablate(classifier, pi.head(1, 0), inputs=rows, metric=metric, how=pi.Zero())
    alone = [pi.ablate(classifier, pi.head(1, 0), inputs=[r, r], metric=metric, how=pi.Zero()).values[0] for r in rows]
    assert torch.allclose(torch.as_tensor(eff.values), torch.as_tensor(alone), atol=1e-5)  # padded batch = alone
    sites = [pi.head(0, 1), pi.mlp(1).at(pi.last), pi.resid(1).at(3)]
    sw = pi.sweep(classifier, sites, inputs=rows, metric=pi.metrics.label_diff(2, 0))
    for s in sites:
        assert sw[s].mean == pytest.approx(pi.ablate(classifier, s, inputs=rows,
                                                     metric=pi.metrics.label_diff(2, 0)).mean, abs=1e-5)
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(classifier, pi.head(1, 0), inputs=rows, metric=pi.metrics.logprob(3))
    check(err, "classification head", "label_logprob")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(classifier, pi.head(1, 0), inputs=rows, metric=pi.metrics.label_logprob("happy"))
    check(err, "not a label", "label2id")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(classifier, pi.head(1, 0), inputs=rows, metric=pi.metrics.label_logprob(5))
    check(err, "out of range")
