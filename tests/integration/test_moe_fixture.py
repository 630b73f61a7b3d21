"""MoE claims on fixtures/moe-mixtral (ground truth: its CARD.md), and pytest-interp's expert interventions
against the fixture's own independent reference hooks (fixtures/measure_moe.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_interp as pi
from tests.helpers import MOE, fixture_module, shipped


@pytest.fixture(scope="module")
def moe():
    return shipped(MOE)


@pytest.fixture(scope="module")
def data():
    return fixture_module("train_moe_mixtral").make_batch(96, 7)


def _reference_loss(model, tokens, scored, hook):
    ref = fixture_module("measure_moe")
    logits, _ = ref.run(model, tokens, hook)
    return -ref.per_seq_metrics(logits, tokens, scored)["logp"].numpy()


@pytest.mark.parametrize("how", ["remove", "reroute"])
def test_expert_interventions_match_the_reference_hooks(moe, data, how):
    tokens, scored = data
    ref = fixture_module("measure_moe")
    make = {"remove": ref._remove_hook, "reroute": ref._reroute_hook}[how]
    intervention = {"remove": pi.Remove(), "reroute": pi.Reroute()}[how]
    metric = pi.metrics.loss(mask=scored)
    clean = _reference_loss(moe.model, tokens, scored, ())
    for layer in range(2):
        gate = moe.model.model.layers[layer].mlp.gate
        for e in range(4):
            eff = pi.ablate(moe, pi.expert(layer, e), inputs=tokens, metric=metric, how=intervention)
            expected = _reference_loss(moe.model, tokens, scored, [(gate, make(e))]) - clean
            np.testing.assert_allclose(eff.values, expected, atol=2e-5, err_msg=f"{how} expert {layer}.{e}")


def test_expert_claims_hold_and_fail_where_they_must(moe, data):
    tokens, scored = data
    metric = pi.metrics.loss(mask=scored)
    pi.assert_expert_necessary(moe, 0, 1, inputs=tokens, metric=metric, at_least=0.5)
    with pytest.raises(pi.ClaimFailed, match="routing frequency is not necessity"):
        pi.assert_expert_necessary(moe, 1, 3, inputs=tokens, metric=metric, at_least=0.05)
    pi.assert_expert_not_necessary(moe, 1, 3, inputs=tokens, metric=metric, within=0.01)
    with pytest.raises(pi.ClaimFailed, match="is in the top-k of"):
        pi.assert_expert_not_necessary(moe, 0, 1, inputs=tokens, metric=metric, within=0.01)


def test_heavily_routed_expert_is_not_necessary(moe, data):
    tokens, scored = data
    log = pi.routing(moe, tokens, record=False)
    assert log.frequency(1)[3] > 0.5  # expert 1.3 is in the top-2 of most tokens
    c_positions = torch.zeros_like(scored)
    c_positions[:, 3::3] = True
    assert log.frequency(1, c_positions)[3] == 1.0
    eff = pi.ablate(moe, pi.expert(1, 3), inputs=tokens, metric=pi.metrics.loss(mask=scored))
    assert abs(eff.mean) < 1e-3 and eff.details["clean_mean"] < 1e-3


def test_routes_to_holds_and_fails(moe, data):
    tokens, scored = data
    pi.assert_routes_to(moe, 1, 3, inputs=tokens, at_least=0.5)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_routes_to(moe, 1, 1, inputs=tokens, positions=scored, at_least=0.5)


def test_force_routes_the_chosen_tokens(moe, data):
    tokens, scored = data
    # forcing every b position of layer 0 onto expert 3 breaks lookups that needed other experts
    eff = pi.ablate(moe, pi.expert(0, 3).at(scored.tolist()), inputs=tokens, metric=pi.metrics.loss(mask=scored),
                    how=pi.Force())
    assert eff.ci[0] > 0.1
