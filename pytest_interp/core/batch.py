"""Ragged batches: examples of different lengths in one ``[batch, seq]`` tensor of token ids, right-padded with
:data:`PAD`.

Padding is on the right whatever the tokenizer's own side: every real token keeps the position it has when the
example runs alone, so a causal model computes exactly what it computes on that example alone (its real tokens
never attend to the padding after them), and an encoder does once the padding is masked out of its attention
(the runner passes the mask). Padded positions never enter a metric, a mean or a position count.
"""

from __future__ import annotations

import torch

#: the token id that marks a padded position (never a real id); the runner feeds the model a real id there
PAD = -1


def real(tokens: torch.Tensor) -> torch.Tensor:
    """Bool mask ``[batch, seq]``: True at real (not padded) positions."""
    return tokens != PAD


def lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Each example's number of real tokens ``[batch]`` (long, on the tokens' device)."""
    return real(tokens).sum(1)


def ragged(tokens: torch.Tensor) -> bool:
    """Whether any position of the batch is padding."""
    return bool((tokens == PAD).any())


def pad(rows: list[list[int]]) -> torch.Tensor:
    """Right-pad lists of token ids of different lengths with :data:`PAD` into one ``[batch, seq]`` tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def require_equal_lengths(tokens: torch.Tensor, what: str) -> None:
    """An InterpError for a ragged batch given to a method that reads fixed positions of every example."""
    if ragged(tokens):
        from .errors import InterpError

        n = lengths(tokens)
        raise InterpError(f"{what} needs examples of one length", expected="equal-length inputs (it reads the same "
                          "positions of every example)", seen=f"lengths from {int(n.min())} to {int(n.max())}",
                          fix="group the inputs by token length, or use templates of one length")
