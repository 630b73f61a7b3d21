"""Segmented prompts and context ablations, on the induction fixture (it copies what followed an earlier
occurrence, so a 'document' holding the queried pair is what the answer relies on)."""

from __future__ import annotations

import random

import numpy as np
import pytest

import pytest_interp as pi
from pytest_interp import InterpError


def _prompts(n=32, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.sample([f"t{i}" for i in range(1, 64)], 6)
        out.append(pi.Prompt(("text", "<bos>"), ("doc", " ".join(w[:3]), "gold"), ("doc", " ".join(w[3:]), "other"),
                             ("question", f"{w[0]} {w[1]}"), answer=w[2]))
    return out


@pytest.fixture(scope="module")
def prompts():
    return _prompts()


def test_segments_are_tokenised_once_with_spans(induction, prompts):
    ids, spans, answer = prompts[0].encode(induction)
    assert len(ids) == 9 and len(answer) == 1
    assert [(s.kind, s.index, s.start, s.stop) for s in spans] == [
        ("text", 0, 0, 1), ("document", 0, 1, 4), ("document", 1, 4, 7), ("question", 0, 7, 9)]
    assert spans[1].name == "gold" and spans[1].label == "document 0 (gold)"


def test_deletion_and_masking_both_named_and_both_measured(induction, prompts):
    gold_del = pi.leave_out(induction, prompts, "gold", method="delete")
    gold_mask = pi.leave_out(induction, prompts, "gold", method="mask")
    assert gold_del.intervention == "leave out gold (delete)" and gold_mask.intervention == "leave out gold (mask)"
    assert gold_del.ci[0] > 1.0 and gold_mask.ci[0] > 1.0
    assert gold_del.details["ablated_accuracy"] < 0.1 < 0.9 < gold_del.details["clean_accuracy"]
    by_index = pi.leave_out(induction, prompts, 0)
    np.testing.assert_allclose(by_index.values, gold_del.values)
    per_prompt = pi.leave_out(induction, prompts, [0] * len(prompts))
    np.testing.assert_allclose(per_prompt.values, gold_del.values)


def test_structured_ablations(induction, prompts):
    keep = pi.keep_only(induction, prompts, "gold")
    other = pi.leave_out(induction, prompts, "other")
    np.testing.assert_allclose(keep.values, other.values)  # two documents: keeping one = removing the other
    shuffled = pi.shuffle_segments(induction, prompts, seed=1)
    assert shuffled.intervention == "shuffle document order (seed 1)"
    assert abs(shuffled.mean) < 0.5  # copying does not depend on where the pair sits
    distractor = pi.replace_segment(induction, prompts, "gold", "t1 t2 t3")
    assert distractor.ci[0] > 1.0
    loo = pi.leave_one_out(induction, prompts, metric="accuracy")
    assert list(loo) == ["document 0", "document 1"]
    assert loo["document 0"].mean > 0.8 and loo["document 1"].ci == (0.0, 0.0)


def test_document_claims_fail_where_they_must(induction, prompts):
    pi.assert_document_necessary(induction, prompts, "gold", at_least=1.0)
    with pytest.raises(pi.ClaimFailed, match="document 'other' is necessary"):
        pi.assert_document_necessary(induction, prompts, "other", at_least=1.0, metric="accuracy")
    pi.assert_document_unused(induction, prompts, "other", within=0.05, metric="accuracy")
    with pytest.raises(pi.ClaimFailed, match="answer accuracy"):
        pi.assert_document_unused(induction, prompts, "gold", within=0.05, metric="accuracy")


def test_tool_output_claim(induction):
    rng = random.Random(4)
    ps = []
    for _ in range(24):
        w = rng.sample([f"t{i}" for i in range(1, 64)], 6)
        ps.append(pi.Prompt(("text", "<bos>"), ("doc", " ".join(w[3:])), ("tool_call", w[0]),
                            ("tool_output", f"{w[1]} {w[2]}"), ("question", f"{w[0]} {w[1]}"), answer=w[2]))
    eff = pi.assert_tool_output_necessary(induction, ps, at_least=0.5, metric="accuracy")
    assert eff.sites == ("leave out tool_output 0 (delete)",)
    with pytest.raises(pi.ClaimFailed, match="document 0 is necessary"):
        pi.assert_document_necessary(induction, ps, 0, at_least=0.5, metric="accuracy")


def test_provenance_next_to_reliance(induction, prompts):
    table = pi.provenance(induction, prompts)
    assert [r.label for r in table] == ["document 0", "document 1"]
    gold = table["document 0"]
    assert len(gold.attention_by_layer) == induction.n_layers and 0 < gold.attention < 1
    assert gold.effect.ci[0] > 1.0
    assert "removal damage" in str(table)


# bad input --------------------------------------------------------------------------------------------------

def test_document_index_that_does_not_exist(induction, prompts):
    with pytest.raises(InterpError, match="has no document 5") as exc:
        pi.leave_out(induction, prompts, 5)
    assert "count document segments from 0" in str(exc.value)
    with pytest.raises(InterpError, match="no segment\\(s\\) named 'nope'"):
        pi.assert_document_necessary(induction, prompts, "nope", at_least=0.1)


def test_overlapping_segments(induction):
    with pytest.raises(InterpError, match="segments overlap") as exc:
        pi.Prompt.from_ids([0, 5, 6, 7, 8], [("doc", 1, 3), ("doc", 2, 4)], answer_ids=[9])
    assert "each belongs to at most one segment" in str(exc.value)


def test_tokenizer_that_merges_across_a_segment_boundary(induction):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "t1": 1, "t2": 2, "t1 t2": 3, "<unk>": 4}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(";", behavior="removed")
    subject = pi.load(induction.model, PreTrainedTokenizerFast(tokenizer_object=tok))
    prompt = pi.Prompt(("doc", "t1"), ("question", "t2"), answer="t1")
    with pytest.raises(InterpError, match="merges text across a segment boundary") as exc:
        prompt.encode(subject)
    assert "word boundary" in str(exc.value)


def test_bad_prompt_arguments(induction, prompts):
    with pytest.raises(InterpError, match="unknown segment kind 'chapter'"):
        pi.Prompt(("chapter", "t1"))
    with pytest.raises(InterpError, match="prompts must be pi.Prompt objects"):
        pi.leave_out(induction, ["<bos> t1 t2"], 0)
    with pytest.raises(InterpError, match="unknown removal method"):
        pi.leave_out(induction, prompts, 0, method="erase")
    with pytest.raises(InterpError, match="unknown answer metric"):
        pi.leave_out(induction, prompts, 0, metric="f1")
    with pytest.raises(InterpError, match="has no answer"):
        pi.leave_out(induction, [pi.Prompt(("doc", "t1 t2"), ("question", "t1"))], 0)
