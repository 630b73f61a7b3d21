"""Claim inputs: random token sequences with a repeated segment, built deterministically from a seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InterpError


@dataclass(frozen=True, eq=False)
class RepeatedTokens:
    """Random token sequences in which a segment occurs twice.

    Attributes:
        tokens: token ids ``[n, length]``.
        first_half: prediction mask ``[n, length]``: predictions made inside the first occurrence.
        second_half: prediction mask ``[n, length]``: predictions made at the second occurrence's positions
            ``q + i`` (i = 0 .. S-2), whose targets can be copied from the first occurrence (in-context).
        starts, repeat_starts, lengths: per example, first occurrence start ``p``, second occurrence start
            ``q`` and segment length ``S``.
    """

    tokens: torch.Tensor
    first_half: torch.Tensor
    second_half: torch.Tensor
    starts: torch.Tensor
    repeat_starts: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def induction_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(example, query position q+i, key position p+i+1) for every in-context prediction."""
        ex, qpos = self.second_half.nonzero(as_tuple=True)
        key = qpos - (self.repeat_starts[ex] - self.starts[ex]) + 1
        return ex, qpos, key


def _vocab(subject_or_vocab: Any) -> tuple[int, int | None, set[int]]:
    if isinstance(subject_or_vocab, int):
        return subject_or_vocab, None, set()
    config = getattr(subject_or_vocab, "config", None)
    if config is None:
        raise InterpError("repeated_tokens needs a Subject or a vocabulary size", expected="pi.load(...) or int",
                          seen=type(subject_or_vocab).__name__, fix="pass the subject")
    ids = [getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")]
    special = {int(s) for s in ids if isinstance(s, int)}
    bos = getattr(config, "bos_token_id", None)
    return int(config.vocab_size), (int(bos) if isinstance(bos, int) else None), special


def repeated_tokens(subject_or_vocab: Any, *, n: int = 128, length: int | None = None, seed: int = 0,
                    segment: int | tuple[int, int] = (4, 20), layout: str = "random",
                    bos: int | None | str = "auto") -> RepeatedTokens:
    """Random sequences with one segment repeated.

    Args:
        subject_or_vocab: a Subject (vocabulary, BOS and context length from its config) or a vocabulary size.
        n: number of sequences.
        length: tokens per sequence, BOS included (default: the model's context, at most 64).
        seed: seed of the draw; the same seed gives the same tokens.
        segment: segment length, or a (min, max) range drawn per sequence.
        layout: ``"random"`` places both occurrences at random, non-overlapping (the repeat offset varies);
            ``"halves"`` is BOS + A + A with A filling half the sequence.
        bos: BOS token id, ``None`` for none, ``"auto"`` for the model's.
    """
    vocab, model_bos, special = _vocab(subject_or_vocab)
    if bos == "auto":
        bos = model_bos
    if length is None:
        max_pos = getattr(getattr(subject_or_vocab, "config", None), "max_position_embeddings", None) or getattr(
            getattr(subject_or_vocab, "config", None), "n_positions", None) or 64
        length = min(int(max_pos), 64)
    if n < 1:
        raise InterpError("repeated_tokens needs n >= 1", expected="a positive count", seen=str(n),
                          fix="ask for at least one sequence")
    choices = np.array([i for i in range(vocab) if i not in special])
    if choices.size < 2:
        raise InterpError("vocabulary too small for random tokens", expected=">= 2 non-special tokens",
                          seen=str(choices.size), fix="use a larger vocabulary")
    head = 0 if bos is None else 1
    room = length - head
    rng = np.random.default_rng(seed)
    toks = choices[rng.integers(0, choices.size, size=(n, length))]
    if bos is not None:
        toks[:, 0] = bos
    starts, rstarts, lens = np.zeros(n, int), np.zeros(n, int), np.zeros(n, int)
    if layout == "halves":
        s = room // 2
        if s < 2:
            raise InterpError("sequence too short for two halves", expected=">= 5 tokens", seen=str(length),
                              fix="use a longer length")
        starts[:], rstarts[:], lens[:] = head, head + s, s
    elif layout == "random":
        lo, hi = (segment, segment) if isinstance(segment, int) else segment
        if lo < 2 or hi < lo or 2 * hi > room:
            raise InterpError("segment lengths do not fit", expected=f"2 <= min <= max, 2*max <= {room}",
                              seen=f"segment={segment}, length={length}", fix="shorten the segment or lengthen")
        lens = rng.integers(lo, hi + 1, size=n)
        for i in range(n):
            s = int(lens[i])
            p = int(rng.integers(head, length - 2 * s + 1))
            q = int(rng.integers(p + s, length - s + 1))
            starts[i], rstarts[i] = p, q
    else:
        raise InterpError(f"unknown layout {layout!r}", expected="'random' or 'halves'", seen=repr(layout),
                          fix="pick one of the two layouts")
    first = np.zeros((n, length), bool)
    second = np.zeros((n, length), bool)
    for i in range(n):
        p, q, s = starts[i], rstarts[i], lens[i]
        toks[i, q:q + s] = toks[i, p:p + s]
        first[i, p:p + s - 1] = True
        second[i, q:q + s - 1] = True
    return RepeatedTokens(torch.as_tensor(toks, dtype=torch.long), torch.as_tensor(first), torch.as_tensor(second),
                          torch.as_tensor(starts), torch.as_tensor(rstarts), torch.as_tensor(lens))


def from_segments(sequences: list[list[int]], starts: list[int], repeat_starts: list[int],
                  lengths: list[int]) -> RepeatedTokens:
    """Build a RepeatedTokens batch from equal-length sequences and their (p, q, S) segment placements."""
    if not sequences or len({len(s) for s in sequences}) != 1:
        raise InterpError("sequences must be a non-empty list of equal length",
                          expected="equal-length token lists", seen=f"{len(sequences)} sequences",
                          fix="draw sequences of one length")
    n, length = len(sequences), len(sequences[0])
    first = torch.zeros(n, length, dtype=torch.bool)
    second = torch.zeros(n, length, dtype=torch.bool)
    for i, (p, q, s) in enumerate(zip(starts, repeat_starts, lengths)):
        if sequences[i][q:q + s] != sequences[i][p:p + s]:
            raise InterpError(f"sequence {i} does not repeat its segment", expected="tokens[q:q+S] == tokens[p:p+S]",
                              seen=f"p={p} q={q} S={s}", fix="copy the segment before building the batch")
        first[i, p:p + s - 1] = True
        second[i, q:q + s - 1] = True
    return RepeatedTokens(torch.tensor(sequences, dtype=torch.long), first, second, torch.tensor(starts),
                          torch.tensor(repeat_starts), torch.tensor(lengths))
