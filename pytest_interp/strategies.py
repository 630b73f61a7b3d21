"""Hypothesis strategies for claim inputs: repeated-segment token batches and templated prompts.

Each example hypothesis draws is one batch, and each batch costs the claim's model runs (a clean run plus
one per intervention). Keep ``max_examples`` small (``@settings(max_examples=5, deadline=None)``) and the
batches large enough for a confidence interval: a claim is decided on the batch, not on one sequence.
A failing example shrinks towards shorter segments, earlier offsets and smaller token ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from .core.data import RepeatedTokens, from_segments


@st.composite
def repeated_sequence(draw: Any, vocab_size: int, *, length: int, segment: tuple[int, int] = (4, 20),
                      bos: int | None = 0, low: int = 1) -> tuple[list[int], int, int, int]:
    """One sequence with a segment repeated at a random offset: ``(tokens, p, q, S)``.

    Tokens are drawn from ``low .. vocab_size-1``; position 0 holds ``bos`` unless it is None.
    """
    head = 0 if bos is None else 1
    lo, hi = segment
    hi = min(hi, (length - head) // 2)
    s = draw(st.integers(min(lo, hi), hi))
    p = draw(st.integers(head, length - 2 * s))
    q = draw(st.integers(p + s, length - s))
    toks = draw(st.lists(st.integers(low, vocab_size - 1), min_size=length, max_size=length))
    if bos is not None:
        toks[0] = bos
    toks[q:q + s] = toks[p:p + s]
    return toks, p, q, s


def repeated_batches(vocab_size: int, *, length: int, n: int = 32, segment: tuple[int, int] = (4, 20),
                     bos: int | None = 0, low: int = 1) -> st.SearchStrategy[RepeatedTokens]:
    """Batches of ``n`` repeated-segment sequences (a :class:`pytest_interp.RepeatedTokens`), for ``@given``.

    Hypothesis draws each sequence's segment length and placement, and one seed for the random tokens, so an
    example stays small and a failing one shrinks towards short segments at early offsets.
    """
    head = 0 if bos is None else 1
    lo, hi = segment
    hi = min(hi, (length - head) // 2)

    @st.composite
    def placement(draw: Any) -> tuple[int, int, int]:
        s = draw(st.integers(min(lo, hi), hi))
        p = draw(st.integers(head, length - 2 * s))
        q = draw(st.integers(p + s, length - s))
        return p, q, s

    def build(args: tuple[int, list[tuple[int, int, int]]]) -> RepeatedTokens:
        seed, places = args
        rng = np.random.default_rng(seed)
        seqs = []
        for p, q, s in places:
            toks = rng.integers(low, vocab_size, size=length).tolist()
            if bos is not None:
                toks[0] = bos
            toks[q:q + s] = toks[p:p + s]
            seqs.append(toks)
        return from_segments(seqs, [p for p, _, _ in places], [q for _, q, _ in places], [s for *_, s in places])

    return st.tuples(st.integers(0, 2**32 - 1), st.lists(placement(), min_size=n, max_size=n)).map(build)


def templated_prompts(template: str, **fillers: list[str]) -> st.SearchStrategy[str]:
    """Prompts made by filling ``template`` (``str.format`` fields) with values drawn from ``fillers``.

    >>> s = templated_prompts("When {a} and {b} went to the store, {b} gave a drink to", a=["Mary"], b=["John"])
    >>> s.example()
    'When Mary and John went to the store, John gave a drink to'
    """
    return st.fixed_dictionaries({k: st.sampled_from(v) for k, v in fillers.items()}).map(
        lambda d: template.format(**d))


def prompt_batches(template: str, *, n: int, **fillers: list[str]) -> st.SearchStrategy[list[str]]:
    """Batches of ``n`` templated prompts (fill values drawn per prompt)."""
    return st.lists(templated_prompts(template, **fillers), min_size=n, max_size=n)


__all__ = ["prompt_batches", "repeated_batches", "repeated_sequence", "templated_prompts"]
