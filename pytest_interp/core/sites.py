"""Sites: named places in a model where an intervention acts (heads, blocks, the residual stream, experts)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

from .errors import InterpError

KINDS = ("head", "attn", "mlp", "resid", "expert", "router", "feature", "cross_head", "cross_attn")
#: the stacks of an encoder-decoder model a site can name
STACKS = ("encoder", "decoder")


@dataclass(frozen=True)
class Slice:
    """A hashable stand-in for a ``slice`` of token positions."""

    start: int | None
    stop: int | None
    step: int | None

    def __str__(self) -> str:
        s = f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        return s if self.step in (None, 1) else f"{s}:{self.step}"


@dataclass(frozen=True)
class Mask:
    """A hashable boolean mask ``[batch, seq]`` of token positions."""

    rows: tuple[tuple[bool, ...], ...]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), len(self.rows[0]) if self.rows else 0)

    def __str__(self) -> str:
        b, t = self.shape
        return f"mask[{b}x{t}]"


Positions = int | tuple[int, ...] | Slice | Mask | None


def _normalise_positions(positions: Any) -> Positions:
    if positions is None:
        return None
    if isinstance(positions, bool):
        raise InterpError("site.at() got a bool", expected="an int, a list of ints, a slice or a bool mask "
                          "[batch, seq]", seen=repr(positions), fix="pass the token position(s), e.g. .at(-1)")
    if isinstance(positions, int):
        return positions
    if isinstance(positions, slice):
        return Slice(positions.start, positions.stop, positions.step)
    if hasattr(positions, "tolist"):  # torch / numpy
        positions = positions.tolist()
    if isinstance(positions, (list, tuple)):
        if positions and all(isinstance(p, (list, tuple)) for p in positions):
            rows = tuple(tuple(bool(x) for x in row) for row in positions)
            if len({len(r) for r in rows}) != 1:
                raise InterpError("position mask rows have different lengths", expected="a [batch, seq] mask",
                                  seen=f"row lengths {sorted({len(r) for r in rows})}",
                                  fix="pass a rectangular bool tensor")
            return Mask(rows)
        if not positions:
            raise InterpError("site.at() got no positions", expected="at least one token position",
                              seen="an empty list", fix="pass the positions to intervene on, or drop .at()")
        if all(isinstance(p, bool) for p in positions):
            raise InterpError("site.at() got a 1-d bool mask", expected="a [batch, seq] bool mask, or ints",
                              seen=f"{len(positions)} bools", fix="use mask[None].expand(batch, -1) or indices")
        if not all(isinstance(p, int) for p in positions):
            raise InterpError("site.at() got positions that are not ints", expected="ints",
                              seen=repr(positions)[:80], fix="pass integer token positions")
        return tuple(positions)
    raise InterpError("site.at() got an unsupported position type",
                      expected="int, list of ints, slice, or bool mask [batch, seq]",
                      seen=type(positions).__name__, fix="convert the positions to one of the expected types")


#: the last real token of each example (``site.at(pi.last)``, ``metrics.logprob(answer, position=pi.last)``)
last = -1


@dataclass(frozen=True)
class Site:
    """A place in a model. Printed in paper notation: ``head 1.4``, ``mlp 5 @ -1``.

    Attributes:
        kind: one of ``head``, ``attn``, ``mlp``, ``resid``, ``expert``, ``router``.
        layer: the layer index.
        index: the head or expert index (``None`` for whole-layer sites); a single feature's index.
        positions: token positions the site is restricted to (``None``: all).
        host, sae, features: for SAE features (``sae.feature(i)``): the site the SAE reads, the SAE and the
            feature indices.
        stack: in an encoder-decoder model, ``"encoder"`` or ``"decoder"``: which stack the layer belongs to
            (cross-attention sites are the decoder's); ``None`` in a model with one stack.
    """

    kind: str
    layer: int
    index: int | None = None
    positions: Positions = None
    host: Site | None = None
    sae: Any = None
    features: tuple[int, ...] = ()
    stack: str | None = None

    @property
    def decoder_side(self) -> bool:
        """Whether the site's activations run over the decoder's positions (an encoder-decoder model's decoder)."""
        return self.host_site.stack == "decoder"

    def at(self, positions: Any) -> Site:
        """Restrict the site to token positions: an int, a list of ints, a slice, or a bool mask [batch, seq].

        Negative positions count from each example's own end: ``-1`` (:data:`last`) is every example's last
        real token, however long each is (ragged batches are right-padded)."""
        return replace(self, positions=_normalise_positions(positions))

    @property
    def number(self) -> int:
        """The head or expert index of a head or expert site."""
        if self.index is None:
            raise InterpError(f"{self} has no head or expert index", expected="a head or expert site",
                              seen=f"a {self.kind} site", fix="use pi.head(layer, h) or pi.expert(layer, e)")
        return self.index

    @property
    def host_site(self) -> Site:
        """The site an SAE feature lives in (the site itself for other kinds)."""
        return self.host if self.host is not None else self

    @property
    def unrestricted(self) -> Site:
        """The same site over all positions."""
        return replace(self, positions=None)

    def __str__(self) -> str:
        kind = self.kind.replace("_", " ")
        if self.stack is not None and not self.kind.startswith("cross"):
            kind = f"{self.stack} {kind}"
        name = f"{kind} {self.layer}" if self.index is None else f"{kind} {self.layer}.{self.index}"
        if self.kind == "feature":
            shown = ", ".join(map(str, self.features[:4])) + (", ..." if len(self.features) > 4 else "")
            name = f"{'feature' if len(self.features) == 1 else 'features'} {shown} ({self.host})"
        if self.positions is None:
            return name
        if isinstance(self.positions, tuple):
            return f"{name} @ [{', '.join(map(str, self.positions))}]"
        return f"{name} @ {self.positions}"

    def __repr__(self) -> str:
        return f"<Site {self}>"


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InterpError(f"{name} must be an int", expected="a non-negative int", seen=repr(value),
                          fix=f"pass {name} as an int, e.g. pi.head(1, 0)")
    if value < 0:
        raise InterpError(f"{name} is negative", expected="a non-negative int", seen=str(value),
                          fix=f"count {name}s from 0")
    return value


def _check_stack(stack: Any) -> str | None:
    if stack is not None and stack not in STACKS:
        raise InterpError(f"unknown stack {stack!r}", expected="'encoder' or 'decoder' (an encoder-decoder model's "
                          "stacks), or None for a model with one stack", seen=repr(stack),
                          fix="pass stack='encoder' or stack='decoder'")
    return stack


def head(layer: int, head: int, *, stack: str | None = None) -> Site:
    """The output of one attention head, at the input of the attention out-projection. In an encoder-decoder
    model name the stack: ``pi.head(1, 0, stack="encoder")`` (self-attention; see :func:`cross_head`)."""
    return Site("head", _check_int("layer", layer), _check_int("head", head), stack=_check_stack(stack))


def attn(layer: int, *, stack: str | None = None) -> Site:
    """The attention block's output (after the out-projection, before it joins the residual stream)."""
    return Site("attn", _check_int("layer", layer), stack=_check_stack(stack))


def mlp(layer: int, *, stack: str | None = None) -> Site:
    """The MLP (or MoE block) output, before it joins the residual stream."""
    return Site("mlp", _check_int("layer", layer), stack=_check_stack(stack))


def resid(layer: int, *, stack: str | None = None) -> Site:
    """The residual stream entering ``layer``; ``resid(n_layers)`` is the final stream (before any final norm)."""
    return Site("resid", _check_int("layer", layer), stack=_check_stack(stack))


def cross_head(layer: int, head: int) -> Site:
    """One cross-attention head of decoder block ``layer`` of an encoder-decoder model: its output, at the input
    of the cross-attention out-projection (the decoder reading the encoder)."""
    return Site("cross_head", _check_int("layer", layer), _check_int("head", head), stack="decoder")


def cross_attn(layer: int) -> Site:
    """The cross-attention block's output of decoder block ``layer`` (after its out-projection)."""
    return Site("cross_attn", _check_int("layer", layer), stack="decoder")


def expert(layer: int, e: int) -> Site:
    """One expert of a MoE layer."""
    return Site("expert", _check_int("layer", layer), _check_int("expert", e))


def router(layer: int) -> Site:
    """The router logits of a MoE layer."""
    return Site("router", _check_int("layer", layer))


def as_sites(sites: Site | Iterable[Site]) -> tuple[Site, ...]:
    """Normalise one site or an iterable of sites to a non-empty tuple, rejecting other objects."""
    if isinstance(sites, Site):
        return (sites,)
    if isinstance(sites, (str, bytes)) or not isinstance(sites, Iterable):
        raise InterpError("sites must be a Site or a list of Sites", expected="e.g. pi.head(1, 0) or "
                          "[pi.head(1, 0), pi.head(1, 2)]", seen=repr(sites)[:80],
                          fix="build sites with pi.head / pi.attn / pi.mlp / pi.resid / pi.expert / pi.router / "
                              "pi.cross_head / pi.cross_attn")
    out = tuple(sites)
    if not out:
        raise InterpError("no sites given", expected="at least one Site", seen="an empty collection",
                          fix="name the site(s) to intervene on")
    bad = [s for s in out if not isinstance(s, Site)]
    if bad:
        raise InterpError("sites must be Site objects", expected="pi.head(...), pi.mlp(...), ...",
                          seen=repr(bad[0])[:80], fix="build sites with the pi.* site constructors")
    if len(set(out)) != len(out):
        raise InterpError("the same site is named twice", expected="distinct sites",
                          seen=", ".join(map(str, out)), fix="remove the duplicate")
    return out


def describe(sites: tuple[Site, ...]) -> str:
    """Sites in paper notation, joined with '+'."""
    return " + ".join(map(str, sites))
