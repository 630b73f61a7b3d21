"""MoE claims: an expert is necessary (removed after top-k), is not necessary, or is routed to. Routing frequency is
reported beside every expert claim; it is never evidence of necessity."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core import records as _records
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site
from ..core.sites import expert as expert_site
from ..core.stats import Effect, mean_effect
from ..engine.interventions import Intervention
from ..experiments.ablation import ablate
from ..experiments.common import stat_args
from ..experiments.routing import routing
from ..model.checks import as_subject, check_site
from ..model.subject import Subject
from .decide import decide, threshold


_NOT_THE_SAME = ("  note: routing frequency is not necessity: an expert can be picked often and still not matter "
                 "for the scored predictions")


def _expert_site(subject: Subject, layer: int, expert: int) -> Site:
    site = expert_site(layer, expert)
    subject = as_subject(subject)
    check_site(subject, site, torch.zeros(1, 1, dtype=torch.long, device=subject.device))
    return site


def _with_routing(subject: Subject, eff: Effect, inputs: Any, layer: int, e: int) -> tuple[Effect, list[str]]:
    freq = float(routing(subject, inputs, layers=[layer], record=False).frequency(layer)[e])
    eff = dataclasses.replace(eff, details=dict(eff.details, routed_fraction=freq))
    return eff, [f"  routing: expert {layer}.{e} is in the top-k of {freq:.1%} of the input tokens", _NOT_THE_SAME]


def assert_expert_necessary(subject: Subject, layer: int, expert: int, *, inputs: Any, metric: Metric, at_least: float,
                            how: Intervention | None = None, alpha: float | None = None,
                            seed: int | None = None) -> Effect:
    """Claim: expert ``layer.expert`` is necessary: removing it (default: after top-k, with the token's other
    weights renormalised; or ``how=pi.Reroute()``) damages ``metric`` by at least ``at_least`` (lower CI bound).
    How often the expert is routed to is reported beside the effect; it is not evidence of necessity."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    site = _expert_site(subject, layer, expert)
    eff = ablate(subject, site, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    eff, extra = _with_routing(subject, eff, inputs, site.layer, site.number)
    return decide(f"{site} is necessary for {eff.metric} (damage >= {t:g})", eff, eff.ci[0] >= t,
                   "lower CI bound >= threshold", f"damage >= {t:g}", extra, kind="expert_necessary", bounds=(t,))


def assert_expert_not_necessary(subject: Subject, layer: int, expert: int, *, inputs: Any, metric: Metric, within: float,
                                how: Intervention | None = None, alpha: float | None = None,
                                seed: int | None = None) -> Effect:
    """Claim (equivalence): removing expert ``layer.expert`` changes ``metric`` by less than ``within`` either way
    (the whole CI inside ``[-within, within]``), however often it is routed to."""
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    site = _expert_site(subject, layer, expert)
    eff = ablate(subject, site, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    eff, extra = _with_routing(subject, eff, inputs, site.layer, site.number)
    return decide(f"{site} is not necessary for {eff.metric} (|damage| <= {w:g})", eff,
                   -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]", f"|damage| <= {w:g}",
                   extra, kind="expert_not_necessary", bounds=(-w, w))


def assert_routes_to(subject: Subject, layer: int, expert: int, *, inputs: Any, positions: Any = None,
                     at_least: float, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: at ``layer`` the router picks ``expert`` (in the top-k) for at least a fraction ``at_least`` of the
    tokens (those where ``positions``, a bool ``[batch, seq]`` mask, is True). The CI resamples examples; the lower
    bound decides. This is a claim about routing only: it says nothing about what depends on the expert."""
    __tracebackhide__ = True
    subject = as_subject(subject)
    t = threshold("at_least", at_least)
    if not 0 <= t <= 1:
        raise InterpError("at_least is a fraction of tokens", expected="0 <= at_least <= 1", seen=str(at_least),
                          fix="e.g. at_least=0.5")
    site = _expert_site(subject, layer, expert)
    log = routing(subject, inputs, layers=[site.layer], record=positions is None)
    values = log.per_example(site.layer, site.number, positions)
    if positions is not None:  # the report's grid shows what the claim measured: the given positions only
        freq = [float(log.per_example(site.layer, e, positions).mean()) for e in range(log.n_experts)]
        _records.add_grid({"title": f"routing frequency at the claim's positions (layer {site.layer}; mean over "
                                    "examples of the fraction of their tokens with the expert in the top-k)",
                           "rows": [f"layer {site.layer}"], "cols": [f"expert {e}" for e in range(log.n_experts)],
                           "values": [freq]})
    eff = mean_effect(values, sites=(site,), method="routing", intervention="none (router log)",
                      metric="routed fraction", higher_is_better=True, model=subject.identity(),
                      details={"top_k": int(log.index[site.layer].shape[-1])}, **stat_args(alpha, seed))
    where = "all tokens" if positions is None else "the given positions"
    return decide(f"{site} is routed to for >= {t:g} of {where}", eff, eff.ci[0] >= t, "lower CI bound >= "
                   "threshold", f"fraction >= {t:g}", [_NOT_THE_SAME], kind="routes_to", bounds=(t,))
