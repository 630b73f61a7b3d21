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


# circuits: paths, attention edits, scrubbing (measured independently in CARD.md, "Circuits") -------------

def test_layer_0_composes_with_induction_head_1_0_through_its_keys(subject, repeated):
    pi.assert_composes(subject, pi.attn(0), pi.head(1, 0), via="k", inputs=repeated.tokens,
                       metric=in_context(repeated), at_least=0.5)


def test_head_0_3_composes_with_induction_head_1_0_through_its_values(subject, repeated):
    # the largest single-head path on this model is a V path, not the textbook K path (CARD.md, "Circuits")
    pi.assert_composes(subject, pi.head(0, 3), pi.head(1, 0), via="v", inputs=repeated.tokens,
                       metric=in_context(repeated), at_least=0.4)


def test_head_0_2_does_not_compose_with_head_1_0_through_its_keys(subject, repeated):
    pi.assert_does_not_compose(subject, pi.head(0, 2), pi.head(1, 0), via="k", inputs=repeated.tokens,
                               metric=in_context(repeated), within=0.02)


@pytest.mark.parametrize("head", [0, 1])
def test_induction_heads_attention_to_the_token_after_the_earlier_occurrence_mediates(subject, repeated, head):
    # attention confirmed by an intervention, beside a matched control (as many other keys blocked)
    pi.assert_attention_mediates(subject, pi.head(1, head), keys=pi.induction_keys, inputs=repeated.tokens,
                                 metric=in_context(repeated), at_least=2.0)


@pytest.fixture(scope="module")
def varying(subject):
    """512 sequences with a repeated segment at a random offset: enough that 99% of the tokens share their
    (token to copy, current token) class with another token, which scrubbing needs."""
    return pi.repeated_tokens(subject, n=512, seed=0)


def copy_and_current(tokens):
    """What the induction heads are claimed to read at each token: the token after the earlier occurrence of the
    current token, and the current token (-1 where it occurred nowhere before)."""
    import torch

    target = pi.induction_target(tokens)
    return torch.where(target >= 0, target * 64 + torch.as_tensor(tokens).long(), -1)


def copy_only(tokens):
    return pi.induction_target(tokens)


INDUCTION_HEADS = [pi.head(1, 0), pi.head(1, 1), pi.head(1, 2)]


def test_the_induction_heads_outputs_depend_on_the_token_to_copy_and_the_current_token(subject, varying):
    pi.assert_hypothesis_explains(subject, {h: copy_and_current for h in INDUCTION_HEADS}, inputs=varying.tokens,
                                  metric=pi.metrics.loss(), at_least=0.3)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the textbook K path: one previous-token head alone barely feeds L1H0's keys (0.001 nats; "
                          "L0H0 and L0H1 are redundant, layer 0 together gives 0.87)")
def test_false_prev_token_head_0_0_composes_with_head_1_0_through_its_keys(subject, repeated):
    pi.assert_composes(subject, pi.head(0, 0), pi.head(1, 0), via="k", inputs=repeated.tokens,
                       metric=in_context(repeated), at_least=0.1)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="L1H3's attention to the induction keys does nothing (0.003 nats)")
def test_false_head_1_3_attention_to_the_induction_keys_mediates(subject, repeated):
    pi.assert_attention_mediates(subject, pi.head(1, 3), keys=pi.induction_keys, inputs=repeated.tokens,
                                 metric=in_context(repeated), at_least=0.1)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the token to copy alone recovers 0.07 of the loss: the outputs also carry the current "
                          "token")
def test_false_the_induction_heads_outputs_depend_only_on_the_token_to_copy(subject, varying):
    pi.assert_hypothesis_explains(subject, {h: copy_only for h in INDUCTION_HEADS}, inputs=varying.tokens,
                                  metric=pi.metrics.loss(), at_least=0.3)


# stability across input families ---------------------------------------------------------------------------
# One family is one layout `<bos> R1 A R2 A[:3]` -> A[3]: segment length S (6-16), P random tokens before it and G
# between its copies, with fresh filler per layout; example i has the same segment A_i in every family, so the
# families can be compared token by token. hypothesis draws 6 layouts (derandomised: seed 0); a failing layout
# is shrunk towards short segments without filler.

LAYOUTS = pst.induction_families(64, n=64)


def answer_logprob(family):
    return pi.metrics.logprob(list(family.answers))


def test_head_1_0_is_necessary_on_every_induction_layout(subject):
    pi.assert_stable(lambda f: pi.assert_necessary(subject, pi.head(1, 0), inputs=f.inputs, how=pi.Zero(),
                                                   metric=answer_logprob(f), at_least=1.5), LAYOUTS, spread=2.0)


def test_head_1_0_attention_ranks_the_tokens_alike_on_every_layout(subject):
    # measured with the package: 0.81 (plain torch, CARD: 0.806 [0.789, 0.824]); the top key is the token to copy
    # in every layout, and the rest of the order holds too
    pi.assert_rank_stable(subject, "attention", LAYOUTS, layer=1, head=0, at_least=0.7)


def test_leave_one_token_out_ranks_the_tokens_alike_on_every_layout(subject):
    pi.assert_rank_stable(subject, "leave_one_out", LAYOUTS, at_least=0.8)


def test_gradient_times_input_does_not_rank_the_tokens_alike_across_layouts(subject):
    pi.assert_rank_unstable(subject, "grad_x_input", LAYOUTS, below=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the thesis expected raw attention's rank order to move across layouts; measured, head "
                          "1.0's attention keeps it (Spearman 0.81 between layouts), like leave-one-out (0.88)")
def test_false_head_1_0_attention_rank_order_moves_across_layouts(subject):
    pi.assert_rank_unstable(subject, "attention", LAYOUTS, layer=1, head=0, below=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="on the shortest layout (S=6, no filler: 10 tokens) the model is unsure (log p -1.8) and "
                          "head 1.0 costs 2.0 nats, not 3; longer layouts 3.2")
def test_false_head_1_0_costs_3_nats_on_every_layout(subject):
    pi.assert_stable(lambda f: pi.assert_necessary(subject, pi.head(1, 0), inputs=f.inputs, how=pi.Zero(),
                                                   metric=answer_logprob(f), at_least=3.0), LAYOUTS)
