"""Statistics: confidence intervals that hold their level at the sizes claims run, paired sign-flip permutation
tests, family-wise (Holm) and false-discovery (Benjamini-Hochberg) control, and the Effect record.

Rules: a mean's interval is the studentized bootstrap (bootstrap-t) of the per-example values. Measured on the
induction fixture (benchmarks/calibration.py, 1,000 trials per n): from n = 16 every head's interval covers at
94.7% or more, no one-sided miss exceeds 3.5%, and an equivalence claim at its boundary passes 3.8% / 1.7% of the
time at n = 16 / 32 (Student's t: 5.2% / 3.4%; nominal 2.5%, tolerance 1.5%). Resamples nearly without spread
make it explode, so above :data:`DEGENERATE_SHARE` of them the interval is Student's t. A ratio of means
(patching, tracing) keeps its seeded bootstrap of the resampled ratio. A value or a replicate that is not finite
is an InterpError naming the examples, never a dropped number. Claims refuse to decide on fewer than
:data:`MIN_N` examples. Resampling draws are seeded and shared by every site of a sweep (the same n, count and
seed give the same draws), so a sweep's statistics are a few matrix products.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import InterpError
from .sites import describe

_BLOCK = 2_000_000  # resampled values held at once
#: the fewest examples a claim decides on: below it the interval's level is not what it says (measured on the
#: induction fixture, benchmarks/calibration.py: at n = 8 a one-sided miss reaches 5% against a nominal 2.5%)
MIN_N = 16


def check_stats(*, alpha: Any, seed: Any, n_boot: Any = 1, n_perm: Any = 1) -> None:
    """InterpError unless alpha is in (0, 1), the seed a non-negative int and the resampling counts positive ints."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InterpError("alpha must be between 0 and 1", expected="a float in (0, 1), e.g. 0.05 for 95% intervals",
                          seen=repr(alpha), fix="pass alpha=0.05 (or set --interp-alpha)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InterpError("seed must be a non-negative int", expected="an int >= 0", seen=repr(seed),
                          fix="pass seed=0 (or set --interp-seed)")
    for name, value in (("n_boot", n_boot), ("n_perm", n_perm)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InterpError(f"{name} must be a positive int", expected="an int >= 1", seen=repr(value),
                              fix=f"raise {name} (the default is 10000)")


def check_finite(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as float64, or an InterpError naming the examples whose value is NaN or inf."""
    v = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(1)) if v.size else np.array([], dtype=int)
    if bad.size:
        shown = ", ".join(map(str, bad[:10].tolist())) + (", ..." if bad.size > 10 else "")
        raise InterpError(f"the {what} is not finite for {bad.size} of {len(v)} example(s)",
                          expected="a finite number per example", seen=f"NaN/inf at example(s) {shown}",
                          fix="check the metric on those inputs (a log of zero? a division by zero?) or drop them")
    return v


def t_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """Student's t interval for the mean of ``values`` (two-sided, level 1 - alpha)."""
    v = _at_least_two(values)
    n = v.size
    m = float(v.mean())
    se = float(v.std(ddof=1)) / math.sqrt(n)
    q = _t_quantile(1 - alpha / 2, n - 1)
    return (m - q * se, m + q * se)


def wilson_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """Wilson score interval (two-sided, level 1 - alpha) for a rate: the mean of ``values`` in [0, 1] over ``n``
    units (one value per unit: 0/1, or a unit's own fraction, counted as that many successes). Holds its level
    near 0 and 1, where a bootstrap of 0/1 values collapses to a point."""
    v = _at_least_two(values)
    if bool(((v < 0) | (v > 1)).any()):
        raise InterpError("a rate interval needs values in [0, 1]", expected="per-unit rates", seen=f"min {v.min()}, "
                          f"max {v.max()}", fix="use the mean interval for unbounded values")
    n = v.size
    p = float(v.mean())
    z = _normal_quantile(1 - alpha / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def t_p_value(values: np.ndarray, bound: float, *, greater: bool) -> float:
    """One-sided p-value of Student's t test of H0: mean <= bound (``greater``) or mean >= bound."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    se = float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    diff = float(v.mean()) - bound
    if se == 0.0:
        return 0.0 if (diff > 0 if greater else diff < 0) else 1.0
    t = diff / se if greater else -diff / se
    return float(_t_sf(t, n - 1))


#: the largest share of bootstrap resamples nearly without spread (below :data:`FLAT` of the sample's) that the
#: studentized bootstrap accepts; above it (very discrete values, or one example carrying the whole effect)
#: intervals and p-values are Student's t, since dividing by a resample's near-zero spread makes the interval
#: explode
DEGENERATE_SHARE = 0.01
FLAT = 0.01


def _at_least_two(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise InterpError("an interval needs at least 2 examples", expected=f">= 2 (claims need >= {MIN_N})",
                          seen=f"n = {v.size}", fix="pass more examples")
    return v


_MEMO: dict[tuple[str, int, int, int], list[np.ndarray]] = {}
_MEMO_CELLS = 4_000_000  # resampling draws kept for reuse, in all (32 MB); the sites of a sweep share them


def _draws(kind: str, n: int, count: int, seed: int) -> list[np.ndarray]:
    """Blocks of a seeded resampling matrix ``[count, n]``: bootstrap counts (how often each example is drawn)
    or sign flips. The same (n, count, seed) gives the same draws, so they are memoised for the sites of a sweep."""
    key = (kind, n, count, seed)
    if key in _MEMO:
        return _MEMO[key]
    rng = np.random.default_rng(seed)
    per = max(1, _BLOCK // max(n, 1))
    blocks, done = [], 0
    while done < count:
        b = min(per, count - done)
        if kind == "boot":
            idx = rng.integers(0, n, size=(b, n))
            c = np.zeros((b, n))
            np.add.at(c, (np.repeat(np.arange(b), n), idx.ravel()), 1.0)
            blocks.append(c)
        else:
            blocks.append(rng.choice((-1.0, 1.0), size=(b, n)))
        done += b
    if count * n <= _MEMO_CELLS:
        while _MEMO and sum(b.size for v in _MEMO.values() for b in v) + count * n > _MEMO_CELLS:
            _MEMO.pop(next(iter(_MEMO)))  # the oldest first
        _MEMO[key] = blocks
    return blocks


def studentized(values: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray | None:
    """The sorted bootstrap distribution of the studentized mean ``(mean* - mean) / se*`` (examples resampled
    with replacement, seeded), or None when more than :data:`DEGENERATE_SHARE` of the resamples are nearly
    without spread (``se*`` below :data:`FLAT` times the sample's).
    """
    v = _at_least_two(values)
    n = v.size
    m = float(v.mean())
    c = v - m  # centred: the resampled variance E*[c^2] - (E*[c])^2 keeps its precision
    tol = 1e-12 * max(1.0, float(np.abs(v).max()))
    flat_below = FLAT * float(v.std(ddof=1)) / math.sqrt(n)
    out, flat = [], 0
    for counts in _draws("boot", n, n_boot, seed):
        d = counts @ c / n
        var = np.maximum(counts @ (c * c) / n - d * d, 0.0) * n / (n - 1)
        se = np.sqrt(var / n)
        none = se <= tol
        flat += int((se <= flat_below).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(none, np.where(np.abs(d) <= tol, 0.0, np.sign(d) * np.inf), d / np.where(none, 1.0, se))
        out.append(t)
    if flat > DEGENERATE_SHARE * n_boot:
        return None
    return np.sort(np.concatenate(out))


def mean_interval(values: np.ndarray, alpha: float, *, n_boot: int, seed: int) -> tuple[tuple[float, float], str]:
    """Two-sided (1 - alpha) interval for the mean of ``values`` and the method that gave it.

    The studentized (bootstrap-t) interval ``[m - t*(1 - alpha/2) se, m - t*(alpha/2) se]``: second-order
    accurate, so it follows the skew of per-example values that Student's t ignores. Values with no spread give
    ``[m, m]``; resamples too often without spread (very discrete values) give Student's t.
    """
    v = _at_least_two(values)
    m = float(v.mean())
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    if se == 0.0:
        return (m, m), "bootstrap-t"
    t = studentized(v, n_boot=n_boot, seed=seed)
    if t is None:
        return t_interval(v, alpha), "t (bootstrap-t resamples without spread)"
    lo_q, hi_q = np.quantile(t, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return (m - float(hi_q) * se, m - float(lo_q) * se), "bootstrap-t"


def mean_p_value(values: np.ndarray, bound: float, *, greater: bool, n_boot: int, seed: int) -> float:
    """One-sided p-value of H0: mean <= bound (``greater``) or mean >= bound, by the same studentized bootstrap
    as :func:`mean_interval` (below alpha/2, up to one resample, exactly when that interval excludes
    ``bound``); Student's t where the interval falls back to it."""
    v = _at_least_two(values)
    m = float(v.mean())
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    t = studentized(v, n_boot=n_boot, seed=seed) if se > 0 else None
    if t is None:
        return t_p_value(v, bound, greater=greater)
    obs = (m - bound) / se
    # the interval's bound m - t*(q) se lies beyond `bound` exactly when t*(q) is on the far side of obs
    hits = int(np.sum(t >= obs)) if greater else int(np.sum(t <= obs))
    return (hits + 1) / (t.size + 1)


def _t_quantile(p: float, df: int) -> float:
    from scipy import stats as _st

    return float(_st.t.ppf(p, df))


def _t_sf(t: float, df: int) -> float:
    from scipy import stats as _st

    return float(_st.t.sf(t, df))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values; false-discovery control under independence or positive
    dependence)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    out = [0.0] * m
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, p_values[i] * m / rank)
        out[i] = min(1.0, running)
    return out


def bootstrap_ci(arrays: tuple[np.ndarray, ...], stat: Callable[..., np.ndarray], *, alpha: float,
                 n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(*means)``, resampling examples (rows shared across ``arrays``).

    ``stat`` receives, for each array, the vector of its resampled means (one per bootstrap replicate) and
    returns the statistic per replicate.
    """
    n = len(arrays[0])
    check_stats(alpha=alpha, seed=seed, n_boot=n_boot)
    for a in arrays:
        check_finite(a, "per-example value")
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
    bad = int((~np.isfinite(r)).sum())
    if bad:
        raise InterpError(f"the statistic is not finite in {bad} of {n_boot} bootstrap resamples",
                          expected="a finite statistic in every resample",
                          seen="NaN/inf (a ratio whose denominator is zero in some resamples?)",
                          fix="use more examples, or a clean-corrupt pair with a larger gap")
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def sign_flip_p(d: np.ndarray, *, n_perm: int, seed: int) -> float:
    """Two-sided paired permutation p-value of mean(d) = 0, flipping signs (exact for n <= 12)."""
    d = check_finite(d, "per-example difference")
    n = d.size
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max(initial=0.0)))
    if n <= 12:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs(signs @ d / n)
        return float(np.mean(stats >= observed - tol))
    count = sum(int(np.sum(np.abs(signs @ d / n) >= observed - tol)) for signs in _draws("flip", n, n_perm, seed))
    return (count + 1) / (n_perm + 1)


@dataclass(frozen=True, eq=False)
class Effect:
    """The measured effect of an intervention, with its uncertainty and what was done.

    Attributes:
        mean: the effect (ablate: mean damage per example, positive = worse behaviour; patch: restored
            fraction of the mean clean-corrupt gap).
        ci: two-sided (1 - alpha) confidence interval of ``mean`` (``ci_method`` says how).
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
    ci_method: str = "bootstrap"

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


def mean_effect(values: np.ndarray, *, alpha: float, n_boot: int, n_perm: int, seed: int, estimate: bool = False,
                **what: Any) -> Effect:
    """An Effect whose statistic is the mean of per-example ``values``, with its studentized bootstrap
    interval (:func:`mean_interval`) and sign-flip p-value; Student's t interval and test for an ``estimate``
    that ranks and never decides a claim (attribution screens: thousands of sites, where resampling would cost
    more than the screen)."""
    check_stats(alpha=alpha, seed=seed, n_boot=n_boot, n_perm=n_perm)
    v = check_finite(values, f"{what.get('metric') or 'per-example'} value")
    if estimate:  # Student's t interval and two-sided t test
        ci, how = t_interval(v, alpha), "t"
        p = min(1.0, 2 * min(t_p_value(v, 0.0, greater=True), t_p_value(v, 0.0, greater=False)))
    else:
        ci, how = mean_interval(v, alpha, n_boot=n_boot, seed=seed)
        p = sign_flip_p(v, n_perm=n_perm, seed=seed)
    return Effect(mean=float(v.mean()), ci=ci, n=int(v.size), p_value=p,
                  values=v, alpha=alpha, n_boot=n_boot, seed=seed, ci_method=how, **what)
