"""Attribution methods and their faithfulness to leave-one-token-out interventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_interp as pi
from pytest_interp import InterpError, explain


@pytest.fixture(scope="module")
def copy_task():
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 64, (16, 10), generator=g)
    toks[:, 0] = 0
    toks[:, 8:10] = toks[:, 3:5]
    return toks, toks[:, 5].clone()


@pytest.mark.filterwarnings("ignore:integrated gradients has not converged")
def test_ig_completeness_delta_shrinks_as_steps_grow(tiny_gpt2):
    toks = torch.randint(1, 48, (3, 8), generator=torch.Generator().manual_seed(0))
    deltas = [explain.integrated_gradients(tiny_gpt2, toks, [5, 6, 7], steps=s).details["max_abs_delta"]
              for s in (2, 8, 32, 128)]
    assert deltas == sorted(deltas, reverse=True) and deltas[-1] < 1e-5 < deltas[0]


def test_ig_attributions_sum_to_the_output_difference(induction, copy_task):
    toks, ans = copy_task
    # this model's BOS embedding is the zero vector: under RMSNorm a path that ends (or starts) at zero has a
    # near-step in it that no Riemann sum resolves, so here the first token is an ordinary one and the baseline
    # token 1 at every position
    toks = toks[:4].clone()
    toks[:, 0] = 7
    deltas = [explain.integrated_gradients(induction, toks, ans[:4], steps=s, baseline=1).details["max_abs_delta"]
              for s in (16, 64, 256)]
    assert deltas == sorted(deltas, reverse=True) and deltas[-1] < 1e-3
    a = explain.integrated_gradients(induction, toks, ans[:4], steps=256, baseline=1)
    full = explain.leave_one_token_out(induction, toks, ans[:4]).details["full_logprob"]
    assert a.scores.shape == (4, 10)
    assert a.details["baseline"] == "token 1" and np.isfinite(full).all()


def test_ig_warns_when_it_has_not_converged(induction, copy_task):
    toks, ans = copy_task
    with pytest.warns(pi.InterpWarning, match="has not converged"):
        explain.integrated_gradients(induction, toks[:2], ans[:2], steps=4)  # zero baseline under RMSNorm


def test_attention_and_rollout(induction, copy_task):
    toks, ans = copy_task
    mean = explain.attention(induction, toks)
    one = explain.attention(induction, toks, layer=1, head=0)
    assert mean.scores.shape == one.scores.shape == (16, 10)
    np.testing.assert_allclose(one.scores.sum(1), 1, atol=1e-5)
    assert one.details["per_head"].shape == (16, 1, 1, 10)
    r = explain.rollout(induction, toks)
    np.testing.assert_allclose(r.scores.sum(1), 1, atol=1e-6)
    g = explain.grad_x_input(induction, toks, ans)
    assert g.scores.shape == (16, 10) and g.method == "grad_x_input"


def test_planted_attribution_scores_one_and_a_random_one_zero(induction, copy_task):
    toks, ans = copy_task
    loo = explain.leave_one_token_out(induction, toks, ans)
    planted = pi.faithfulness(induction, loo.scores.copy(), inputs=toks, answer=ans, reference=loo)
    assert planted.rank.ci[0] > 0.99
    rng = np.random.default_rng(0)
    rand = pi.faithfulness(induction, rng.normal(size=loo.scores.shape), inputs=toks, answer=ans, reference=loo)
    assert rand.rank.ci[0] < 0 < rand.rank.ci[1] and abs(rand.rank.mean) < 0.2
    assert planted.comprehensiveness.mean > rand.comprehensiveness.mean
    assert planted.sufficiency.mean < rand.sufficiency.mean


def test_faithfulness_claims(induction, copy_task):
    toks, ans = copy_task
    loo = explain.leave_one_token_out(induction, toks, ans)
    pi.assert_faithful(induction, loo, inputs=toks, answer=ans, at_least=0.9)
    noise = np.random.default_rng(1).normal(size=loo.scores.shape)
    pi.assert_not_faithful(induction, noise, inputs=toks, answer=ans, below=0.5)
    with pytest.raises(pi.ClaimFailed, match="is a faithful explanation"):
        pi.assert_faithful(induction, noise, inputs=toks, answer=ans, at_least=0.5)
    with pytest.raises(pi.ClaimFailed, match="is not a faithful explanation"):
        pi.assert_not_faithful(induction, loo, inputs=toks, answer=ans, below=0.5)


def test_bad_input(induction, copy_task):
    toks, ans = copy_task
    for steps in (1, 0, 2.5):
        with pytest.raises(InterpError, match="at least 2 steps"):
            explain.integrated_gradients(induction, toks, ans, steps=steps)
    with pytest.raises(InterpError, match="shape does not match the inputs") as exc:
        pi.faithfulness(induction, np.zeros((16, 9)), inputs=toks, answer=ans)
    assert "same inputs" in str(exc.value)
    with pytest.raises(InterpError, match="head= needs layer="):
        explain.attention(induction, toks, head=1)
    with pytest.raises(InterpError, match="outside the inputs"):
        explain.grad_x_input(induction, toks, ans, position=10)
    with pytest.raises(InterpError, match="keep must be a bool mask"):
        pi.faithfulness(induction, np.zeros((16, 10)), inputs=toks, answer=ans, keep=[0, 1])
    with pytest.raises(InterpError, match="NaN"):
        pi.faithfulness(induction, np.full((16, 10), np.nan), inputs=toks, answer=ans)
