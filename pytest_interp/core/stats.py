"""Statistics: seeded bootstrap confidence intervals, paired sign-flip permutation tests, and the Effect record."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .sites import describe

_BLOCK = 2_000_000  # resampled values held at once


def bootstrap_ci(arrays: tuple[np.ndarray, ...], stat: Callable[..., np.ndarray], *, alpha: float,
                 n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(*means)``, resampling examples (rows shared across ``arrays``).

    ``stat`` receives, for each array, the vector of its resampled means (one per bootstrap replicate) and
    returns the statistic per replicate.
    """
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    per = max(1, _BLOCK // max(n, 1))
    reps = []
    done = 0
    while done < n_boot:
        b = min(per, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        reps.append(stat(*(a[idx].mean(1) for a in arrays)))
        done += b
    r = np.concatenate(reps)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def sign_flip_p(d: np.ndarray, *, n_perm: int, seed: int) -> float:
    """Two-sided paired permutation p-value of mean(d) = 0, flipping signs (exact for n <= 12)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max(initial=0.0)))
    if n <= 12:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs(signs @ d / n)
        return float(np.mean(stats >= observed - tol))
    rng = np.random.default_rng(seed)
    count = 0
    per = max(1, _BLOCK // n)
    done = 0
    while done < n_perm:
        b = min(per, n_perm - done)
        signs = rng.choice((-1.0, 1.0), size=(b, n))
        count += int(np.sum(np.abs(signs @ d / n) >= observed - tol))
        done += b
    return (count + 1) / (n_perm + 1)


@dataclass(frozen=True, eq=False)
class Effect:
    """The measured effect of an intervention, with its uncertainty and what was done.

    Attributes:
        mean: the effect (ablate: mean damage per example, positive = worse behaviour; patch: restored
            fraction of the mean clean-corrupt gap).
        ci: two-sided (1 - alpha) seeded bootstrap confidence interval of ``mean``.
        n: number of examples.
        p_value: paired sign-flip permutation p-value against "no effect".
        values: per-example values (numpy); for patch, each example's restoration over the mean gap.
        sites, method, intervention, metric, seed, alpha, n_boot: what was done.
        details: run summaries (clean/intervened means, gap, ...).
        model: the subject's identity (fingerprint, architecture, sizes, dtype, device, versions).
    """

    mean: float
    ci: tuple[float, float]
    n: int
    p_value: float
    values: np.ndarray = field(repr=False)
    sites: tuple[Any, ...] = ()
    method: str = ""
    intervention: str = ""
    metric: str = ""
    higher_is_better: bool = True
    seed: int = 0
    alpha: float = 0.05
    n_boot: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def site(self) -> Any:
        """The site, when the effect is of a single site."""
        return self.sites[0] if len(self.sites) == 1 else self.sites

    def describe(self) -> str:
        lvl = round(100 * (1 - self.alpha), 2)
        return (f"{self.mean:.4g} [{lvl:g}% CI {self.ci[0]:.4g}, {self.ci[1]:.4g}] "
                f"(n={self.n}, p={self.p_value:.3g})")

    def __str__(self) -> str:
        return f"{self.method} {describe(tuple(self.sites))} on {self.metric}: {self.describe()}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (without per-example values)."""
        return {"mean": self.mean, "ci": list(self.ci), "n": self.n, "p_value": self.p_value,
                "sites": [str(s) for s in self.sites], "method": self.method,
                "intervention": self.intervention, "metric": self.metric, "seed": self.seed,
                "alpha": self.alpha, "n_boot": self.n_boot,
                "details": {k: v for k, v in self.details.items() if isinstance(v, (int, float, str))}}


def mean_effect(values: np.ndarray, *, alpha: float, n_boot: int, n_perm: int, seed: int,
                **what: Any) -> Effect:
    """An Effect whose statistic is the mean of per-example ``values``."""
    v = np.asarray(values, dtype=np.float64)
    ci = bootstrap_ci((v,), lambda m: m, alpha=alpha, n_boot=n_boot, seed=seed)
    return Effect(mean=float(v.mean()), ci=ci, n=int(v.size), p_value=sign_flip_p(v, n_perm=n_perm, seed=seed),
                  values=v, alpha=alpha, n_boot=n_boot, seed=seed, **what)
