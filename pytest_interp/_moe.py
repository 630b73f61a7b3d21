"""Mixture-of-experts: the router's choices as an intervention target, and a log of where tokens were routed.

In transformers' MoE blocks (Mixtral, Qwen2-MoE, OLMoE) the router ``mlp.gate`` returns
``(logits [N, E], weights [N, k], index [N, k])`` for the N = batch x seq tokens, and the fused experts
``mlp.experts`` sum ``weights[i] * expert[index[i]](x)``. Expert interventions rewrite that triple, so the experts
compute exactly what they would for the edited choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ._errors import InterpError
from ._interventions import Intervention, Replacement


class Route:
    """The router's output for a batch: ``logits [b, t, E]``, ``weights [b, t, k]``, ``index [b, t, k]``.

    Supports the few tensor operations the runner applies to activations (slicing rows, cloning, masking).
    """

    def __init__(self, logits: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, normalise: bool) -> None:
        self.logits, self.weights, self.index, self.normalise = logits, weights, index, normalise

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.index.shape)

    def replace(self, weights: torch.Tensor, index: torch.Tensor) -> Route:
        return Route(self.logits, weights, index, self.normalise)

    def clone(self) -> Route:
        return Route(self.logits.clone(), self.weights.clone(), self.index.clone(), self.normalise)

    def __getitem__(self, rows: Any) -> Route:
        return Route(self.logits[rows], self.weights[rows], self.index[rows], self.normalise)

    def __setitem__(self, rows: Any, other: Route) -> None:
        self.weights[rows] = other.weights
        self.index[rows] = other.index

    def where(self, mask: torch.Tensor, other: Route) -> Route:
        """Take this route at ``mask`` ([b or 1, t]) and ``other`` elsewhere."""
        m = mask[..., None]
        return Route(self.logits, torch.where(m, self.weights, other.weights),
                     torch.where(m, self.index, other.index), self.normalise)

    def equal(self, other: Route) -> bool:
        return torch.equal(self.weights, other.weights) and torch.equal(self.index, other.index)


def install(subject: Any, layer: int, transform: Callable[[Route], Route | None]) -> Any:
    """Hook the router of ``layer`` so ``transform`` may rewrite its choices; returns a handle."""
    ad = subject.adapter
    router = ad.router(layer)
    block = ad.mlp(layer)
    shape: list[tuple[int, int]] = []
    normalise = bool(getattr(router, "norm_topk_prob", True))

    def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        shape[:] = [tuple(x.shape[:2])]

    def post(module: Any, args: Any, output: Any) -> Any:
        if not (isinstance(output, tuple) and len(output) == 3):
            raise InterpError(f"the router of layer {layer} returned an unexpected output",
                              expected="(logits, top-k weights, top-k index) as in transformers 5.x MoE routers",
                              seen=type(output).__name__, fix="register an adapter whose router has that output")
        logits, weights, index = output
        b, t = shape[0] if shape else (1, logits.shape[0])
        route = Route(logits.reshape(b, t, -1), weights.reshape(b, t, -1), index.reshape(b, t, -1), normalise)
        new = transform(route)
        if new is None:
            return None
        return logits, new.weights.reshape(weights.shape).to(weights.dtype), new.index.reshape(index.shape)

    h1 = block.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = router.register_forward_hook(post)
    return _Handles(h1, h2)


class _Handles:
    def __init__(self, *handles: Any) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------------------------------
# interventions on the routing
# --------------------------------------------------------------------------------------------------------------

class ExpertIntervention(Intervention):
    """An intervention on the router's choice of one expert (site: ``pi.expert(layer, e)``)."""

    must_change = False  # an expert no token picks is legitimately unaffected: its effect is exactly zero

    def prepare(self, subject: Any, site: Any, tokens: torch.Tensor) -> Replacement:
        e = site.index
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


def resolve_how(sites: tuple[Any, ...], how: Intervention | None) -> Intervention | None:
    """The intervention for ``sites``: expert sites default to :class:`Remove` and take only expert interventions;
    other sites reject them. Returns None when the caller's own default applies."""
    from ._interventions import Zero

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


# --------------------------------------------------------------------------------------------------------------
# the routing log
# --------------------------------------------------------------------------------------------------------------

class Routing:
    """Where the router sent each token, per MoE layer: ``index[layer]`` ``[batch, seq, k]`` (the chosen experts),
    ``weights[layer]`` (their weights) and ``probs[layer]`` ``[batch, seq, E]`` (the router's distribution).

    Routing frequency says which experts were *read from*; whether the predictions *depend* on an expert is a
    separate question, answered by ablating it (``pi.assert_expert_necessary``).
    """

    def __init__(self, index: dict[int, torch.Tensor], weights: dict[int, torch.Tensor],
                 probs: dict[int, torch.Tensor], n_experts: int) -> None:
        self.index, self.weights, self.probs, self.n_experts = index, weights, probs, n_experts

    @property
    def layers(self) -> list[int]:
        return sorted(self.index)

    def _layer(self, layer: int) -> int:
        if layer not in self.index:
            raise InterpError(f"layer {layer} is not in this routing log", expected=f"one of {self.layers}",
                              seen=str(layer), fix="log that layer with pi.routing(..., layers=[...])")
        return layer

    def chosen(self, layer: int, expert: int) -> torch.Tensor:
        """Bool ``[batch, seq]``: which tokens have ``expert`` in their top-k at ``layer``."""
        if not 0 <= expert < self.n_experts:
            raise InterpError(f"expert {expert} is out of range", expected=f"0..{self.n_experts - 1}",
                              seen=str(expert), fix="count experts from 0")
        return (self.index[self._layer(layer)] == expert).any(-1)

    def frequency(self, layer: int, positions: Any = None) -> np.ndarray:
        """Per expert, the fraction of tokens (where ``positions``, a bool ``[batch, seq]`` mask, is True) that
        have it in their top-k. Sums to k over experts."""
        idx = self.index[self._layer(layer)]
        mask = _positions(positions, idx.shape[:2])
        hits = torch.stack([(idx == e).any(-1) for e in range(self.n_experts)], -1)[mask]
        return hits.float().mean(0).numpy() if hits.numel() else np.zeros(self.n_experts)

    def per_example(self, layer: int, expert: int, positions: Any = None) -> np.ndarray:
        """Per example, the fraction of its tokens (within ``positions``) routed to ``expert``."""
        hit = self.chosen(layer, expert).float()
        mask = _positions(positions, hit.shape).float()
        count = mask.sum(1)
        if bool((count == 0).any()):
            raise InterpError("the position mask selects no token in some example", expected="at least one "
                              "token per example", seen=f"{int((count == 0).sum())} empty example(s)",
                              fix="widen the mask or drop those examples")
        return ((hit * mask).sum(1) / count).numpy()

    def table(self, classes: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows ``{layer, expert, all, <class>...}``: routing frequency overall and per position class (named bool
        ``[batch, seq]`` masks)."""
        rows = []
        for layer in self.layers:
            freq = {"all": self.frequency(layer)}
            for name, m in (classes or {}).items():
                freq[name] = self.frequency(layer, m)
            for e in range(self.n_experts):
                rows.append({"layer": layer, "expert": e, **{k: float(v[e]) for k, v in freq.items()}})
        return rows

    def grid(self) -> tuple[np.ndarray, list[str], list[str]]:
        """Routing frequency as ``(values [layers, experts], row labels, column labels)``."""
        values = np.stack([self.frequency(layer) for layer in self.layers])
        return values, [f"layer {lay}" for lay in self.layers], [f"expert {e}" for e in range(self.n_experts)]

    def __repr__(self) -> str:
        return f"<Routing layers={self.layers} experts={self.n_experts}>"


def _positions(positions: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if positions is None:
        return torch.ones(shape, dtype=torch.bool)
    m = torch.as_tensor(getattr(positions, "mask", positions)).to("cpu")
    if m.dtype != torch.bool:
        raise InterpError("positions must be a bool mask", expected="a bool tensor [batch, seq]", seen=str(m.dtype),
                          fix="build it with comparisons, e.g. tokens == id")
    if m.dim() == 1:
        m = m[None].expand(shape[0], -1)
    if tuple(m.shape) != tuple(shape):
        raise InterpError("positions mask has the wrong shape", expected=f"[batch, seq] = {list(shape)}",
                          seen=str(list(m.shape)), fix="build the mask for the same inputs")
    return m


def routing(subject: Any, inputs: Any, *, layers: Any = None, record: bool = True) -> Routing:
    """Log the router's choices on ``inputs`` at every MoE layer (or ``layers``). Inside a pytest session the
    routing frequency is added to the HTML report as a heatmap (``record=False`` to skip)."""
    from . import _records
    from ._experiments import _subject
    from ._runner import _chunks, _hooks, check_layer

    subject = _subject(subject)
    layers_l = list(range(subject.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers_l:
        check_layer(subject, layer)
    tokens = subject.tokens(inputs)

    def parts() -> dict[str, Any]:
        from ._cache import tensor_digest
        from ._settings import settings

        return {"model": subject.fingerprint, "kind": "routing log", "tokens": tensor_digest(tokens),
                "layers": layers_l, "dtype": subject.dtype_key, "device": str(subject.device),
                "attn": subject.attn_implementation, "batch_size": settings().batch_size}

    def compute() -> torch.Tensor:
        for layer in layers_l:
            subject.adapter.router(layer)  # a dense model or a missing router fails here
        got: dict[int, list[Route]] = {layer: [] for layer in layers_l}
        for rows in _chunks(tokens.shape[0]):
            handles = []
            for layer in layers_l:
                def read(route: Route, layer: int = layer) -> None:
                    got[layer].append(route.clone())
                    return None
                handles.append(install(subject, layer, read))
            with _hooks(subject, handles):
                subject.forward(tokens[rows.to(tokens.device)])
        # per layer [batch, seq, k + k + E]: chosen experts, their weights, the router's distribution
        return torch.stack([torch.cat([torch.cat([r.index for r in rs]).double(),
                                       torch.cat([r.weights for r in rs]).double(),
                                       torch.softmax(torch.cat([r.logits for r in rs]).float(), -1).double()], -1)
                            for rs in got.values()]).cpu()

    from ._cache import current

    log = current().scores(parts, compute)
    n_exp = int(subject.n_experts or 0)
    k = (log.shape[-1] - n_exp) // 2
    index = {lay: log[i, ..., :k].long() for i, lay in enumerate(layers_l)}
    weights = {lay: log[i, ..., k:2 * k].float() for i, lay in enumerate(layers_l)}
    probs = {lay: log[i, ..., 2 * k:].float() for i, lay in enumerate(layers_l)}
    result = Routing(index, weights, probs, int(n_exp))
    if record:
        values, row_labels, col_labels = result.grid()
        _records.add_grid({"title": "routing frequency (fraction of tokens with the expert in their top-k)",
                           "rows": row_labels, "cols": col_labels, "values": values.tolist()})
    return result


# --------------------------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------------------------

_NOT_THE_SAME = ("  note: routing frequency is not necessity: an expert can be picked often and still not matter "
                 "for the scored predictions")


def _expert_site(subject: Any, layer: Any, expert: Any) -> Any:
    from ._experiments import _subject
    from ._sites import expert as expert_site

    from ._runner import check_site

    site = expert_site(layer, expert)
    subject = _subject(subject)
    check_site(subject, site, torch.zeros(1, 1, dtype=torch.long, device=subject.device))
    return site


def _with_routing(subject: Any, eff: Any, inputs: Any, layer: int, e: int) -> tuple[Any, list[str]]:
    import dataclasses

    freq = float(routing(subject, inputs, layers=[layer], record=False).frequency(layer)[e])
    eff = dataclasses.replace(eff, details=dict(eff.details, routed_fraction=freq))
    return eff, [f"  routing: expert {layer}.{e} is in the top-k of {freq:.1%} of the input tokens", _NOT_THE_SAME]


def assert_expert_necessary(subject: Any, layer: int, expert: int, *, inputs: Any, metric: Any, at_least: float,
                            how: Intervention | None = None, alpha: float | None = None,
                            seed: int | None = None) -> Any:
    """Claim: expert ``layer.expert`` is necessary: removing it (default: after top-k, with the token's other
    weights renormalised; or ``how=pi.Reroute()``) damages ``metric`` by at least ``at_least`` (lower CI bound).
    How often the expert is routed to is reported beside the effect; it is not evidence of necessity."""
    __tracebackhide__ = True
    from ._claims import _decide, _threshold
    from ._experiments import ablate

    t = _threshold("at_least", at_least)
    site = _expert_site(subject, layer, expert)
    eff = ablate(subject, site, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    eff, extra = _with_routing(subject, eff, inputs, site.layer, site.index)
    return _decide(f"{site} is necessary for {eff.metric} (damage >= {t:g})", eff, eff.ci[0] >= t,
                   "lower CI bound >= threshold", f"damage >= {t:g}", extra, kind="expert_necessary", bounds=(t,))


def assert_expert_not_necessary(subject: Any, layer: int, expert: int, *, inputs: Any, metric: Any, within: float,
                                how: Intervention | None = None, alpha: float | None = None,
                                seed: int | None = None) -> Any:
    """Claim (equivalence): removing expert ``layer.expert`` changes ``metric`` by less than ``within`` either way
    (the whole CI inside ``[-within, within]``), however often it is routed to."""
    __tracebackhide__ = True
    from ._claims import _decide, _threshold
    from ._experiments import ablate

    w = _threshold("within", within, positive=True)
    site = _expert_site(subject, layer, expert)
    eff = ablate(subject, site, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    eff, extra = _with_routing(subject, eff, inputs, site.layer, site.index)
    return _decide(f"{site} is not necessary for {eff.metric} (|damage| < {w:g})", eff,
                   -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]", f"|damage| <= {w:g}",
                   extra, kind="expert_not_necessary", bounds=(-w, w))


def assert_routes_to(subject: Any, layer: int, expert: int, *, inputs: Any, positions: Any = None,
                     at_least: float, alpha: float | None = None, seed: int | None = None) -> Any:
    """Claim: at ``layer`` the router picks ``expert`` (in the top-k) for at least a fraction ``at_least`` of the
    tokens (those where ``positions``, a bool ``[batch, seq]`` mask, is True). The CI resamples examples; the lower
    bound decides. This is a claim about routing only: it says nothing about what depends on the expert."""
    __tracebackhide__ = True
    from ._claims import _decide, _threshold
    from ._experiments import _stat_args, _subject
    from ._stats import mean_effect

    subject = _subject(subject)
    t = _threshold("at_least", at_least)
    if not 0 <= t <= 1:
        raise InterpError("at_least is a fraction of tokens", expected="0 <= at_least <= 1", seen=str(at_least),
                          fix="e.g. at_least=0.5")
    site = _expert_site(subject, layer, expert)
    log = routing(subject, inputs, layers=[site.layer])
    values = log.per_example(site.layer, site.index, positions)
    eff = mean_effect(values, sites=(site,), method="routing", intervention="none (router log)",
                      metric="routed fraction", higher_is_better=True, model=subject.identity(),
                      details={"top_k": int(log.index[site.layer].shape[-1])}, **_stat_args(alpha, seed))
    where = "all tokens" if positions is None else "the given positions"
    return _decide(f"{site} is routed to for >= {t:g} of {where}", eff, eff.ci[0] >= t, "lower CI bound >= "
                   "threshold", f"fraction >= {t:g}", [_NOT_THE_SAME], kind="routes_to", bounds=(t,))
