"""Families of claims on the induction fixture: "only these heads are necessary" (Holm) and a sweep's significant
sites (Benjamini-Hochberg), each where it holds and where it must fail."""

from __future__ import annotations

import numpy as np
import pytest

import pytest_interp as pi
from pytest_interp.core.stats import mean_effect
from pytest_interp.experiments.sweeps import Sweep


@pytest.fixture(scope="module")
def halves(induction):
    return pi.repeated_tokens(induction, n=64, seed=5, layout="halves")


def ctx(data):
    return pi.metrics.loss(mask=data.second_half)


LAYER_1 = [pi.head(1, 0), pi.head(1, 1), pi.head(1, 3)]


def test_only_the_two_strong_induction_heads_are_necessary(induction, halves):
    effects = pi.assert_only(induction, necessary=[pi.head(1, 0), pi.head(1, 1)], among=LAYER_1,
                             inputs=halves.tokens, metric=ctx(halves), at_least=2.5, within=0.05)
    assert set(effects) == set(LAYER_1)
    for eff in effects.values():
        assert eff.details["holm_p"] >= eff.details["p_one_sided"]
        assert eff.details["holm_p"] <= 0.025
    # each site's effect is the single ablation's
    single = pi.ablate(induction, pi.head(1, 3), inputs=halves.tokens, metric=ctx(halves))
    assert effects[pi.head(1, 3)].mean == pytest.approx(single.mean, abs=1e-6)


def test_only_fails_when_a_necessary_head_is_left_out(induction, halves):
    with pytest.raises(pi.ClaimFailed) as err:
        pi.assert_only(induction, necessary=[pi.head(1, 0)], among=LAYER_1, inputs=halves.tokens,
                       metric=ctx(halves), at_least=2.5, within=0.05)
    msg = str(err.value)
    assert "Holm" in msg and "head 1.1" in msg and "FAILED" in msg


def test_only_fails_when_a_null_head_is_named_necessary(induction, halves):
    with pytest.raises(pi.ClaimFailed, match="head 1.3 .*FAILED"):
        pi.assert_only(induction, necessary=LAYER_1, among=LAYER_1, inputs=halves.tokens, metric=ctx(halves),
                       at_least=2.5, within=0.05)


def test_only_checks_its_arguments(induction, halves):
    with pytest.raises(pi.InterpError, match="not among"):
        pi.assert_only(induction, necessary=[pi.head(0, 3)], among=LAYER_1, inputs=halves.tokens,
                       metric=ctx(halves), at_least=1.0, within=0.05)
    with pytest.raises(pi.InterpError, match="at least two sites"):
        pi.assert_only(induction, necessary=[pi.head(1, 0)], among=[pi.head(1, 0)], inputs=halves.tokens,
                       metric=ctx(halves), at_least=1.0, within=0.05)


def test_sweep_significant_finds_the_real_heads(induction, halves):
    sweep = pi.sweep(induction, inputs=halves.tokens, metric=ctx(halves))
    found = [s for s, _ in sweep.significant(q=0.05)]
    assert {pi.head(1, 0), pi.head(1, 1), pi.head(0, 3)} <= set(found)
    q = sweep.adjusted_p()
    assert all(q[s] >= sweep[s].p_value for s in sweep)
    with pytest.raises(pi.InterpError, match="q must be between 0 and 1"):
        sweep.significant(q=1.5)


def test_sweep_significant_controls_false_discoveries_on_null_sites():
    # 8 null sites at n = 32: an uncorrected "CI excludes 0" picked some site about half the time
    rng = np.random.default_rng(0)
    trials, any_uncorrected, any_bh = 300, 0, 0
    for i in range(trials):
        effects = {pi.head(0, h): mean_effect(rng.normal(0, 1, 32), alpha=0.05, n_boot=10, n_perm=400, seed=i)
                   for h in range(8)}
        sweep = Sweep(effects, "null")
        any_uncorrected += any(e.ci[0] > 0 or e.ci[1] < 0 for e in effects.values())
        any_bh += bool(sweep.significant(q=0.05))
    assert any_uncorrected / trials > 0.25
    assert any_bh / trials <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)
