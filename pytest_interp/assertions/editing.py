"""Claims about knowledge editing: a fact can be rewritten at a site (efficacy and specificity, both at alpha:
an intersection-union test), and whether causal tracing predicts where a fact is best edited."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.sites import Site
from ..experiments.editing import Editing, Fact, Localisation, editing, localisation_vs_editing, rate_p_value
from .decide import decide, threshold


def _rate_threshold(name: str, value: Any) -> float:
    t = threshold(name, value)
    if not 0 <= t <= 1:
        from ..core.errors import InterpError
        raise InterpError(f"{name} is a rate", expected="a number in [0, 1]", seen=repr(value),
                          fix=f"e.g. {name}=0.8")
    return t


def assert_editable(subject: Any, site: Site, facts: list[Fact], *, sample: Any, efficacy: float,
                    specificity: float, generalisation: float | None = None, alpha: float | None = None,
                    seed: int | None = None, **kwargs: Any) -> Editing:
    """Claim: a rank-one edit at ``site`` rewrites each fact (the share of edited prompts answering the new answer
    has its Wilson interval's lower end >= ``efficacy``) without changing its neighbours (the share unchanged,
    lower end >= ``specificity``), and, if given, carries to paraphrases (>= ``generalisation``). Each fact is
    edited in its own copy of the model."""
    __tracebackhide__ = True
    t_e, t_s = _rate_threshold("efficacy", efficacy), _rate_threshold("specificity", specificity)
    t_g = None if generalisation is None else _rate_threshold("generalisation", generalisation)
    res = editing(subject, site, facts, sample=sample, alpha=alpha, seed=seed, **kwargs)
    parts = [("efficacy", res.efficacy, t_e), ("specificity", res.specificity, t_s)]
    if t_g is not None:
        if res.generalisation is None:
            from ..core.errors import InterpError
            raise InterpError("generalisation= needs paraphrases", expected="facts with paraphrases=[...]",
                              seen="no paraphrases", fix="give each fact paraphrase prompts, or drop generalisation=")
        parts.append(("generalisation", res.generalisation, t_g))
    failed = [(n, e, t) for n, e, t in parts if e.ci[0] < t]
    lines = [f"  {n:<14} {e.mean:.3f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}] (>= {t:g} needed)  "
             f"{'ok' if e.ci[0] >= t else 'FAILED'}" for n, e, t in parts]
    name, shown, t = failed[0] if failed else min(parts, key=lambda p: p[1].ci[0] - p[2])
    shown = dataclasses.replace(shown, p_value=rate_p_value(shown.values, t))
    deciding = "; ".join(f"{n} {e.mean:.2f} [{e.ci[0]:.2f}, {e.ci[1]:.2f}]" for n, e, _ in parts)
    decide(f"a rank-one edit at {site} rewrites a fact ({len(facts)} facts) and leaves its neighbours",
           shown, not failed, "lower end of each rate's Wilson interval >= its threshold (all at alpha: an "
           "intersection-union test)", ", ".join(f"{n} >= {t:g}" for n, _, t in parts), lines, kind="editable",
           bounds=(t,), deciding=deciding)
    return res


def assert_localisation_predicts_editing(subject: Any, facts: list[Fact], *, answers: list[str], sample: Any,
                                         at_least: float, alpha: float | None = None, seed: int | None = None,
                                         **kwargs: Any) -> Localisation:
    """Claim: the layer where causal tracing finds a fact is where it is best edited: the per-fact Spearman
    correlation over layers of tracing effect and rewrite score, averaged over facts, has its CI's lower end
    >= ``at_least``."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    res = localisation_vs_editing(subject, facts, answers=answers, sample=sample, alpha=alpha, seed=seed, **kwargs)
    decide(f"causal tracing predicts the layer where a fact is best edited ({res.position})", res.rho,
           res.rho.ci[0] >= t, "lower end of CI >= threshold", f">= {t:g}", ["  " + ln for ln in
                                                                              res.table().splitlines()],
           kind="localisation", bounds=(t,))
    return res


def assert_localisation_does_not_predict_editing(subject: Any, facts: list[Fact], *, answers: list[str],
                                                 sample: Any, below: float, alpha: float | None = None,
                                                 seed: int | None = None, **kwargs: Any) -> Localisation:
    """Claim: tracing does NOT point at where a fact is best edited: the averaged per-fact Spearman correlation
    has its CI's upper end < ``below``."""
    __tracebackhide__ = True
    t = threshold("below", below)
    res = localisation_vs_editing(subject, facts, answers=answers, sample=sample, alpha=alpha, seed=seed, **kwargs)
    decide(f"causal tracing does not predict the layer where a fact is best edited ({res.position})", res.rho,
           res.rho.ci[1] < t, "upper end of CI < threshold", f"< {t:g}", ["  " + ln for ln in
                                                                          res.table().splitlines()],
           kind="localisation", bounds=(t,))
    return res
