"""Shared inputs for the example claims. The model comes from `interp_model` (pyproject.toml) or a module's
`pytestmark = pytest.mark.interp_model(...)`."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def corrupted(repeated):
    """`repeated` with the first occurrence of each segment replaced by fresh random tokens (seeded): the
    second half is then no longer a repeat, so in-context copying has nothing to copy."""
    g = torch.Generator().manual_seed(1)
    tokens = repeated.tokens.clone()
    first = repeated.first_half.clone()
    first[:, 1:] |= repeated.first_half[:, :-1]  # the mask marks predictions; include each segment's last token
    tokens[first] = torch.randint(1, 64, (int(first.sum()),), generator=g)
    return tokens


def fixture_module(name: str):
    """A fixture model's training script (its data generators), importable without side effects."""
    import importlib
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent.parent / "fixtures")
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def lookups():
    """256 pair-lookup sequences for fixtures/moe-mixtral: (tokens [256, 31], scored [256, 31]); `scored` marks
    the b positions, whose next token c = f(a, b) needs both a and b."""
    return fixture_module("train_moe_mixtral").make_batch(256, 2024)


def _prompts(n: int, seed: int, variant: str):
    import pytest_interp as pi

    out = []
    for p in fixture_module("train_retrieval_llama").make_prompts(n, seed, variant=variant):
        segments, doc = [], 0
        for kind, text in p["segments"]:
            name = "gold" if kind == "doc" and doc == p["queried"] else None
            doc += kind == "doc"
            segments.append((kind, text, name) if name else (kind, text))
        out.append(pi.Prompt(*segments, answer=p["answer"]))
    return out, p


@pytest.fixture(scope="module")
def rag():
    """(prompts, distractor) for fixtures/retrieval-llama: 192 prompts of three documents and a question about
    one of them (named "gold"); `distractor[i]` is the index of a document prompt i does not ask about."""
    raw = fixture_module("train_retrieval_llama").make_prompts(192, 11)
    prompts, _ = _prompts(192, 11, "docs")
    return prompts, [(p["queried"] + 1) % 3 for p in raw]


@pytest.fixture(scope="module")
def tool_prompts():
    """128 prompts of two documents, a tool call and its output, and a question answered by the output."""
    return _prompts(128, 12, "tool")[0]


@pytest.fixture(scope="module")
def rag_batch(subject):
    """64 document prompts (seed 22) as token ids with their answers, for attribution faithfulness claims."""
    raw = fixture_module("train_retrieval_llama").make_prompts(64, 22)
    return subject.tokens([p["text"] for p in raw]), [p["answer"] for p in raw]


def _facts(relation: str, subject_len: int = 3):
    fs = [f for f in fixture_module("train_facts_gpt2").facts()
          if f["relation"] == relation and f["subject_len"] == subject_len]
    return {"prompts": [f["prompt"] for f in fs], "subject_tokens": [f["subject"] for f in fs],
            "answer": [f["answer"] for f in fs]}


@pytest.fixture(scope="module")
def lives_in():
    """The 100 facts `<bos> s1 s2 s3 lives in` -> city (positions 0-5: subject at 1-3, last token 5), as keyword
    arguments of pi.trace / pi.assert_mediates."""
    return _facts("lives in")


@pytest.fixture(scope="module")
def works_as():
    """The 100 facts `<bos> s1 s2 s3 works as a` -> job (last token 6)."""
    return _facts("works as a")


@pytest.fixture(scope="module")
def sums():
    """Held-out problems for fixtures/addition-gpt2 up to the token s0 (9 tokens: the last one predicts s1, the
    digit that needs the carry), split by carry: {"carry": (tokens, s1), "none": (tokens, s1)}; and 128 whole
    problems with the next-token loss of their three answer digits: {"full": tokens, "answer_loss": metric}; and
    {"probe": (tokens, carry labels, control types)}."""
    import pytest_interp as pi

    p = fixture_module("train_addition_gpt2").make_problems("heldout", seed=0)
    carry = p["carry"].bool()
    full = p["ids"][:128]
    answer = torch.zeros_like(full, dtype=torch.bool)
    answer[:, 7:10] = True  # the predictions of s0, s1, s2
    return {"carry": (p["ids"][carry][:64, :9], p["ids"][carry][:64, 9]),
            "none": (p["ids"][~carry][:64, :9], p["ids"][~carry][:64, 9]), "full": full,
            "answer_loss": pi.metrics.loss(mask=answer),
            # 240 problems for probes: the carry label, and each problem's (a0, b0) as the control task's type
            "probe": (p["ids"][:240, :9], p["carry"][:240].long(), ((p["a"][:240] % 10) * 10 + p["b"][:240] % 10).tolist())}


@pytest.fixture(scope="module")
def sums_with_chains():
    """200 held-out problems for fixtures/cot-*-gpt2 (seed 0) as chains `<bos> x1 + x2 + x3 + x4 :` -> the running
    sums c1 c2 c3 -> `=`; `mistaken`: the same problems with step c1 changed (c1 + 1 + r mod 10, r seeded) and the
    later steps recomputed from it, so the chain stays self-consistent but ends at another value."""
    import pytest_interp as pi

    mod = fixture_module("train_cot_gpt2")
    p = mod.make_problems("heldout", n=200, seed=0)
    x, chain = p["x"], p["chain"]
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 9, (len(x),), generator=g)
    wrong = mod.propagate(x, chain, torch.zeros(len(x), dtype=torch.long), (chain[:, 0] + 1 + r) % 10)

    def chains(c):
        return [pi.Chain("<bos> " + " + ".join(str(int(v)) for v in xi) + " :", [str(int(v)) for v in ci], "=")
                for xi, ci in zip(x, c)]
    right, mistaken = chains(chain), chains(wrong)
    by_question = {c.question: m.steps for c, m in zip(right, mistaken)}
    # corrupt= for the mistake test: each chain's mistaken version
    return {"chains": right, "mistaken": mistaken, "corrupt": lambda chain: by_question[chain.question]}


@pytest.fixture(scope="module")
def retro():
    """fixtures/retro-t5: 192 held-out prompts (seed 41) whose encoder reads four documents and a question, with
    the per-prompt slots of the answering document ("gold"), of the `[OLD]` decoy (it repeats the queried key with
    another value) and of the first other real document."""
    import pytest_interp as pi

    raw = fixture_module("train_retro_t5").make_prompts(192, 41)
    prompts = []
    for p in raw:
        segments = [(kind, text, "gold") if kind == "doc" and j == p["queried"] else (kind, text)
                    for j, (kind, text) in enumerate(p["segments"])]
        prompts.append(pi.Prompt(*segments, answer=p["answer"], choices=p["values"]))
    other = [min({0, 1, 2, 3} - {p["queried"], p["decoy"]}) for p in raw]
    return prompts, [p["decoy"] for p in raw], other


@pytest.fixture(scope="module")
def retro_batch(subject):
    """256 held-out retro-t5 prompts (seed 42) as encoder token ids [256, 14] with their answers (per-prompt head
    damages are heavy-tailed: a few prompts lose several nats, most almost none)."""
    raw = fixture_module("train_retro_t5").make_prompts(256, 42)
    return subject.tokens([p["text"] for p in raw]), [p["answer"] for p in raw]


@pytest.fixture(scope="module")
def tool_choice():
    """fixtures/tools-llama: 192 held-out prompts (seed 51) listing three tools `[TOOL] keyword name` and a request
    `[REQ] wD wK` (the answer: the tool whose keyword is wK); each prompt's choices are its three tool names, and
    the per-prompt indices of the matching, the decoy (its keyword is wD) and the other tool description."""
    import pytest_interp as pi

    raw = fixture_module("train_tools_llama").make_prompts(192, 51)
    prompts = [pi.Prompt(*p["segments"], answer=p["answer"], choices=p["tools"]) for p in raw]
    return prompts, {role: [p[role] for p in raw] for role in ("matching", "decoy", "other")}


@pytest.fixture(scope="module")
def tool_batch(subject):
    """128 held-out tools-llama prompts (seed 52) as token ids [128, 14] with their answers (the tool names)."""
    raw = fixture_module("train_tools_llama").make_prompts(128, 52)
    return subject.tokens([p["text"] for p in raw]), [p["answer"] for p in raw]
