"""Hooks: how an edit reaches a site's activation (or a MoE router's choice) inside a forward pass.

Every hook the library puts on a model is installed here and removed by :func:`hooks` when the pass ends. A head
is edited at the input of its layer's attention out-projection (the only place heads are separable); an expert
through its router's top-k output, whose ``(logits, weights, index)`` triple the fused experts read.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ..core.errors import InterpError
from ..core.sites import Site
from ..model.checks import position_mask
from ..model.subject import Subject

# A prepared intervention: new_activation = fn(activation, rows) for the batch rows being run.
Replacement = Callable[[Any, torch.Tensor], Any]


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


class Handles:
    """Several hook handles removed as one."""

    def __init__(self, *handles: Any) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def install_router(subject: Subject, layer: int, transform: Callable[[Route], Route | None]) -> Handles:
    """Hook the router of ``layer`` so ``transform`` may rewrite its choices; returns a handle."""
    ad = subject.adapter
    router = ad.router(layer)
    block = ad.mlp(layer)
    shape: list[tuple[int, ...]] = []
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
    return Handles(h1, h2)


@dataclass
class Edit:
    """One site's replacement in a run, and what the hook saw."""

    site: Site
    fn: Replacement
    must_change: bool = True
    label: str = "intervention"
    pure: bool = False  # fn is a deterministic function of (activation, rows): see Intervention.pure
    fired: int = 0
    changed: bool = False
    lengths: torch.Tensor | None = None  # each example's real length in a ragged batch (set by the runner)

    def __post_init__(self) -> None:
        if self.site.kind == "feature":  # a feature that is off on the batch is legitimately unaffected
            self.must_change = False


def apply(edit: Edit, act: Any, rows: torch.Tensor, batch: int) -> Any:
    """``edit``'s replacement of ``act`` (an activation tensor, or a MoE Route) at the site's positions."""
    new = edit.fn(act, rows)
    mask = position_mask(edit.site, rows, batch, act.shape[1], rows.device, edit.lengths)
    routed = isinstance(act, Route)
    if mask is not None:
        mask = mask.to(act.index.device if routed else act.device)
        new = new.where(mask, act) if routed else torch.where(mask[..., None], new, act)
    edit.fired += 1
    if not edit.changed and not (new.equal(act) if routed else torch.equal(new, act)):
        edit.changed = True
    return new


def install(subject: Subject, site: Site, transform: Callable[[Any], Any]) -> Any:
    """Hook ``transform(activation) -> replacement or None`` at ``site``; returns the handle."""
    ad = subject.adapter
    if site.kind == "feature":
        return _install_features(subject, site, transform)
    if site.kind in ("head", "cross_head"):
        sl = slice(site.number * ad.head_dim, (site.number + 1) * ad.head_dim)
        out_proj = ad.cross_attn_out(site.layer) if site.kind == "cross_head" else ad.attn_out(site.layer, site.stack)

        def pre(module: Any, args: tuple[Any, ...]) -> Any:
            x = args[0]
            new = transform(x[..., sl])
            if new is None:
                return None
            x = x.clone()
            x[..., sl] = new
            return (x, *args[1:])

        return out_proj.register_forward_pre_hook(pre)
    if site.kind == "resid" and site.layer < ad.layers_of(site.stack):
        def pre_kw(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                new = transform(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = transform(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return ad.block(site.layer, site.stack).register_forward_pre_hook(pre_kw, with_kwargs=True)
    if site.kind == "expert":
        return install_router(subject, site.layer, transform)
    if site.kind == "resid":
        module = ad.block(ad.layers_of(site.stack) - 1, site.stack)
    elif site.kind == "attn":
        module = ad.attn_out(site.layer, site.stack)
    elif site.kind == "cross_attn":
        module = ad.cross_attn_out(site.layer)
    elif site.kind == "mlp":
        module = ad.mlp(site.layer, site.stack)
    else:  # pragma: no cover - check_site rejects the rest
        raise InterpError(f"unsupported site {site}")

    def post(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            new = transform(output[0])
            return None if new is None else (new, *output[1:])
        return transform(output)

    return module.register_forward_hook(post)


def _install_features(subject: Subject, site: Site, transform: Callable[[Any], Any]) -> Any:
    """An SAE's features at its host site: ``transform`` sees their activations ``[b, t, k]``; a replacement
    changes only their contribution to the host (the SAE's error term stays), so leaving them as they are
    leaves the host's activation exactly as it was."""
    sae, idx = site.sae, list(site.features)

    def via(x: Any) -> Any:
        acts = sae.encode(x, idx)  # only the features edited (a sweep has one hook per feature)
        new = transform(acts)
        if new is None:
            return None
        return x + sae.contribution(new - acts, site.features).to(x.dtype)

    return install(subject, site.host_site, via)


def install_edits(subject: Subject, edits: list[Edit], rows: torch.Tensor, batch: int) -> list[Any]:
    """Install every edit for the batch ``rows`` (of ``batch``); on a failure, remove those already installed."""
    handles: list[Any] = []
    try:
        for e in edits:
            def edit(act: Any, e: Edit = e) -> Any:
                return apply(e, act, rows, batch)
            handles.append(install(subject, e.site, edit))
    except Exception:
        for h in handles:
            h.remove()
        raise
    return handles


@contextmanager
def hooks(handles: list[Any]) -> Iterator[None]:
    """Within: ``handles`` are installed; they are removed on leaving, whatever happens."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()
