"""Probe and direction claims: a variable is decodable at a site beyond what a probe memorises (selectivity over a
control task), and the model uses (or does not use) a direction there. Decodable is not used: the two are
separate claims, and only the second is decided by an intervention."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.metrics import Metric
from ..core.sites import Site, describe
from ..core.stats import Effect
from ..engine.interventions import Direction
from ..experiments.ablation import ablate
from ..experiments.probes import probe
from ..model.checks import as_subject
from ..model.subject import Subject
from .decide import decide, threshold


def assert_probe_selective(subject: Subject, site: Site, *, inputs: Any, labels: Any, selectivity_at_least: float,
                           position: int = -1, types: Any = None, alpha: float | None = None,
                           seed: int | None = None) -> Effect:
    """Claim: ``labels`` are linearly decodable from ``site`` at ``position`` beyond the probe's control task:
    held-out accuracy minus control accuracy is at least ``selectivity_at_least`` (lower CI bound). Returns the
    selectivity Effect; the probe's accuracy and control accuracy are in the report."""
    __tracebackhide__ = True
    t = threshold("selectivity_at_least", selectivity_at_least)
    p = probe(subject, site, inputs, labels, position=position, types=types, alpha=alpha, seed=seed)
    eff = p.selectivity
    return decide(f"{describe(eff.sites)} @ {position} linearly encodes the labels (selectivity >= {t:g})", eff,
                  eff.ci[0] >= t, "lower CI bound >= threshold", f"selectivity >= {t:g}", [f"  probe: {p.describe()}"],
                  kind="probe_selective", bounds=(t,))


def _random_direction(like: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(like.numel(), generator=g)


def _direction_effects(subject: Subject, site: Site, direction: Any, inputs: Any, metric: Metric, mode: str,
                       alpha: float | None, seed: int | None) -> tuple[Effect, Effect]:
    subject = as_subject(subject)
    eff = ablate(subject, site, inputs=inputs, metric=metric, how=Direction(direction=direction, mode=mode),
                 alpha=alpha, seed=seed)
    control = ablate(subject, site, inputs=inputs, metric=metric,
                     how=Direction(direction=_random_direction(torch.as_tensor(direction), eff.seed), mode=mode),
                     alpha=alpha, seed=seed)
    return eff, control


def assert_direction_used(subject: Subject, site: Site, direction: Any, *, inputs: Any, metric: Metric,
                          at_least: float, mode: str = "project", alpha: float | None = None,
                          seed: int | None = None) -> Effect:
    """Claim: removing ``direction`` from ``site`` (projecting it out, or ``mode="mean"``) damages ``metric`` by
    at least ``at_least`` (lower CI bound). A random direction removed the same way is reported beside it."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    eff, control = _direction_effects(subject, site, direction, inputs, metric, mode, alpha, seed)
    eff = dataclasses.replace(eff, method="direction", details={**eff.details, "random_direction": control.mean})
    return decide(f"the direction at {describe(eff.sites)} is used for {eff.metric} (damage >= {t:g})", eff,
                  eff.ci[0] >= t, "lower CI bound >= threshold", f"damage >= {t:g}",
                  [f"  control: a random direction removed alike damages {control.describe()}"],
                  kind="direction_used", bounds=(t,))


def assert_direction_unused(subject: Subject, site: Site, direction: Any, *, inputs: Any, metric: Metric,
                            within: float, mode: str = "project", alpha: float | None = None,
                            seed: int | None = None) -> Effect:
    """Claim (equivalence): removing ``direction`` from ``site`` changes ``metric`` by less than ``within``
    either way (whole CI inside) — e.g. a variable a probe decodes that the model does not use there."""
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    eff, control = _direction_effects(subject, site, direction, inputs, metric, mode, alpha, seed)
    eff = dataclasses.replace(eff, method="direction", details={**eff.details, "random_direction": control.mean})
    return decide(f"the direction at {describe(eff.sites)} is not used for {eff.metric} (|damage| <= {w:g})", eff,
                  -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]", f"|damage| <= {w:g}",
                  [f"  control: a random direction removed alike damages {control.describe()}"],
                  kind="direction_unused", bounds=(-w, w))
