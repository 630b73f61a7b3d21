"""Every claim kind on the shipped models: where it holds and where it must fail (ground truth: the CARD.md files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import pytest_interp as pi
from pytest_interp import strategies as pst


@pytest.fixture(scope="module")
def halves(induction):
    return pi.repeated_tokens(induction, n=96, seed=3, layout="halves")


@pytest.fixture(scope="module")
def corrupt(halves):
    g = torch.Generator().manual_seed(5)
    tokens = halves.tokens.clone()
    seg = halves.first_half.clone()
    seg[:, 1:] |= halves.first_half[:, :-1]
    tokens[seg] = torch.randint(1, 64, (int(seg.sum()),), generator=g)
    return tokens


def ctx(data):
    return pi.metrics.loss(mask=data.second_half)


# assert_necessary ----------------------------------------------------------------------------------------

def test_necessary_holds_for_a_previous_token_head(induction, halves):
    eff = pi.assert_necessary(induction, pi.head(0, 3), inputs=halves.tokens, metric=ctx(halves), at_least=1.0)
    assert eff.ci[0] >= 1.0 and eff.n == 96 and eff.p_value < 0.01


def test_necessary_fails_for_head_0_2(induction, halves):
    with pytest.raises(pi.ClaimFailed) as err:
        pi.assert_necessary(induction, pi.head(0, 2), inputs=halves.tokens, metric=ctx(halves), at_least=0.5)
    assert err.value.record["passed"] is False and err.value.record["ci"][0] < 0.5


def test_necessary_fails_on_the_positional_model_with_varying_offsets(positional):
    data = pi.repeated_tokens(positional, n=96, seed=3)
    with pytest.raises(pi.ClaimFailed) as err:
        pi.assert_necessary(positional, pi.head(0, 2), inputs=data.tokens, metric=ctx(data), at_least=0.5)
    # the positional copy is wrong when the offset varies: removing it lowers the loss
    assert err.value.record["effect"] < 0


# assert_not_necessary ------------------------------------------------------------------------------------

def test_not_necessary_holds_for_head_1_3(induction, halves):
    eff = pi.assert_not_necessary(induction, pi.head(1, 3), inputs=halves.tokens, metric=ctx(halves), within=0.1)
    assert -0.1 <= eff.ci[0] <= eff.ci[1] <= 0.1


def test_not_necessary_fails_for_an_induction_head(induction, halves):
    with pytest.raises(pi.ClaimFailed, match="head 1.0 is not necessary"):
        pi.assert_not_necessary(induction, pi.head(1, 0), inputs=halves.tokens, metric=ctx(halves), within=0.5)


def test_not_necessary_needs_enough_examples(induction):
    # a small batch cannot show the effect is small: a wide CI fails the equivalence test even near zero
    few = pi.repeated_tokens(induction, n=16, seed=3, layout="halves")
    with pytest.raises(pi.ClaimFailed):
        pi.assert_not_necessary(induction, pi.head(0, 2), inputs=few.tokens, metric=ctx(few), within=0.01)


@pytest.mark.parametrize("n", [1, 2, 8, 15])
def test_claims_refuse_to_decide_below_the_minimum_n(induction, n):
    # n = 1 gave a zero-width interval and n = 2 the range [min, max]: both used to pass; at n = 8 a one-sided
    # miss reached 5% (nominal 2.5%)
    few = pi.repeated_tokens(induction, n=n, seed=3, layout="halves")
    with pytest.raises(pi.InterpError, match="at least (16|2) examples"):
        pi.assert_necessary(induction, pi.head(1, 0), inputs=few.tokens, metric=ctx(few), at_least=0.0,
                            how=pi.Zero())


# assert_restores -----------------------------------------------------------------------------------------

def test_restores_holds_for_both_strong_induction_heads(induction, halves, corrupt):
    eff = pi.assert_restores(induction, [pi.head(1, 0), pi.head(1, 1)], clean=halves.tokens, corrupt=corrupt,
                             metric=ctx(halves), at_least=0.9)
    assert eff.details["clean_mean"] < 0.5 < 3.5 < eff.details["corrupt_mean"]


def test_restores_fails_for_one_head(induction, halves, corrupt):
    with pytest.raises(pi.ClaimFailed):
        pi.assert_restores(induction, pi.head(1, 0), clean=halves.tokens, corrupt=corrupt, metric=ctx(halves),
                           at_least=0.5)


def test_restores_fails_where_nothing_differs(induction, halves, corrupt):
    # layer-0 attention at second-copy positions sees the same tokens in both runs: nothing to restore
    site = pi.attn(0).at(halves.second_half)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_restores(induction, site, clean=halves.tokens, corrupt=corrupt, metric=ctx(halves), at_least=0.2)


def test_noising_direction(induction, halves, corrupt):
    eff = pi.assert_restores(induction, pi.attn(1), clean=halves.tokens, corrupt=corrupt, metric=ctx(halves),
                             at_least=0.9, into="clean")
    assert eff.intervention == "patch corrupt -> clean"


def test_restoring_the_whole_stream_restores_everything(induction, halves, corrupt):
    eff = pi.patch(induction, pi.resid(1), clean=halves.tokens, corrupt=corrupt, metric=ctx(halves))
    assert eff.mean == pytest.approx(1.0, abs=1e-6)


# assert_induction_head -----------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [0, 1, 2])
def test_induction_head_holds(induction, head):
    eff = pi.assert_induction_head(induction, 1, head, n=64)
    assert eff.details["attention_ci_lo"] >= 0.3 and eff.ci[0] >= 0.02


def test_induction_head_fails_for_a_uniform_head(induction):
    with pytest.raises(pi.ClaimFailed, match="attention check: .* FAILED"):
        pi.assert_induction_head(induction, 1, 3, n=64)


def test_attention_alone_never_passes(induction):
    # L1H2 attends like an induction head; demand a causal effect it does not have and the claim is rejected
    with pytest.raises(pi.ClaimFailed) as err:
        pi.assert_induction_head(induction, 1, 2, n=64, loss_at_least=2.0)
    msg = str(err.value)
    assert "attention check: " in msg and ": ok" in msg.split("attention check:")[1].split("\n")[0]
    assert "causal check:" in msg and "FAILED" in msg.split("causal check:")[1].split("\n")[0]


def test_positional_head_is_not_an_induction_head(positional):
    # on its own fixed-offset data the head attends where an induction head would ...
    fixed = pi.repeated_tokens(positional, n=64, seed=1, layout="halves")
    assert pi.induction_scores(positional, 0, fixed)[:, 2].mean() > 0.8
    # ... but the claim uses varying offsets, where it does not
    with pytest.raises(pi.ClaimFailed, match="head 0.2 is an induction head"):
        pi.assert_induction_head(positional, 0, 2, n=64)


def test_induction_scores_match_the_card(induction, positional):
    data = pi.repeated_tokens(induction, n=128, seed=11)
    scores = pi.induction_scores(induction, 1, data).mean(0)
    assert (scores[:3] > 0.5).all() and scores[3] < 0.1
    assert (pi.induction_scores(positional, 0, pi.repeated_tokens(positional, n=128, seed=11)).mean(0) < 0.1).all()


# hypothesis ----------------------------------------------------------------------------------------------

@settings(max_examples=3, deadline=None, derandomize=True)
@given(batch=pst.repeated_batches(64, length=48, n=32, segment=(4, 12)))
def test_layer_1_is_necessary_on_generated_batches(induction, batch):
    eff = pi.assert_necessary(induction, pi.attn(1), inputs=batch.tokens, metric=ctx(batch), at_least=1.0)
    assert eff.n == 32


def test_text_inputs_through_the_shipped_tokenizer(induction):
    prompts = ["<bos> t5 t9 t13 t2 t5 t9 t13", "<bos> t7 t1 t44 t3 t7 t1 t44"]
    mask = np.zeros((2, 8), bool)
    mask[:, 4:7] = True
    eff = pi.ablate(induction, pi.attn(1), inputs=prompts, metric=pi.metrics.loss(mask=torch.as_tensor(mask)))
    assert eff.details["ablated_mean"] > eff.details["clean_mean"] + 0.5
    lp = pi.ablate(induction, pi.attn(1), inputs=prompts, metric=pi.metrics.logprob(["t13", "t44"], position=-2))
    assert lp.n == 2 and lp.mean > 0.5
