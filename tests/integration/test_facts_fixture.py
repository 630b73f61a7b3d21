"""Causal tracing on fixtures/facts-gpt2 (ground truth: its CARD.md, measured by fixtures/measure_facts.py with
its own noise draws)."""

from __future__ import annotations

import numpy as np
import pytest

import pytest_interp as pi
from pytest_interp.experiments.tracing import Corruption
from tests.helpers import FACTS, fixture_module, shipped


@pytest.fixture(scope="module")
def facts_model():
    return shipped(FACTS)


@pytest.fixture(scope="module")
def lives_in():
    fs = [f for f in fixture_module("train_facts_gpt2").facts() if f["relation"] == "lives in"
          and f["subject_len"] == 3][:48]
    return {"prompts": [f["prompt"] for f in fs], "subject_tokens": [f["subject"] for f in fs],
            "answer": [f["answer"] for f in fs]}


def test_noise_scale_and_exact_endpoints(facts_model, lives_in):
    corr = Corruption(facts_model, lives_in["prompts"], lives_in["subject_tokens"], lives_in["answer"], samples=4)
    assert corr.embedding_std == pytest.approx(0.1297, abs=5e-5)  # the CARD's measured std
    assert corr.mask[:, 1:4].all() and not corr.mask[:, [0, 4, 5]].any()
    np.testing.assert_allclose(corr.score((pi.resid(0).at([1, 2, 3]),)), corr.clean, atol=1e-6)
    every = tuple(pi.resid(layer) for layer in range(facts_model.n_layers + 1))
    np.testing.assert_allclose(corr.score(every), corr.clean, atol=1e-6)
    np.testing.assert_allclose(corr.score(()), corr.corrupted)
    assert corr.clean.mean() > 0.99 and corr.corrupted.mean() < 0.3


def test_trace_agrees_with_the_card(facts_model, lives_in):
    t = pi.trace(facts_model, **lives_in, window=1, samples=5)
    values, _, cols = t.grid("mlp")
    lo, hi = t.ci("mlp")
    # CARD: mlp 0 @ 5 restores 0.76 [0.71, 0.80] of the gap; mlp 1 @ 3 does not mediate
    assert lo[0, 5] < 0.76 < hi[0, 5]
    assert abs(values[1, 3]) < 0.02 and cols[3].startswith("3:") and cols[3].endswith("*")
    assert np.all(values[:, 0] == 0)  # <bos>: nothing to restore
    windowed = pi.trace(facts_model, **lives_in, kinds=("mlp",), window=2, samples=5, record=False)
    # a window of 2 restores layers 0-1 in row 0 and row 1, so both rows are equal
    np.testing.assert_allclose(windowed.grid("mlp")[0][0], windowed.grid("mlp")[0][1])


def test_mediates_holds_and_fails(facts_model, lives_in):
    pi.assert_mediates(facts_model, pi.mlp(0).at(5), **lives_in, at_least=0.5)
    with pytest.raises(pi.ClaimFailed, match="mlp 1 @ 3 mediates"):
        pi.assert_mediates(facts_model, pi.mlp(1).at(3), **lives_in, at_least=0.1)
