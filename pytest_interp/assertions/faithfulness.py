"""Faithfulness claims: an attribution ranks tokens like leave-one-token-out does, or it does not."""

from __future__ import annotations

from typing import Any

from ..core.stats import Effect
from ..experiments.explain import Attribution
from ..experiments.faithfulness import faithfulness
from ..model.subject import Subject
from .decide import decide, threshold


def assert_faithful(subject: Subject, attribution: Any, *, inputs: Any, answer: Any, at_least: float,
                    position: int = -1, k: int = 2, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: the attribution ranks tokens like leave-one-token-out does: mean Spearman correlation >=
    ``at_least`` (lower CI bound)."""
    __tracebackhide__ = True
    return _faithful_claim(subject, attribution, inputs, answer, at_least, True, position, k, alpha, seed)


def assert_not_faithful(subject: Subject, attribution: Any, *, inputs: Any, answer: Any, below: float,
                        position: int = -1, k: int = 2, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: the attribution does NOT rank tokens like leave-one-token-out: mean Spearman correlation <
    ``below`` (upper CI bound)."""
    __tracebackhide__ = True
    return _faithful_claim(subject, attribution, inputs, answer, below, False, position, k, alpha, seed)


def _faithful_claim(subject: Subject, attribution: Any, inputs: Any, answer: Any, bound: float, positive: bool,
                    position: int, k: int, alpha: float | None, seed: int | None) -> Effect:
    __tracebackhide__ = True
    t = threshold("at_least" if positive else "below", bound)
    f = faithfulness(subject, attribution, inputs=inputs, answer=answer, position=position, k=k, alpha=alpha,
                     seed=seed)
    eff = f.rank
    eff.details.update(comprehensiveness=f.comprehensiveness.mean, sufficiency=f.sufficiency.mean,
                       **({"ig_max_abs_delta": attribution.details["max_abs_delta"]}
                          if isinstance(attribution, Attribution) and "max_abs_delta" in attribution.details else {}))
    extra = [f"  comprehensiveness (drop without top-{k}): {f.comprehensiveness.describe()}",
             f"  sufficiency (drop with only top-{k}):     {f.sufficiency.describe()}"]
    name = eff.sites[0]
    if positive:
        return decide(f"{name} is a faithful explanation (rank correlation >= {t:g})", eff, eff.ci[0] >= t,
                       "lower CI bound >= threshold", f"rho >= {t:g}", extra, kind="faithful", bounds=(t,))
    return decide(f"{name} is not a faithful explanation (rank correlation < {t:g})", eff, eff.ci[1] < t,
                   "upper CI bound < threshold", f"rho < {t:g}", extra, kind="not_faithful", bounds=(t,))
