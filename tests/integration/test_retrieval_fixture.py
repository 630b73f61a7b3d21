"""Retrieval and tool claims on fixtures/retrieval-llama (ground truth: its CARD.md), and pytest-interp's
leave-one-out against the fixture's own reference code (fixtures/measure_retrieval.py)."""

from __future__ import annotations

import numpy as np
import pytest

import pytest_interp as pi
from tests.helpers import RETRIEVAL, fixture_module, shipped


@pytest.fixture(scope="module")
def rag():
    return shipped(RETRIEVAL)


def _prompts(n, seed, variant="docs"):
    raw = fixture_module("train_retrieval_llama").make_prompts(n, seed, variant=variant)
    return raw, [pi.Prompt(*p["segments"], answer=p["answer"]) for p in raw]


@pytest.mark.parametrize("method", ["delete", "mask"])
def test_leave_out_matches_the_reference_code(rag, method):
    ref = fixture_module("measure_retrieval")
    raw, prompts = _prompts(48, 5)
    ids, ans = ref.encode(rag.tokenizer, raw)
    clean = ref.last_logprobs(rag.model, ids)[0].gather(-1, ans[:, None])[:, 0]
    for doc in range(3):
        drop = ref.span_mask(len(raw), ids.shape[1], [[ref.spans(p)[1 + doc][1:]] for p in raw])
        run = ref.run_deleted(rag.model, ids, drop)[0] if method == "delete" else ref.run_masked(rag.model, ids, drop)
        expected = (clean - run.gather(-1, ans[:, None])[:, 0]).double().numpy()
        eff = pi.leave_out(rag, prompts, doc, method=method)
        np.testing.assert_allclose(eff.values, expected, atol=1e-4, err_msg=f"document {doc}, {method}")


def test_deletion_and_masking_agree(rag):
    raw, prompts = _prompts(96, 6)
    queried = [p["queried"] for p in raw]
    other = [(q + 1) % 3 for q in queried]
    for which, necessary in ((queried, True), (other, False)):
        by = {m: pi.leave_out(rag, prompts, which, method=m) for m in ("delete", "mask")}
        acc = {m: pi.leave_out(rag, prompts, which, method=m, metric="accuracy") for m in ("delete", "mask")}
        for m in ("delete", "mask"):
            assert (by[m].ci[0] > 3.0) if necessary else (abs(by[m].ci[0]) < 0.01 and abs(by[m].ci[1]) < 0.01)
        assert abs(acc["delete"].mean - acc["mask"].mean) < 0.05


def test_removing_the_queried_document_drops_accuracy_to_chance(rag):
    raw, prompts = _prompts(96, 7)
    eff = pi.leave_out(rag, prompts, [p["queried"] for p in raw], metric="accuracy")
    assert eff.details["clean_mean"] == 1.0 and eff.details["ablated_mean"] < 0.15  # chance: 1/16


def test_document_claims_hold_and_fail(rag):
    raw, prompts = _prompts(64, 8)
    queried = [p["queried"] for p in raw]
    other = [(q + 2) % 3 for q in queried]
    pi.assert_document_necessary(rag, prompts, queried, at_least=3.0)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_document_necessary(rag, prompts, other, at_least=0.5)
    pi.assert_document_unused(rag, prompts, other, within=0.01)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_document_unused(rag, prompts, queried, within=0.01, method="mask")


def test_tool_output_claims_hold_and_fail(rag):
    _, prompts = _prompts(64, 9, "tool")
    pi.assert_tool_output_necessary(rag, prompts, at_least=3.0, method="mask")
    with pytest.raises(pi.ClaimFailed, match="tool_output 0 is necessary"):
        pi.assert_tool_output_necessary(rag, prompts, at_least=20.0)


def test_structured_context_ablations(rag):
    raw, prompts = _prompts(64, 10)
    queried = [p["queried"] for p in raw]
    assert pi.keep_only(rag, prompts, queried).ci[1] < 0.01  # the queried document alone suffices
    assert abs(pi.shuffle_segments(rag, prompts, seed=3).mean) < 0.05  # order does not matter
    distractor = pi.replace_segment(rag, prompts, queried, "[DOC] k23 v15")
    assert distractor.ci[0] > 3.0


def test_provenance_and_reliance_on_the_fixture(rag):
    raw, prompts = _prompts(60, 13)
    last = [p for p, r in zip(prompts, raw) if r["queried"] == 2]
    both = pi.provenance(rag, last)
    assert both["document 2"].attention_by_layer[1] > 0.8  # layer 1 reads the queried document...
    layer0 = pi.provenance(rag, last, layers=[0])
    # ...layer 0 spreads its attention over all documents, including the unused ones
    assert layer0["document 0"].attention > 0.1 and abs(layer0["document 0"].effect.mean) < 0.01
    with pytest.raises(KeyError):
        both["tool_output 0"]
