"""Induction attention: per example, how much each head of a layer attends from a repeated token to the token after
its earlier occurrence (run-cached). Attention is visibility; the induction claim also ablates the head."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.cache import current, tensor_digest
from ..core.data import RepeatedTokens
from ..engine.runner import attentions
from ..model.checks import as_subject, one_stack
from ..model.subject import Subject


def induction_scores(subject: Subject, layer: int, data: RepeatedTokens) -> np.ndarray:
    """Per example, the mean attention of each head of ``layer`` from a repeated token to the token after its
    earlier occurrence: ``[n, heads]``."""
    def compute() -> torch.Tensor:
        subject_ = as_subject(subject)
        one_stack(subject_, "induction scores")
        att = attentions(subject_, subject_.tokens(data.tokens), [layer])[0]
        ex, q, k = data.induction_pairs()
        w = att[ex, :, q, k].cpu().double().numpy()  # [pairs, heads]
        ex_np = ex.cpu().numpy()
        n = len(data)
        sums = np.zeros((n, att.shape[1]))
        np.add.at(sums, ex_np, w)
        counts = np.bincount(ex_np, minlength=n)[:, None]
        return torch.as_tensor(sums / np.maximum(counts, 1))

    def parts() -> dict[str, Any]:
        return {"model": subject.fingerprint, "tokens": tensor_digest(data.tokens), "layer": layer,
                "scores": "induction attention", "pairs": tensor_digest(data.second_half),
                "offsets": tensor_digest(data.repeat_starts - data.starts), "attn": "eager"}

    return current().scores(parts, compute, rows=len(data)).numpy()
