"""Representations: pooled final hidden states of a batch (sentence embeddings), read on the clean run."""

from __future__ import annotations

from typing import Any

import torch

from ..core.batch import real
from ..core.metrics import POOLS, pool
from ..core.errors import InterpError
from ..engine.runner import chunks, logits
from ..model.checks import as_subject
from ..model.subject import Subject


def embeddings(subject: Subject, inputs: Any, *, pool_by: str = "mean", normalize: bool = False) -> torch.Tensor:
    """One vector per example ``[n, d]`` (float32, CPU): its final hidden states pooled over its real tokens
    (``pool_by``: ``"mean"`` as sentence-transformers do, ``"first"`` ([CLS]) or ``"last"``), optionally
    L2-normalised. Use them as ``pi.metrics.cosine(reference=...)``."""
    subject = as_subject(subject)
    if pool_by not in POOLS:
        raise InterpError(f"embeddings pool_by {pool_by!r} is not supported", expected=" / ".join(POOLS),
                          seen=repr(pool_by), fix="pool_by='mean', 'first' or 'last'")
    tokens = subject.tokens(inputs)
    out = []
    for rows in chunks(tokens.shape[0]):
        chunk = tokens[rows.to(tokens.device)]
        hidden = logits(subject, chunk, what="clean run", kind="hidden")
        out.append(pool(hidden, real(chunk), pool_by).cpu())
    vectors = torch.cat(out)
    return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors
