"""Feature claims: an SAE is faithful at its site; one of its features is necessary, sufficient (steering moves
the behaviour), or selective between two input classes. Every feature claim reports its SAE's fidelity."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site, describe
from ..core.stats import Effect
from ..engine.interventions import Intervention, Steer, Zero
from ..experiments.ablation import ablate
from ..experiments.features import sae_fidelity, selectivity
from ..model.checks import as_subject
from ..model.sae import SAE
from ..model.subject import Subject
from .decide import decide, threshold


def _feature(site: Any) -> Site:
    if not isinstance(site, Site) or site.kind != "feature":
        raise InterpError("a feature claim is about SAE features", expected="sae.feature(i) or sae.features([...])",
                          seen=repr(site), fix="load the SAE with pi.load_sae(path) and pass sae.feature(i)")
    return site


def _fidelity_lines(subject: Subject, sae: SAE, inputs: Any) -> list[str]:
    """The SAE's fidelity on the claim's inputs (next-token loss), for the claim's report."""
    if not subject.causal:
        return [f"  SAE {sae.hook_name}: fidelity not measured (no next-token loss on an encoder; see "
                "pi.sae_fidelity(..., metric=...))"]
    f = sae_fidelity(subject, sae, inputs)
    return [f"  SAE {sae.hook_name} on these inputs: {f.describe()}"]


def assert_sae_faithful(subject: Subject, sae: SAE, *, inputs: Any, ce_recovered_at_least: float,
                        metric: Metric | None = None, alpha: float | None = None,
                        seed: int | None = None) -> Effect:
    """Claim: substituting the SAE's reconstruction at its site recovers at least ``ce_recovered_at_least`` of
    the loss that zero-ablating the site costs (lower CI bound). Returns the loss-recovered Effect."""
    __tracebackhide__ = True
    t = threshold("ce_recovered_at_least", ce_recovered_at_least)
    subject = as_subject(subject)
    f = sae_fidelity(subject, sae, inputs, metric=metric, alpha=alpha, seed=seed)
    eff = f.recovered
    return decide(f"the SAE {sae.hook_name} is faithful at {sae.site} ({eff.metric} recovered >= {t:g})", eff,
                  eff.ci[0] >= t, "lower CI bound >= threshold", f"recovered >= {t:g}",
                  [f"  {f.describe()}"], kind="sae_faithful", bounds=(t,))


def assert_feature_necessary(subject: Subject, feature: Site, *, inputs: Any, metric: Metric, at_least: float,
                             how: Intervention | None = None, alpha: float | None = None,
                             seed: int | None = None) -> Effect:
    """Claim: ablating the feature(s) (default: activation set to zero, the SAE's error term kept) damages
    ``metric`` by at least ``at_least`` (lower CI bound)."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    subject, site = as_subject(subject), _feature(feature)
    eff = ablate(subject, site, inputs=inputs, metric=metric, how=how or Zero(), alpha=alpha, seed=seed)
    return decide(f"{describe(eff.sites)} is necessary for {eff.metric} (damage >= {t:g})", eff, eff.ci[0] >= t,
                  "lower CI bound >= threshold", f"damage >= {t:g}", _fidelity_lines(subject, site.sae, inputs),
                  kind="feature_necessary", bounds=(t,))


def assert_feature_sufficient(subject: Subject, feature: Site, *, inputs: Any, metric: Metric, steer: float,
                              at_least: float, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: adding ``steer`` times the feature's decoder direction raises ``metric`` (in its better
    direction) by at least ``at_least`` (lower CI bound). Returns the Effect of the increase."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    subject, site = as_subject(subject), _feature(feature)
    how = Steer(alpha=steer)
    damage = ablate(subject, site, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    eff = dataclasses.replace(damage, mean=-damage.mean, ci=(-damage.ci[1], -damage.ci[0]), values=-damage.values,
                              method="steer")
    return decide(f"steering {describe(eff.sites)} by {steer:g} raises {eff.metric} by >= {t:g}", eff,
                  eff.ci[0] >= t, "lower CI bound >= threshold", f"increase >= {t:g}",
                  _fidelity_lines(subject, site.sae, inputs), kind="feature_sufficient", bounds=(t,))


def assert_feature_selective(subject: Subject, feature: Site, *, positive: Any, negative: Any, auc_at_least: float,
                             position: int = -1, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: the feature's activation at ``position`` separates ``positive`` from ``negative`` inputs with an
    AUC of at least ``auc_at_least`` (lower CI bound). Selectivity is not necessity: pair it with
    :func:`assert_feature_necessary`."""
    __tracebackhide__ = True
    t = threshold("auc_at_least", auc_at_least)
    subject, site = as_subject(subject), _feature(feature)
    eff = selectivity(subject, site, positive=positive, negative=negative, position=position, alpha=alpha, seed=seed)
    return decide(f"{describe(eff.sites)} is selective for the positive class (AUC >= {t:g})", eff, eff.ci[0] >= t,
                  "lower CI bound >= threshold", f"AUC >= {t:g}", _fidelity_lines(subject, site.sae, positive),
                  kind="feature_selective", bounds=(t,))
