"""Expert interventions: rewrite a MoE router's top-k choice so the fused experts compute exactly what they would
for the edited choice (remove after top-k, reroute before it, or force a token to an expert).

"Expert e is necessary" means :class:`Remove`: e is dropped after top-k and the token's other weights are
rescaled to their original sum. :class:`Reroute` (mask e before top-k) is a different, named intervention.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from ..core.errors import InterpError
from ..core.sites import Site
from ..model.subject import Subject
from .hooks import Replacement, Route
from .interventions import Intervention, Zero


class ExpertIntervention(Intervention):
    """An intervention on the router's choice of one expert (site: ``pi.expert(layer, e)``)."""

    must_change = False  # an expert no token picks is legitimately unaffected: its effect is exactly zero

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        e = site.number
        return lambda route, rows: self.apply(route, e)

    def apply(self, route: Route, e: int) -> Route:
        raise NotImplementedError


def _renormalise(weights: torch.Tensor, keep: torch.Tensor, original_sum: torch.Tensor) -> torch.Tensor:
    w = torch.where(keep, weights, torch.zeros_like(weights))
    total = w.sum(-1, keepdim=True)
    scale = torch.where(total > 0, original_sum / total.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(total))
    return w * scale


@dataclass(frozen=True)
class Remove(ExpertIntervention):
    """Remove expert e after top-k selection: tokens that picked e lose it, and the remaining top-k weights are
    rescaled to the sum the token's weights had (1 for Mixtral-style routers). This is what "expert e is
    necessary" means by default. ``renormalize=False`` only drops e's share (``pi.Zero()`` on an expert site)."""

    renormalize: bool = True

    def apply(self, route: Route, e: int) -> Route:
        keep = route.index != e
        if self.renormalize:
            w = _renormalise(route.weights, keep, route.weights.sum(-1, keepdim=True))
        else:
            w = torch.where(keep, route.weights, torch.zeros_like(route.weights))
        return route.replace(w, route.index)

    def describe(self) -> str:
        return "remove expert after top-k" + (" (renormalised)" if self.renormalize else " (no renormalisation)")


@dataclass(frozen=True)
class Reroute(ExpertIntervention):
    """Make expert e unavailable before top-k: tokens that picked e pick the next-best expert instead, with the
    router's own weighting of the new choice (renormalised when the router renormalises)."""

    def apply(self, route: Route, e: int) -> Route:
        probs = torch.softmax(route.logits.float(), -1)
        masked = probs.clone()
        masked[..., e] = -1.0
        k = route.index.shape[-1]
        new_w, new_i = torch.topk(masked, k, dim=-1)
        new_w = new_w.clamp_min(0)
        if route.normalise:
            new_w = new_w / new_w.sum(-1, keepdim=True).clamp_min(torch.finfo(new_w.dtype).tiny)
        hit = (route.index == e).any(-1, keepdim=True)
        return route.replace(torch.where(hit, new_w.to(route.weights.dtype), route.weights),
                             torch.where(hit, new_i, route.index))

    def describe(self) -> str:
        return "reroute (expert masked before top-k)"


@dataclass(frozen=True)
class Force(ExpertIntervention):
    """Route tokens to expert e: e takes the token's first slot (with the first slot's weight); the other slots
    keep the token's best remaining experts in order. Restrict it to tokens with ``pi.expert(l, e).at(...)``."""

    def apply(self, route: Route, e: int) -> Route:
        probs = torch.softmax(route.logits.float(), -1)
        probs[..., e] = -1.0
        k = route.index.shape[-1]
        order = torch.argsort(route.weights, dim=-1, descending=True)
        ranked_w = route.weights.gather(-1, order)
        rest = torch.topk(probs, k - 1, dim=-1).indices if k > 1 else route.index[..., :0]
        first = torch.full_like(route.index[..., :1], e)
        return route.replace(ranked_w, torch.cat([first, rest.to(route.index.dtype)], -1))

    def describe(self) -> str:
        return "force routing to expert"


def resolve_how(sites: tuple[Site, ...], how: Intervention | None) -> Intervention | None:
    """The intervention for ``sites``: expert sites default to :class:`Remove` and take only expert interventions;
    other sites reject them. Returns None when the caller's own default applies."""
    experts = [s for s in sites if s.kind == "expert"]
    routers = [s for s in sites if s.kind == "router"]
    if routers:
        raise InterpError(f"{routers[0]} cannot be ablated", expected="an expert site: pi.expert(layer, e) with "
                          "pi.Remove(), pi.Reroute() or pi.Force()", seen=f"a router site ({routers[0]})",
                          fix="read the router with pi.routing(subject, inputs); intervene on pi.expert(layer, e)")
    if not experts:
        if isinstance(how, ExpertIntervention):
            raise InterpError(f"{how.describe()} applies to expert sites only", expected="pi.expert(layer, e)",
                              seen=", ".join(map(str, sites)), fix="use pi.Zero()/pi.Mean() on dense sites")
        return how
    if len(experts) != len(sites):
        raise InterpError("expert and non-expert sites in one ablation", expected="only expert sites, or none",
                          seen=", ".join(map(str, sites)), fix="ablate the expert sites and the others separately")
    if how is None:
        return Remove()
    if isinstance(how, Zero):
        return Remove(renormalize=False)
    if not isinstance(how, ExpertIntervention):
        raise InterpError(f"{how.describe()} is not defined on an expert", expected="pi.Remove(), pi.Reroute(), "
                          "pi.Force() or pi.Zero() for expert sites", seen=type(how).__name__,
                          fix="pick an expert intervention (Remove is the default)")
    return how
