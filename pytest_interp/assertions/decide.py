"""The decision rule: a claim's threshold checked, its record written, and a rejected claim raised as ClaimFailed.

Every claim family decides through :func:`decide`, so every rejected claim reads the same: the claim, sites,
intervention, metric, effect with its CI, n, p, threshold, rule, alpha and seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import records as _records
from ..core.errors import ClaimFailed, InterpError
from ..core.sites import describe
from ..core.stats import MIN_N, Effect


def threshold(name: str, value: Any, *, positive: bool = False) -> float:
    """A claim's threshold ``value`` as a float, or an InterpError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InterpError(f"{name} must be a number", expected="a finite float", seen=repr(value),
                          fix=f"pass {name}=<effect size>")
    if positive and value <= 0:
        raise InterpError(f"{name} must be positive", expected="> 0", seen=repr(value),
                          fix=f"an equivalence margin is a positive {name}")
    return float(value)


def decide(claim: str, effect: Effect, passed: bool, rule: str, threshold: str, extra: list[str] | None = None,
            kind: str = "", bounds: tuple[float, ...] = (), deciding: str = "") -> Effect:
    """The one decision every claim ends in: record the claim for the session report, then return ``effect`` if
    it ``passed`` or raise :class:`ClaimFailed` with a message of the same shape for every claim kind.
    ``deciding``: for a compound claim, the other numbers that decided it (shown beside the effect in the
    report)."""
    __tracebackhide__ = True
    if effect.n < MIN_N:
        raise InterpError(f"too few examples to decide the claim: {claim}", expected=f"at least {MIN_N} examples "
                          f"(below that a {round(100 * (1 - effect.alpha), 2):g}% interval does not hold its level)",
                          seen=f"n = {effect.n}", fix=f"pass a batch of {MIN_N} or more examples")
    if not (np.isfinite(effect.mean) and np.isfinite(effect.ci[0]) and np.isfinite(effect.ci[1])):
        raise InterpError(f"the effect of the claim is not finite: {claim}", expected="a finite effect and interval",
                          seen=f"effect {effect.mean}, CI {effect.ci}", fix="check the metric and the inputs")
    if not isinstance(effect.model, dict) or "fingerprint" not in effect.model:
        raise InterpError(f"the effect of the claim names no model: {claim}", expected="an Effect from an "
                          "experiment on a loaded model (pi.load)", seen=f"model={effect.model!r}"[:80],
                          fix="decide claims on effects the package's experiments return")
    lvl = round(100 * (1 - effect.alpha), 2)
    record = {"claim": claim, "kind": kind, "sites": [str(s) for s in effect.sites],
              "intervention": effect.intervention, "metric": effect.metric, "method": effect.method,
              "effect": effect.mean, "ci": list(effect.ci), "n": effect.n, "p_value": effect.p_value,
              "alpha": effect.alpha, "seed": effect.seed, "threshold": threshold, "rule": rule,
              "passed": passed, "bounds": list(bounds), "deciding": deciding,
              "decoding": effect.details.get("decoding"),
              "values": [float(v) for v in np.asarray(effect.values, dtype=float).ravel()], "model": effect.model, "n_boot": effect.n_boot,
              "details": {k: v for k, v in effect.details.items() if isinstance(v, (int, float, str))}}
    _records.add(record)
    if passed:
        return effect
    lines = [f"claim failed: {claim}",
             f"  sites:        {describe(tuple(effect.sites))}",
             f"  intervention: {effect.intervention}",
             f"  metric:       {effect.metric} ({'higher' if effect.higher_is_better else 'lower'} is better)",
             f"  effect:       {effect.mean:.4g}  {lvl:g}% CI [{effect.ci[0]:.4g}, {effect.ci[1]:.4g}]"
             f"  n={effect.n}  p={effect.p_value:.3g}",
             f"  threshold:    {threshold}",
             f"  rule:         {rule}",
             f"  alpha={effect.alpha}  seed={effect.seed}  interval: {effect.ci_method}  bootstrap resamples={effect.n_boot}"]
    for k, v in effect.details.items():
        if isinstance(v, float):
            lines.append(f"  {k}: {v:.4g}")
    lines += extra or []
    raise ClaimFailed("\n".join(lines), record, effect)
