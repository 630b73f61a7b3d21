"""Causal tracing on the induction fixture: the 'fact' is the token that followed an earlier occurrence of the
'subject' (the repeated pair), which the model copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_interp as pi
from pytest_interp import InterpError
from pytest_interp.experiments.tracing import Corruption

SUBJECT = [2, 3]  # the pair; it recurs at 7, 8 and the model must produce the token at 4


@pytest.fixture(scope="module")
def facts():
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 64, (24, 9), generator=g)
    toks[:, 0] = 0
    toks[:, 7:9] = toks[:, 2:4]
    return toks, toks[:, 4].clone()


def test_restoring_everything_gives_the_clean_score_and_nothing_the_corrupted(induction, facts):
    toks, ans = facts
    corr = Corruption(induction, toks, SUBJECT, ans, samples=3)
    assert corr.corrupted.mean() < corr.clean.mean()
    np.testing.assert_allclose(corr.score(()), corr.corrupted)
    np.testing.assert_allclose(corr.score((pi.resid(0),)), corr.clean, rtol=1e-5, atol=1e-7)
    every = tuple(pi.resid(layer) for layer in range(induction.n_layers + 1))
    np.testing.assert_allclose(corr.score(every), corr.clean, rtol=1e-5, atol=1e-7)
    eff = pi.restore(induction, every, prompts=toks, subject_tokens=SUBJECT, answer=ans, samples=3)
    assert abs(eff.mean - 1) < 1e-5 and eff.details["noise_samples"] == 3


def test_trace_grid(induction, facts):
    toks, ans = facts
    t = pi.trace(induction, toks, SUBJECT, ans, samples=3, window=1)
    values, rows, cols = t.grid("resid")
    assert values.shape == (induction.n_layers, toks.shape[1]) and rows == ["resid 0", "resid 1"]
    assert cols[2].endswith("*") and not cols[1].endswith("*")
    # positions before the subject were never corrupted: restoring them changes nothing
    assert np.all(values[:, :2] == 0)
    # resid 0 at a subject position restores only that token's embedding
    assert values[0, 2] < 0.9
    lo, hi = t.ci("resid")
    assert np.all(lo <= values + 1e-12) and np.all(values <= hi + 1e-12)
    assert abs(t.noise_std - 3 * t.embedding_std) < 1e-9
    assert set(t.restored) == {"resid", "mlp", "attn"} and "causal trace" in str(t)
    eff = t.effect("resid", 1, 3)
    assert abs(eff.mean - values[1, 3]) < 1e-9


def test_windows_and_seeds(induction, facts):
    toks, ans = facts
    a = pi.trace(induction, toks, SUBJECT, ans, kinds=("mlp",), samples=2, window=2, seed=1, record=False)
    b = pi.trace(induction, toks, SUBJECT, ans, kinds=("mlp",), samples=2, window=2, seed=1, record=False)
    c = pi.trace(induction, toks, SUBJECT, ans, kinds=("mlp",), samples=2, window=2, seed=2, record=False)
    np.testing.assert_array_equal(a.grid("mlp")[0], b.grid("mlp")[0])
    assert not np.array_equal(a.grid("mlp")[0], c.grid("mlp")[0])
    # window 2 on a 2-layer model restores both MLP layers in every row
    np.testing.assert_allclose(a.grid("mlp")[0][0], a.grid("mlp")[0][1])


def test_mediates_claim_fails_where_it_must(induction, facts):
    toks, ans = facts
    # the previous-token head moved "the subject came before me" into position 4 by layer 1
    pi.assert_mediates(induction, pi.resid(1).at(4), prompts=toks, subject_tokens=SUBJECT, answer=ans, at_least=0.15)
    with pytest.raises(pi.ClaimFailed, match="mediates the answer") as exc:
        pi.assert_mediates(induction, pi.resid(1).at(1), prompts=toks, subject_tokens=SUBJECT, answer=ans,
                           at_least=0.15)
    assert "noise: std" in str(exc.value)


def test_subject_given_as_text_or_mask(induction, facts):
    toks, ans = facts
    texts = [" ".join(f"t{int(i)}" for i in row[2:4]) for row in toks]
    mask = torch.zeros(toks.shape, dtype=torch.bool)
    mask[:, 2:4] = True
    a = Corruption(induction, toks, SUBJECT, ans, samples=1)
    np.testing.assert_array_equal(a.mask.cpu(), mask)
    b = Corruption(induction, toks, mask, ans, samples=1)
    np.testing.assert_array_equal(b.corrupted, a.corrupted)
    c = Corruption(induction, toks, texts, ans, samples=1)
    # the text occurs twice; the last occurrence is the one marked
    assert c.mask[:, 7:9].all() and not c.mask[:, 2:4].any()


def test_bad_input(induction, facts):
    toks, ans = facts
    with pytest.raises(InterpError, match="is not in prompt 0") as exc:
        Corruption(induction, toks, "t1 t1 t1 t1", ans)
    assert "contiguous run" in str(exc.value)
    for noise in (0, -1.0, float("nan")):
        with pytest.raises(InterpError, match="noise scale must be positive"):
            pi.trace(induction, toks, SUBJECT, ans, noise=noise)
    with pytest.raises(InterpError, match="window must be a positive int"):
        pi.trace(induction, toks, SUBJECT, ans, window=0)
    with pytest.raises(InterpError, match="cannot trace 'heads'"):
        pi.trace(induction, toks, SUBJECT, ans, kinds=("heads",))
    with pytest.raises(InterpError, match="outside the prompt"):
        Corruption(induction, toks, [20], ans)
    with pytest.raises(InterpError, match="outside the prompt"):
        pi.trace(induction, toks, SUBJECT, ans, positions=[3, 40])
    with pytest.raises(InterpError, match="one answer per prompt"):
        Corruption(induction, toks, SUBJECT, ans[:3])
