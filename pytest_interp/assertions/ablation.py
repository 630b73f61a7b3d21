"""Ablation and patching claims: a site is necessary, is not necessary (equivalence), or restores a gap."""

from __future__ import annotations

from typing import Any

from ..core.metrics import Metric
from ..core.sites import Site, describe
from ..engine.interventions import Intervention
from ..core.stats import Effect
from ..experiments.ablation import ablate
from ..experiments.patching import patch
from ..model.subject import Subject
from .decide import decide, threshold


def assert_necessary(subject: Subject, sites: Site | list[Site], *, inputs: Any, metric: Metric, at_least: float,
                     how: Intervention | None = None, alpha: float | None = None,
                     seed: int | None = None) -> Effect:
    """Claim: ablating ``sites`` damages ``metric`` by at least ``at_least``.

    Passes only when the lower end of the (1 - alpha) CI of the damage is >= ``at_least``. Returns the Effect.
    """
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    eff = ablate(subject, sites, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    return decide(f"{describe(eff.sites)} is necessary for {eff.metric} (damage >= {t:g})", eff,
                   eff.ci[0] >= t, "lower CI bound >= threshold", f"damage >= {t:g}", kind="necessary",
                   bounds=(t,))


def assert_not_necessary(subject: Subject, sites: Site | list[Site], *, inputs: Any, metric: Metric, within: float,
                         how: Intervention | None = None, alpha: float | None = None,
                         seed: int | None = None) -> Effect:
    """Claim (equivalence): ablating ``sites`` changes ``metric`` by less than ``within`` either way.

    Passes only when the whole (1 - alpha) CI lies inside ``[-within, within]``: a noisy estimate near zero
    does not pass; it needs enough examples to show the effect is small.
    """
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    eff = ablate(subject, sites, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    return decide(f"{describe(eff.sites)} is not necessary for {eff.metric} (|damage| <= {w:g})", eff,
                   -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]",
                   f"|damage| <= {w:g}", kind="not_necessary", bounds=(-w, w))


def assert_restores(subject: Subject, sites: Site | list[Site], *, clean: Any, corrupt: Any, metric: Metric,
                    at_least: float, into: str = "corrupt", alpha: float | None = None,
                    seed: int | None = None) -> Effect:
    """Claim: patching ``sites`` restores at least ``at_least`` of the clean-corrupt gap (lower CI bound)."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    eff = patch(subject, sites, clean=clean, corrupt=corrupt, metric=metric, into=into, alpha=alpha, seed=seed)
    verb = "restores" if into == "corrupt" else "carries (noising)"
    return decide(f"{describe(eff.sites)} {verb} >= {t:g} of the {eff.metric} gap", eff, eff.ci[0] >= t,
                   "lower CI bound >= threshold", f"fraction >= {t:g}", kind="restores", bounds=(t,))
