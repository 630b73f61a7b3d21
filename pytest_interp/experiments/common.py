"""What every interventional experiment shares: argument checks, run-wide statistics settings, the run cache key
of a scored run, the clean run's scores, and the default intervention for a set of sites."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..core.cache import current as current_cache
from ..core.cache import site_key, tensor_digest
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.settings import settings
from ..core.sites import Site
from ..core.stats import check_stats
from ..engine.experts import resolve_how as moe_how
from ..engine.interventions import Intervention, Mean, check_how
from ..engine.runner import run
from ..model.subject import Subject


def as_metric(metric: Any) -> Metric:
    """``metric`` if it is a :class:`Metric`, else an InterpError saying how to make one."""
    if not isinstance(metric, Metric):
        raise InterpError("metric is not a pi.metrics.Metric", expected="e.g. pi.metrics.loss() or "
                          "pi.metrics.Metric(fn, higher_is_better=True)", seen=repr(metric)[:80],
                          fix="wrap a function with pi.metrics.Metric(fn, higher_is_better=...)")
    return metric


def decoding_details(metric: Metric) -> dict[str, Any]:
    """An Effect's details naming the decoding a generation metric used (none for single-pass metrics)."""
    d = getattr(metric, "decoding", None)
    return {} if d is None else {"decoding": d.describe()}


def stat_args(alpha: float | None, seed: int | None) -> dict[str, Any]:
    """The statistics settings of one experiment: its own ``alpha``/``seed``, else the run-wide ones."""
    s = settings()
    out = {"alpha": s.alpha if alpha is None else alpha, "seed": s.seed if seed is None else seed,
           "n_boot": s.n_boot, "n_perm": s.n_perm}
    check_stats(**out)
    return out


def run_parts(subject: Subject, tokens: torch.Tensor, metric: Metric, sites_t: tuple[Site, ...] = (),
              how: Intervention | None = None) -> Callable[[], dict[str, Any] | None]:
    """The run cache key's parts for scoring ``tokens`` with ``metric`` under ``how`` at ``sites_t``."""
    def parts() -> dict[str, Any] | None:
        mspec = metric.cache_spec()
        if mspec is None:
            return None
        spec = subject.adapter_spec
        return {"model": subject.fingerprint, "adapter": [spec.name, spec.layers, spec.attn_out, spec.mlp],
                "tokens": tensor_digest(tokens), "metric": mspec, "sites": [site_key(s) for s in sites_t],
                "intervention": how.spec() if how is not None else "clean",
                "dtype": subject.dtype_key, "device": str(subject.device),
                "batch_size": settings().batch_size, "attn": subject.attn_implementation}
    return parts


def cached_run(subject: Subject, tokens: torch.Tensor, metric: Metric, score: Any) -> torch.Tensor:
    """Per-example scores of the clean run, from the run cache when it has them."""
    return current_cache().scores(run_parts(subject, tokens, metric), lambda: run(subject, tokens, [], score),
                                  rows=tokens.shape[0])


def resolve_how(sites_t: tuple[Site, ...], how: Any) -> Intervention:
    """The intervention to apply at ``sites_t``: ``how`` checked, or the default for those sites (the mean over
    the inputs; removal after top-k for MoE experts)."""
    return moe_how(sites_t, None if how is None else check_how(how)) or Mean()


def combine_runs(how: Intervention, n: int, run_one: Callable[[int], Any]) -> Any:
    """The intervened scores of ``how`` on a batch of ``n``: the weighted sum of ``run_one(i)`` over its runs
    (:meth:`Intervention.weights`; one run for all but the size-corrected mean ablation). ``run_one`` may return
    a tensor or a list of tensors (one per site)."""
    total: Any = None
    for i, w in enumerate(how.weights(n)):
        got = run_one(i)
        if isinstance(got, list):
            total = [g * w for g in got] if total is None else [t + g * w for t, g in zip(total, got)]
        else:
            total = got * w if total is None else total + got * w
    return total


def to_np(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array on the CPU."""
    return t.detach().to("cpu", torch.float64).numpy()


