"""Probes with control tasks and direction interventions, on fixtures/addition-gpt2 (CARD.md: the carry is
decodable after block 0 at positions 7 and 8 and used only at 8; the tag is decodable where it sits, but no more
than its own token identity gives away)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import pytest_interp as pi
from tests.helpers import FIXTURES

from .test_bad_input import check


@pytest.fixture(scope="module")
def addition():
    return pi.load(FIXTURES / "addition-gpt2")


@pytest.fixture(scope="module")
def data():
    sys.path.insert(0, str(FIXTURES))
    from train_addition_gpt2 import make_problems

    p = make_problems("heldout", seed=0)
    n = 240
    carry = p["carry"][:n].long()
    c = carry.bool()
    return {"ids": p["ids"][:n, :9], "carry": carry, "tag": (p["tag"][:n] == p["tag"][:n].min()).long(),
            "types": ((p["a"][:n] % 10) * 10 + p["b"][:n] % 10).tolist(),
            "carry_ids": p["ids"][:n, :9][c][:48], "carry_s1": p["ids"][:n, 9][c][:48]}


def test_probe_with_a_control_task(addition, data):
    at8 = pi.probe(addition, pi.resid(1), data["ids"], data["carry"], position=8, types=data["types"])
    assert at8.accuracy.mean > 0.95 and at8.selectivity.ci[0] > 0.2
    assert at8.control.mean < 0.8 and at8.direction.shape == (64,) and abs(float(at8.direction.norm()) - 1) < 1e-5
    # the tag at its own position: perfectly decodable, and perfectly memorisable from the token itself
    tag = pi.probe(addition, pi.resid(1), data["ids"], data["tag"], position=1)
    assert tag.accuracy.mean == 1.0 and tag.control.mean == 1.0 and tag.selectivity.mean == 0.0
    again = pi.probe(addition, pi.resid(1), data["ids"], data["carry"], position=8, types=data["types"])
    assert torch.equal(again.weights, at8.weights)  # seeded


def test_projecting_out_a_direction_matches_plain_torch(addition, data):
    u = pi.probe(addition, pi.resid(1), data["ids"], data["carry"], position=8, types=data["types"]).mean_difference
    tokens, s1 = data["carry_ids"], data["carry_s1"]
    eff = pi.ablate(addition, pi.resid(1).at(8), inputs=tokens, metric=pi.metrics.logprob(s1, position=pi.last),
                    how=pi.Direction(u))

    def lp(edit=None):
        h = None
        if edit is not None:
            h = addition.model.transformer.h[0].register_forward_hook(
                lambda m, a, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out))
        try:
            with torch.no_grad():
                logits = addition.model(input_ids=tokens).logits[:, -1].float()
        finally:
            if h is not None:
                h.remove()
        return logits.log_softmax(-1).gather(-1, s1[:, None])[:, 0]

    def project(x):
        x = x.clone()
        x[:, 8] -= (x[:, 8] @ u)[:, None] * u
        return x

    assert np.allclose(eff.values, (lp() - lp(project)).numpy(), atol=1e-5)
    assert eff.ci[0] > 0.5


def test_direction_claims_say_decodable_is_not_used(addition, data):
    metric = pi.metrics.logprob(data["carry_s1"], position=pi.last)
    tokens = data["carry_ids"]
    u8 = pi.probe(addition, pi.resid(1), data["ids"], data["carry"], position=8, types=data["types"]).mean_difference
    u7 = pi.probe(addition, pi.resid(1), data["ids"], data["carry"], position=7, types=data["types"]).mean_difference
    pi.assert_probe_selective(addition, pi.resid(1), inputs=data["ids"], labels=data["carry"], position=7,
                              types=data["types"], selectivity_at_least=0.1)
    pi.assert_direction_used(addition, pi.resid(1).at(8), u8, inputs=tokens, metric=metric, at_least=0.5)
    pi.assert_direction_unused(addition, pi.resid(1).at(7), u7, inputs=tokens, metric=metric, within=0.01)
    with pytest.raises(pi.ClaimFailed, match="is used"):
        pi.assert_direction_used(addition, pi.resid(1).at(7), u7, inputs=tokens, metric=metric, at_least=0.1)
    with pytest.raises(pi.ClaimFailed, match="not used"):
        pi.assert_direction_unused(addition, pi.resid(1).at(8), u8, inputs=tokens, metric=metric, within=0.01)
    with pytest.raises(pi.ClaimFailed, match="linearly encodes"):
        pi.assert_probe_selective(addition, pi.resid(1), inputs=data["ids"], labels=data["tag"], position=1,
                                  selectivity_at_least=0.1)


def test_mean_mode_keeps_the_direction_at_its_mean(addition, data):
    u = pi.probe(addition, pi.resid(1), data["ids"], data["carry"], position=8, types=data["types"]).direction
    metric = pi.metrics.logprob(data["carry_s1"], position=pi.last)
    # every example carries, so the mean of the carry component is each example's own value: nothing changes
    same = pi.ablate(addition, pi.resid(1).at(8), inputs=data["carry_ids"], metric=metric,
                     how=pi.Direction(u, mode="mean"))
    assert abs(same.mean) < 0.05


def test_bad_probes_and_directions(addition, data):
    ids = data["ids"]
    with pytest.raises(pi.InterpError) as err:
        pi.probe(addition, pi.resid(1), ids, torch.zeros(len(ids), dtype=torch.long))
    check(err, "two classes")
    few = torch.zeros(len(ids), dtype=torch.long)
    few[:3] = 1
    with pytest.raises(pi.InterpError) as err:
        pi.probe(addition, pi.resid(1), ids, few)
    check(err, "too few examples of class 1")
    with pytest.raises(pi.InterpError) as err:
        pi.probe(addition, pi.resid(1), ids, data["carry"][:10])
    check(err, "one value per example")
    with pytest.raises(pi.InterpError) as err:
        pi.probe(addition, pi.resid(1), ids, data["carry"], position=12)
    check(err, "outside some example")
    metric = pi.metrics.loss()
    for how, words in ((pi.Direction(torch.ones(10)), ("wrong size", "64")), (pi.Direction(torch.zeros(64)), ("zero",)),
                       (pi.Direction(torch.ones(64), mode="other"), ("mode",)), (pi.Direction(), ("needs a direction",))):
        with pytest.raises(pi.InterpError) as err:
            pi.ablate(addition, pi.resid(1), inputs=ids, metric=metric, how=how)
        check(err, *words)
