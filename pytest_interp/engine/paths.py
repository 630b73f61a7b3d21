"""Edits inside attention: path patching into one head's query, key or value input, into an MLP or into the
logits, and blocking chosen query -> key pairs of one head.

Attention is edited (:func:`.runner.attention_edits`) through transformers' attention-function registry: for the length of one pass the model's
attention modules call :func:`_attention`, which calls the model's own eager attention function unchanged for
every module without an edit (so a pass without edits is bit-for-bit the eager pass) and, for an edited
module, calls it on edited inputs: a query, key or value with one head's slice replaced, or an additive mask
that removes chosen keys from one head's softmax (the remaining weights renormalise, as a score of -inf
would). Nothing in the model is changed outside the pass.

A path's sender is read, never changed: a hook on the sender computes its replacement (``Edit``) and the
difference it would make to the residual stream (for a head, through its slice of the out-projection); the
receiver then reads ``norm(resid + delta)`` through its own input only, while every other component reads the
clean stream. A head receiver gets it by running its attention module a second time on the patched input,
keeping only the query, key or value the path names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.errors import InterpError
from ..core.paths import Path
from ..core.sites import Site
from ..model.checks import position_mask
from ..model.subject import Subject
from .hooks import Edit, apply, install
from .runner import attention_edits, submodule

def _head_output(out: Any, other: Any, h: int) -> Any:
    """``out`` (an eager attention result: output ``[b, q, heads, d]``, weights ``[b, heads, q, k]``) with head
    ``h`` taken from ``other``."""
    o, w = out
    o2, w2 = other
    o = o.clone()
    o[:, :, h] = o2[:, :, h]
    if w is not None and w2 is not None:
        w = w.clone()
        w[:, h] = w2[:, h]
    return o, w


@dataclass
class PathState:
    """What one pass of a path edit saw: the sender's residual-stream delta and the receiver's patched q/k/v."""

    delta: torch.Tensor | None = None
    recorded: dict[str, torch.Tensor] = field(default_factory=dict)
    recording: bool = False
    used: int = 0


def contribution(subject: Subject, site: Site, dz: torch.Tensor) -> torch.Tensor:
    """What a change ``dz`` of the sender's activation adds to the residual stream."""
    if site.kind != "head":
        return dz
    ad = subject.adapter
    out = ad.attn_out(site.layer)
    full = dz.new_zeros(*dz.shape[:-1], ad.n_heads * ad.head_dim)
    full[..., site.number * ad.head_dim:(site.number + 1) * ad.head_dim] = dz
    with torch.no_grad():
        return submodule(out, full) - submodule(out, torch.zeros_like(full))  # linear: the bias cancels


def install_path(subject: Subject, p: Path, edit: Edit, rows: torch.Tensor, batch: int) -> tuple[list[Any], dict[Any, Any], PathState]:
    """Hooks and attention edits for one pass of ``p``: the sender's replacement (``edit``) reaches the
    receiver's input only."""
    ad = subject.adapter
    state = PathState()
    receiver = p.receiver_site
    lengths = edit.lengths

    def read(act: Any) -> None:
        new = apply(edit, act, rows, batch)
        delta = contribution(subject, p.sender, new - act)
        if receiver is not None and receiver.positions is not None:
            mask = position_mask(receiver, rows, batch, delta.shape[1], delta.device, lengths)
            if mask is not None:
                delta = delta * mask[..., None].to(delta.dtype)
        state.delta = delta
        return None

    handles: list[Any] = []
    attn_edits: dict[Any, Any] = {}
    try:
        handles.append(install(subject, p.sender, read))
        if receiver is None or receiver.kind == "mlp":
            norm = ad.norm(ad.n_layers if receiver is None else receiver.layer, "final" if receiver is None else "mlp")

            def patched(module: Any, args: tuple[Any, ...], output: Any) -> Any:
                if state.delta is None:
                    return None
                state.used += 1
                return submodule(module, args[0] + state.delta.to(args[0].dtype))

            handles.append(norm.register_forward_hook(patched))
            return handles, attn_edits, state
        layer, h, via = receiver.layer, receiver.number, p.via
        norm = ad.norm(layer, "attn")
        attention = ad.attention(layer)
        normed: dict[str, torch.Tensor] = {}

        def keep(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if state.delta is not None:
                normed["x"] = submodule(module, args[0] + state.delta.to(args[0].dtype))

        def rerun(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if "x" not in normed:
                return
            state.recording = True
            try:
                if args:
                    submodule(module, normed["x"], *args[1:], **kwargs)
                else:
                    submodule(module, **{**kwargs, "hidden_states": normed["x"]})
            finally:
                state.recording = False

        def edit_attention(base: Any, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           mask: Any, **kw: Any) -> Any:
            if state.recording:
                state.recorded = {"q": query, "k": key, "v": value}
                return base(module, query, key, value, mask, **kw)
            if not state.recorded:
                return base(module, query, key, value, mask, **kw)
            state.used += 1
            src = state.recorded[via]  # type: ignore[index]
            if via == "q":
                q = query.clone()
                q[:, h] = src[:, h]
                return base(module, q, key, value, mask, **kw)
            group = h // (query.shape[1] // key.shape[1])  # grouped-query attention: the key/value head h reads
            new = (key if via == "k" else value).clone()
            new[:, group] = src[:, group]
            edited = base(module, query, new, value, mask, **kw) if via == "k" else \
                base(module, query, key, new, mask, **kw)
            if query.shape[1] == key.shape[1]:
                return edited
            return _head_output(base(module, query, key, value, mask, **kw), edited, h)  # only head h changes

        handles.append(norm.register_forward_hook(keep))
        handles.append(attention.register_forward_pre_hook(rerun, with_kwargs=True))
        attn_edits[attention] = edit_attention
    except Exception:
        for hd in handles:
            hd.remove()
        raise
    return handles, attn_edits, state


def blocked_attention(h: int, blocked: torch.Tensor, state: dict[str, int]) -> Callable[..., Any]:
    """An attention edit removing the query -> key pairs ``blocked`` (bool ``[b, q, k]``) from head ``h``'s
    softmax; the head's other weights renormalise. ``state["used"]`` counts the calls."""

    def edit(base: Any, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
             **kw: Any) -> Any:
        b, heads, q, k = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
        if blocked.shape != (b, q, k):
            raise InterpError("the blocked query -> key pairs do not fit the pass",
                              expected=f"a bool tensor [batch, query, key] = {[b, q, k]}",
                              seen=str(list(blocked.shape)), fix="build the pairs for the same inputs")
        low = torch.finfo(query.dtype).min
        full = torch.zeros(b, 1, q, k, dtype=query.dtype, device=query.device) if mask is None else \
            mask[:, :, :, :k].to(query.dtype)
        full = full.expand(b, heads, q, k).clone()
        pairs = blocked.to(query.device)
        visible = full[:, h] > low / 2
        if bool(((visible & ~pairs).sum(-1) == 0)[visible.any(-1)].any()):
            raise InterpError(f"blocking leaves a query of head {h} with no key to attend to",
                              expected="at least one visible key per query after blocking",
                              seen="a query whose every visible key is blocked",
                              fix="block fewer keys (the current token, or BOS, is usually kept)")
        full[:, h] = full[:, h].masked_fill(pairs, low)
        state["used"] = state.get("used", 0) + 1
        return base(module, query, key, value, full, **kw)

    return edit


def patched_pattern(h: int, pattern: torch.Tensor, state: dict[str, int]) -> Callable[..., Any]:
    """An attention edit giving head ``h`` the attention pattern ``pattern`` (``[b, q, k]``, rows summing to 1,
    e.g. its pattern on another input): its output becomes ``pattern @ values``; every other head is as it was."""

    def edit(base: Any, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
             **kw: Any) -> Any:
        b, q, k = query.shape[0], query.shape[2], key.shape[2]
        if pattern.shape != (b, q, k):
            raise InterpError("the patched attention pattern does not fit the pass",
                              expected=f"[batch, query, key] = {[b, q, k]}", seen=str(list(pattern.shape)),
                              fix="take the pattern from inputs of the same shape")
        out, weights = base(module, query, key, value, mask, **kw)
        group = h // (query.shape[1] // key.shape[1])
        p = pattern.to(device=value.device, dtype=value.dtype)
        out = out.clone()
        out[:, :, h] = (p @ value[:, group]).to(out.dtype)
        if weights is not None:
            weights = weights.clone()
            weights[:, h] = p.to(weights.dtype)
        state["used"] = state.get("used", 0) + 1
        return out, weights

    return edit


def leaf_attention(store: dict[str, torch.Tensor]) -> Callable[..., Any]:
    """An attention edit for a gradient pass: the module's query, key and value become leaves (kept in ``store``)
    so the backward pass gives the metric's gradient with respect to each head's q, k and v."""

    def edit(base: Any, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
             **kw: Any) -> Any:
        q, k, v = (x.detach().requires_grad_(True) for x in (query, key, value))
        store.update(q=q, k=k, v=v)
        return base(module, q, k, v, mask, **kw)

    return edit


class ReceiverInputs:
    """What a layer's attention reads in one pass (its residual-stream input and call arguments), so that its
    queries, keys and values can be recomputed from ``norm(resid + delta)`` for any ``delta``."""

    def __init__(self, subject: Subject, layer: int) -> None:
        self.subject, self.layer = subject, layer
        self.norm = subject.adapter.norm(layer, "attn")
        self.attention = subject.adapter.attention(layer)
        self.resid: torch.Tensor | None = None
        self.call: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def hooks(self) -> list[Any]:
        def resid(module: Any, args: tuple[Any, ...]) -> None:
            self.resid = args[0].detach()

        def call(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.call = (args, kwargs)

        return [self.norm.register_forward_pre_hook(resid),
                self.attention.register_forward_pre_hook(call, with_kwargs=True)]

    def qkv(self, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layer's query, key and value (as its attention function receives them) from ``resid + delta``."""
        if self.resid is None or self.call is None:
            raise InterpError(f"layer {self.layer}'s attention inputs were not read", expected="a pass first",
                              seen="none", fix="install hooks() and run a pass")
        args, kwargs = self.call
        got: dict[str, torch.Tensor] = {}

        def record(base: Any, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
                   **kw: Any) -> Any:
            got.update(q=query, k=key, v=value)
            return base(module, query, key, value, mask, **kw)

        with torch.no_grad(), attention_edits(self.subject, {self.attention: record}):
            x = submodule(self.norm, self.resid + delta.to(self.resid.dtype))
            kw = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            if args:
                submodule(self.attention, x, *args[1:], **kw)
            else:
                submodule(self.attention, **{**kw, "hidden_states": x})
        return got
