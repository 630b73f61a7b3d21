"""Families of claims decided together with family-wise error control: "only these sites are necessary".

Each site in the family is one statement: a named site is necessary (damage >= ``at_least``), every other site
is not (damage within ``[-within, within]``, an equivalence test). Each statement gets its one-sided p-value from
the studentized bootstrap the intervals use (for an equivalence, the larger of its two one-sided p-values),
Holm's step-down adjustment over the whole family, and holds when its adjusted p-value is <= alpha / 2: for a
single site that is the single claims' rule (the end of the two-sided 1 - alpha interval clears the threshold),
up to one resample. The family holds when every
statement holds, so the chance that a family containing a false statement passes is at most alpha / 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site, as_sites, describe
from ..core.stats import Effect, holm, mean_p_value
from ..engine.interventions import Intervention
from ..experiments.common import stat_args
from ..experiments.sweeps import sweep
from ..model.checks import as_subject
from ..model.subject import Subject
from .decide import decide, threshold


def assert_only(subject: Subject, necessary: Site | list[Site], among: list[Site], *, inputs: Any,
                metric: Metric, at_least: float, within: float, how: Intervention | None = None,
                alpha: float | None = None, seed: int | None = None) -> dict[Site, Effect]:
    """Claim: of the sites ``among``, exactly ``necessary`` matter: each of them damages ``metric`` by at least
    ``at_least`` when ablated, and ablating any other changes it by less than ``within`` either way.

    Decided with Holm's family-wise control over all the sites (see the module docstring). Returns each site's
    Effect; ``effect.details`` holds its one-sided p-value and its Holm-adjusted p-value.
    """
    __tracebackhide__ = True
    subject = as_subject(subject)
    t = threshold("at_least", at_least)
    w = threshold("within", within, positive=True)
    named = list(as_sites(necessary))
    family = list(dict.fromkeys([*as_sites(among), *named]))
    missing = [s for s in named if s not in as_sites(among)]
    if missing:
        raise InterpError(f"{missing[0]} is named necessary but is not among the sites", expected="necessary "
                          "sites that are part of among=[...]", seen=", ".join(map(str, missing)),
                          fix="add them to among=, which lists the whole family")
    if len(family) < 2:
        raise InterpError("a family needs at least two sites", expected="among= with two or more sites",
                          seen=f"{len(family)} site", fix="use pi.assert_necessary for a single site")
    st = stat_args(alpha, seed)
    result = sweep(subject, family, inputs=inputs, metric=metric, how=how, alpha=st["alpha"], seed=st["seed"])
    raw = []
    for s in family:
        e = result[s]

        def one_sided(bound: float, greater: bool, e: Effect = e) -> float:
            return mean_p_value(e.values, bound, greater=greater, n_boot=e.n_boot, seed=e.seed)

        raw.append(one_sided(t, True) if s in named else max(one_sided(-w, True), one_sided(w, False)))
    adjusted = holm(raw)
    level = st["alpha"] / 2
    effects: dict[Site, Effect] = {}
    lines, failed = [], []
    for s, p, q in zip(family, raw, adjusted):
        eff = dataclasses.replace(result[s], details=dict(result[s].details, p_one_sided=p, holm_p=q))
        effects[s] = eff
        ok = q <= level
        role = f"necessary (damage >= {t:g})" if s in named else f"not necessary (|damage| <= {w:g})"
        lines.append(f"    {str(s):<14} {role:<32} effect {eff.mean:.4g} CI [{eff.ci[0]:.4g}, {eff.ci[1]:.4g}]  "
                     f"Holm p {q:.3g}  {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(s)
    worst = max(family, key=lambda s: effects[s].details["holm_p"])
    summary = dataclasses.replace(effects[worst], sites=tuple(family))
    extra = [f"  family: {len(family)} sites, Holm step-down over one-sided studentized-bootstrap tests, each statement at "
             f"alpha/2 = {level:g}; shown: the statement with the largest adjusted p ({worst})", *lines]
    decide(f"only {describe(tuple(named))} of {len(family)} sites are necessary for {summary.metric}", summary,
           not failed, "every statement's Holm-adjusted p <= alpha/2", f"necessary >= {t:g}, others within "
           f"{w:g}", extra, kind="only", bounds=(t, -w, w))
    return effects
