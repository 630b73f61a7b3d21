"""Pre-registered claims about fixtures/moe-mixtral (ground truth: fixtures/moe-mixtral/CARD.md).

A 2-layer, 4-expert, top-2 Mixtral trained on pair lookup: `<bos> a b c a b c ...` with c = f(a, b) from a fixed
random table. The scored predictions are the c tokens, made at the b positions; the metric is their loss (nats).
Routing frequency and necessity are different questions: expert 1.3 takes a large share of the tokens and the
scored predictions do not depend on it.
"""

import pytest

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/moe-mixtral")


def lookup_loss(scored):
    return pi.metrics.loss(mask=scored)


def test_layer_0_expert_1_is_necessary(subject, lookups):
    tokens, scored = lookups
    pi.assert_expert_necessary(subject, 0, 1, inputs=tokens, metric=lookup_loss(scored), at_least=0.5)


def test_layer_0_expert_2_is_necessary_even_when_tokens_may_pick_another(subject, lookups):
    tokens, scored = lookups
    pi.assert_expert_necessary(subject, 0, 2, inputs=tokens, metric=lookup_loss(scored), at_least=0.5,
                               how=pi.Reroute())


def test_expert_1_3_is_routed_to_often(subject, lookups):
    tokens, _ = lookups
    pi.assert_routes_to(subject, 1, 3, inputs=tokens, at_least=0.5)


def test_expert_1_3_is_not_necessary_for_the_lookups(subject, lookups):
    tokens, scored = lookups
    pi.assert_expert_not_necessary(subject, 1, 3, inputs=tokens, metric=lookup_loss(scored), within=0.01)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="expert 1.3 is in the top-2 of 59% of tokens (all c positions), yet removing it moves "
                          "the lookup loss by ~1e-6 nats: heavily routed is not necessary")
def test_false_frequently_routed_expert_1_3_is_necessary(subject, lookups):
    tokens, scored = lookups
    pi.assert_expert_necessary(subject, 1, 3, inputs=tokens, metric=lookup_loss(scored), at_least=0.05)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="at the scored b positions the router picks expert 1.1 for ~19% of tokens, not half")
def test_false_expert_1_1_handles_the_scored_positions(subject, lookups):
    tokens, scored = lookups
    pi.assert_routes_to(subject, 1, 1, inputs=tokens, positions=scored, at_least=0.5)
