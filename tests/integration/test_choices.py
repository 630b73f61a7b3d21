"""Choice metrics over the options a prompt lists (Prompt(choices=...), metric='choice'), on retrieval-llama."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from tests.helpers import RETRIEVAL, fixture_module


@pytest.fixture(scope="module")
def retrieval():
    return pi.load(RETRIEVAL)


def _prompts(n=24, seed=31, choices=True):
    out = []
    for p in fixture_module("train_retrieval_llama").make_prompts(n, seed):
        values = [text.split()[-1] for kind, text in p["segments"] if kind == "doc"]
        out.append(pi.Prompt(*p["segments"], answer=p["answer"], choices=values if choices else None))
    return out


def test_the_choice_score_is_the_answer_renormalised_over_the_listed_options(retrieval):
    prompts = _prompts()
    eff = pi.leave_out(retrieval, prompts, 0, metric="choice")
    ids = retrieval.tokens([" ".join(s.text for s in p.segments) for p in prompts])
    with torch.no_grad():
        last = retrieval.model(input_ids=ids).logits[:, -1].float()
    want = []
    for row, p in zip(last, prompts):
        ch = retrieval.token_ids(p.choices)
        want.append(float(torch.log_softmax(row[ch], -1)[p.choices.index(p.answer)]))
    assert eff.details["clean_mean"] == pytest.approx(sum(want) / len(want), abs=1e-5)
    acc = pi.leave_out(retrieval, prompts, 0, metric="choice_accuracy")
    assert acc.details["clean_mean"] == 1.0


def test_choice_claims_hold_and_fail_where_they_should(retrieval):
    raw = fixture_module("train_retrieval_llama").make_prompts(64, 32)
    prompts = _prompts(64, 32)
    gold = [p["queried"] for p in raw]
    other = [(q + 1) % 3 for q in gold]
    pi.assert_choice_depends_on(retrieval, prompts, gold, kind="document", at_least=0.5)
    pi.assert_choice_independent_of(retrieval, prompts, other, kind="document", within=0.05)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_choice_depends_on(retrieval, prompts, other, kind="document", at_least=0.5)


def test_bad_choices_are_refused(retrieval):
    p = fixture_module("train_retrieval_llama").make_prompts(1, 33)[0]
    with pytest.raises(pi.InterpError, match="not among the choices"):
        pi.Prompt(*p["segments"], answer=p["answer"], choices=["v99"])
    absent = next(f"v{i}" for i in range(16) if f"v{i}" not in p["text"].split())
    bad = pi.Prompt(*p["segments"], answer=p["answer"], choices=[p["answer"], absent])
    with pytest.raises(pi.InterpError, match="is not in the prompt"):
        pi.leave_out(retrieval, [bad] * 16, 0, metric="choice")
    with pytest.raises(pi.InterpError, match="needs each prompt's choices|needs the prompt's choices"):
        pi.leave_out(retrieval, _prompts(16, 34, choices=False), 0, metric="choice")
