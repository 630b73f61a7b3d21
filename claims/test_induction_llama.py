"""Pre-registered claims about fixtures/induction-llama (ground truth: fixtures/induction-llama/CARD.md).

`repeated` is 128 sequences BOS + A + A (A = 31 random tokens); `repeated.second_half` marks the predictions an
induction circuit can make (inside the second copy). Losses are in nats; chance is ln 63 = 4.14.
"""

import pytest
from hypothesis import given, settings

import pytest_interp as pi
from pytest_interp import strategies as pst


def in_context(data):
    return pi.metrics.loss(mask=data.second_half)


# previous-token heads (layer 0) --------------------------------------------------------------------------

def test_prev_token_head_is_necessary(subject, repeated):
    pi.assert_necessary(subject, pi.head(0, 3), inputs=repeated.tokens, metric=in_context(repeated), at_least=1.0)


def test_prev_token_heads_together_are_necessary(subject, repeated):
    pi.assert_necessary(subject, [pi.head(0, 0), pi.head(0, 1)], inputs=repeated.tokens,
                        metric=in_context(repeated), at_least=2.5)


def test_head_0_2_is_not_necessary(subject, repeated):
    # mean ablation of L0H2 moves in-context loss by a few hundredths of a nat
    pi.assert_not_necessary(subject, pi.head(0, 2), inputs=repeated.tokens, metric=in_context(repeated), within=0.1)


# induction heads (layer 1) -------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [0, 1, 2])
def test_induction_heads(subject, head):
    pi.assert_induction_head(subject, layer=1, head=head)


def test_layer_1_attention_carries_the_copy(subject, repeated, corrupted):
    # clean activations of the two strong induction heads, patched into runs whose first copy was replaced,
    # restore nearly all of the in-context loss gap
    pi.assert_restores(subject, [pi.head(1, 0), pi.head(1, 1)], clean=repeated.tokens, corrupt=corrupted,
                       metric=in_context(repeated), at_least=0.9)


@settings(max_examples=3, deadline=None, derandomize=True)  # same batches every run: CI-stable
@given(batch=pst.repeated_batches(64, length=64, n=64, segment=(4, 20)))
def test_layer_1_attention_is_necessary_on_any_batch(subject, batch):
    # each example is a batch of 64 sequences and costs two model runs; hypothesis's first batches have the
    # shortest segments, where in-context prediction (and so the damage) is smallest
    pi.assert_necessary(subject, pi.attn(1), inputs=batch.tokens, metric=in_context(batch), at_least=0.5)


# documented false claims: each is expected to be rejected ------------------------------------------------

@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="L1H3 attends nearly uniformly (induction score 0.03): it is not an induction head")
def test_false_head_1_3_is_an_induction_head(subject):
    pi.assert_induction_head(subject, layer=1, head=3)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="no redundancy between the strong induction heads: ablating L1H0 alone costs ~3 nats")
def test_false_head_1_0_is_redundant(subject, repeated):
    pi.assert_not_necessary(subject, pi.head(1, 0), inputs=repeated.tokens, metric=in_context(repeated),
                            within=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="patching one induction head back is not enough: the other still copies the corrupt "
                          "token (restores ~17%)")
def test_false_one_induction_head_restores_the_copy(subject, repeated, corrupted):
    pi.assert_restores(subject, pi.head(1, 0), clean=repeated.tokens, corrupt=corrupted,
                       metric=in_context(repeated), at_least=0.5)


# circuit discovery, pre-registered ----------------------------------------------------------------------

def test_the_two_most_necessary_heads_are_the_strong_induction_heads(subject, repeated):
    sweep = pi.sweep(subject, inputs=repeated.tokens, metric=in_context(repeated))  # every head; a heatmap in HTML
    top = [site for site, _ in sweep.ranked(by="ci_low")[:2]]
    assert set(top) == {pi.head(1, 0), pi.head(1, 1)}, sweep.ranked()[:3]
