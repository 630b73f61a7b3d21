"""Paths: one component's contribution to one input of a later component (path patching, Wang et al. 2022;
Goldowsky-Dill et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InterpError
from .sites import Site

VIA = ("q", "k", "v")
SENDERS = ("head", "attn", "mlp")

#: the receiver of a path that ends at the output head: the final residual stream, read by the final norm
LOGITS = "logits"


@dataclass(frozen=True)
class Path:
    """The edge ``sender -> receiver``: the sender's output as it enters the receiver's input directly, through
    the residual stream, and nowhere else.

    Attributes:
        sender: a head, attention block or MLP (its positions, if restricted, are the positions whose
            contribution is replaced).
        receiver: a head (read through its query, key or value input, ``via``), an MLP, or ``"logits"`` (the
            final norm and output head). A receiver restricted to positions receives the replaced contribution
            only there (for ``via="k"`` / ``"v"`` these are key positions).
        via: ``"q"``, ``"k"`` or ``"v"`` for a head receiver; ``None`` otherwise.
    """

    sender: Site
    receiver: Site | str
    via: str | None = None

    @property
    def receiver_site(self) -> Site | None:
        return None if isinstance(self.receiver, str) else self.receiver

    def __str__(self) -> str:
        via = f" ({self.via})" if self.via else ""
        return f"{self.sender} -> {self.receiver}{via}"


def path(sender: Site, receiver: Site | str, via: str | None = None) -> Path:
    """The path from ``sender`` to ``receiver`` (see :class:`Path`), checked for whether it can exist: a
    receiver reads the residual stream after the sender writes to it."""
    if not isinstance(sender, Site) or sender.kind not in SENDERS:
        raise InterpError("a path's sender must be a head, attn or mlp site", expected="e.g. pi.head(0, 1)",
                          seen=repr(sender)[:80], fix="send from pi.head(l, h), pi.attn(l) or pi.mlp(l)")
    if isinstance(receiver, str):
        if receiver != LOGITS:
            raise InterpError("a path's receiver must be a site or 'logits'", expected="pi.head(l, h), pi.mlp(l) "
                              "or 'logits'", seen=repr(receiver), fix="pass receiver='logits' or a site")
        if via is not None:
            raise InterpError("via= applies to head receivers only", expected="via=None for 'logits'",
                              seen=repr(via), fix="drop via=")
        return Path(sender, receiver, None)
    if not isinstance(receiver, Site) or receiver.kind not in ("head", "mlp"):
        raise InterpError("a path's receiver must be a head, an mlp or 'logits'",
                          expected="pi.head(l, h) with via='q'|'k'|'v', pi.mlp(l), or 'logits'",
                          seen=repr(receiver)[:80], fix="pick a receiver that reads the residual stream")
    if receiver.kind == "head":
        if via not in VIA:
            raise InterpError(f"a path into {receiver} needs via='q', 'k' or 'v'",
                              expected="the head input the sender reaches: its query, key or value",
                              seen=f"via={via!r}", fix="e.g. pi.path(pi.head(0, 1), pi.head(1, 0), via='k')")
        if receiver.layer <= sender.layer:
            raise InterpError(f"{sender} cannot compose with {receiver}",
                              expected="a receiver head in a later layer than the sender",
                              seen=f"sender layer {sender.layer}, receiver layer {receiver.layer}",
                              fix="a head reads only what earlier layers wrote")
    else:
        if via is not None:
            raise InterpError(f"via={via!r} given for the MLP receiver {receiver}",
                              expected="via only for a head receiver (q, k or v)", seen=f"via={via!r}",
                              fix="drop via= for an MLP receiver")
        if receiver.layer < sender.layer or (receiver.layer == sender.layer and sender.kind == "mlp"):
            raise InterpError(f"{sender} cannot reach {receiver}",
                              expected="an MLP receiver after the sender (same layer only for an attention sender)",
                              seen=f"sender {sender.kind} layer {sender.layer}, receiver mlp layer {receiver.layer}",
                              fix="pick a later receiver")
    if receiver.kind == "head" and receiver.index is None:  # pragma: no cover - pi.head always sets it
        raise InterpError("a head receiver needs a head index")
    return Path(sender, receiver, via)
