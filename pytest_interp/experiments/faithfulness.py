"""How faithful an attribution is to what interventions say matters: its rank correlation with leave-one-token-out
effects, and the comprehensiveness and sufficiency of its top-k tokens, each an Effect with a CI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import InterpError
from ..core.stats import Effect, mean_effect
from ..model.subject import Subject
from .common import stat_args
from .explain import Attribution, _masked_logprob, _prepare, leave_one_token_out


def scores_of(attribution: Any, tokens: torch.Tensor) -> np.ndarray:
    a = attribution.scores if isinstance(attribution, Attribution) else attribution
    try:
        arr = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    except (TypeError, ValueError):
        raise InterpError("the attribution is not numeric", expected="an Attribution or an array [batch, seq]",
                          seen=type(a).__name__, fix="pass pi.integrated_gradients(...) or a float array") from None
    if arr.shape != tuple(tokens.shape):
        raise InterpError("the attribution's shape does not match the inputs", expected=f"[batch, seq] = "
                          f"{list(tokens.shape)}", seen=str(list(arr.shape)),
                          fix="compute the attribution on the same inputs the faithfulness check uses")
    if not np.isfinite(arr).all():
        raise InterpError("the attribution has NaN/inf", expected="finite scores", seen="non-finite values",
                          fix="check how the attribution was computed")
    return arr


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, axis=1, kind="stable")
        r = np.empty_like(x)
        rows = np.arange(x.shape[0])[:, None]
        r[rows, order] = np.arange(x.shape[1])[None].astype(float)
        for i in range(x.shape[0]):  # average ranks of ties
            vals, inv, counts = np.unique(x[i], return_inverse=True, return_counts=True)
            if (counts > 1).any():
                sums = np.bincount(inv, weights=r[i])
                r[i] = (sums / counts)[inv]
        return r

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), 0.0)


@dataclass
class Faithfulness:
    """How well an attribution matches interventions on the same inputs.

    Attributes:
        rank: Effect of the per-example Spearman correlation between the attribution and the leave-one-token-out
            effects (mean and CI over examples).
        comprehensiveness: Effect of the answer log-prob drop when the top-``k`` attributed tokens are hidden.
        sufficiency: Effect of the drop when only the top-``k`` tokens are kept.
        k: how many tokens count as the top.
    """

    rank: Effect
    comprehensiveness: Effect
    sufficiency: Effect
    k: int
    reference: Attribution

    def __str__(self) -> str:
        return (f"rank correlation with leave-one-token-out {self.rank.describe()}\n"
                f"comprehensiveness (drop without top-{self.k}) {self.comprehensiveness.describe()}\n"
                f"sufficiency (drop with only top-{self.k}) {self.sufficiency.describe()}")


def faithfulness(subject: Subject, attribution: Any, *, inputs: Any, answer: Any, position: int = -1, k: int = 2,
                 keep: Any = None, reference: Attribution | None = None, alpha: float | None = None,
                 seed: int | None = None) -> Faithfulness:
    """Score ``attribution`` (an :class:`Attribution` or an array ``[batch, seq]``) against interventions on the
    same inputs: the rank correlation with leave-one-token-out effects, comprehensiveness and sufficiency of its
    top-``k`` tokens. ``keep`` (bool ``[batch, seq]``) marks tokens that are never removed (default: the first
    token, often a BOS that every head uses as a sink, and the predicting position itself; none of an
    encoder-decoder model's encoder tokens, as its decoder predicts)."""
    subject, tokens, ans = _prepare(subject, inputs, answer, position)
    scores = scores_of(attribution, tokens)
    n, t = tokens.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < t:
        raise InterpError("k must be a positive int below the sequence length", expected=f"1 <= k < {t}",
                          seen=repr(k), fix="e.g. k=2")
    fixed = torch.zeros(n, t, dtype=torch.bool)
    if keep is None:
        if not subject.encoder_decoder:  # an encoder-decoder model predicts in its decoder
            fixed[:, 0] = True
            fixed[:, position % t] = True
    else:
        fixed = torch.as_tensor(keep)
        if fixed.dtype != torch.bool or fixed.shape[-1:] != (t,) or fixed.dim() > 2:
            raise InterpError("keep must be a bool mask of the tokens never removed",
                              expected=f"bool [batch, {t}] or [{t}]", seen=f"{fixed.dtype} {list(fixed.shape)}",
                              fix="e.g. keep=tokens == bos_id")
        fixed = fixed.expand(n, t).clone()
    free = ~fixed
    if int(free.sum(1).min()) <= k:
        raise InterpError("too few removable tokens for top-k", expected=f"more than k={k} removable tokens",
                          seen=f"{int(free.sum(1).min())}", fix="lower k or keep fewer tokens fixed")
    ref = reference if reference is not None else leave_one_token_out(subject, tokens, ans, position=position)
    ref_scores = scores_of(ref, tokens)
    fr = free.numpy()
    cols = [np.flatnonzero(fr[i]) for i in range(n)]
    rho = np.array([_spearman_rows(scores[i:i + 1, c], ref_scores[i:i + 1, c])[0] for i, c in enumerate(cols)])
    top = torch.zeros(n, t, dtype=torch.bool)
    for i, c in enumerate(cols):
        order = c[np.argsort(-scores[i, c], kind="stable")[:k]]
        top[i, torch.as_tensor(order)] = True
    full = _masked_logprob(subject, tokens, torch.ones(n, t, dtype=torch.bool), ans, position)
    without = _masked_logprob(subject, tokens, ~top, ans, position)
    only = _masked_logprob(subject, tokens, top | fixed, ans, position)
    st = stat_args(alpha, seed)
    name = attribution.method if isinstance(attribution, Attribution) else "given attribution"
    common = dict(sites=(name,), higher_is_better=True, model=subject.identity(), **st)
    return Faithfulness(
        rank=mean_effect(rho, method="faithfulness", intervention="leave one token out (attention mask)",
                         metric="Spearman rank correlation", **common),
        comprehensiveness=mean_effect(full - without, method="comprehensiveness", intervention=f"hide top-{k}",
                                      metric="answer logprob drop", **common),
        sufficiency=mean_effect(full - only, method="sufficiency", intervention=f"keep only top-{k}",
                                metric="answer logprob drop", **common),
        k=k, reference=ref)
