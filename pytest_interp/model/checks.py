"""Site checks: whether a site exists in a subject, and which token positions it covers in a batch."""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import InterpError
from ..core.sites import Mask, Site, Slice
from .subject import Subject


def check_layer(subject: Subject, layer: int, *, allow_final: bool = False) -> None:
    """Raise InterpError unless ``layer`` is a layer of ``subject`` (or, with ``allow_final``, the final stream)."""
    top = subject.n_layers + (1 if allow_final else 0)
    if not 0 <= layer < top:
        raise InterpError(f"layer {layer} is out of range", expected=f"a layer in 0..{top - 1}",
                          seen=f"layer {layer} on a {subject.n_layers}-layer model",
                          fix="count layers from 0" + (f"; resid({subject.n_layers}) is the final stream"
                                                       if allow_final else ""))


def check_site(subject: Subject, site: Site, tokens: torch.Tensor) -> None:
    """Raise InterpError if ``site`` does not exist in ``subject`` or its positions miss ``tokens``."""
    check_layer(subject, site.layer, allow_final=site.kind == "resid")
    if site.kind == "head" and not 0 <= site.number < subject.n_heads:
        raise InterpError(f"head {site.layer}.{site.index} is out of range",
                          expected=f"a head in 0..{subject.n_heads - 1}",
                          seen=f"head index {site.index} on a model with {subject.n_heads} heads per layer",
                          fix="count heads from 0")
    if site.kind in ("expert", "router"):
        n_exp = subject.adapter.n_experts
        subject.adapter.router(site.layer)
        if site.kind == "expert" and not 0 <= site.number < (n_exp or 0):
            raise InterpError(f"expert {site.layer}.{site.index} is out of range",
                              expected=f"an expert in 0..{(n_exp or 0) - 1}",
                              seen=f"expert index {site.index} on a model with {n_exp} experts per layer",
                              fix="count experts from 0")
    position_mask(site, torch.arange(tokens.shape[0]), tokens.shape[0], tokens.shape[1], tokens.device)


def position_mask(site: Site, rows: torch.Tensor, batch: int, seq: int, device: Any) -> torch.Tensor | None:
    """A bool mask [rows or 1, seq] of the positions ``site`` covers, or None for all positions."""
    pos = site.positions
    if pos is None:
        return None
    if isinstance(pos, Mask):
        if pos.shape != (batch, seq):
            raise InterpError(f"the position mask of {site} has the wrong shape",
                              expected=f"[batch, seq] = {[batch, seq]}", seen=str(list(pos.shape)),
                              fix="build the mask for the same inputs")
        m = torch.tensor(pos.rows, dtype=torch.bool, device=device)[rows.to(device)]
        if not bool(m.any()) and len(rows) == batch:
            raise InterpError(f"the position mask of {site} selects no position", expected="some True entries",
                              seen="an all-False mask", fix="select at least one position")
        return m
    m = torch.zeros(seq, dtype=torch.bool, device=device)
    if isinstance(pos, Slice):
        m[slice(pos.start, pos.stop, pos.step)] = True
        if not bool(m.any()):
            raise InterpError(f"the positions of {site} select nothing", expected=f"positions within 0..{seq - 1}",
                              seen=f"slice {pos} of {seq} tokens", fix="fix the slice bounds")
        return m[None]
    idx = (pos,) if isinstance(pos, int) else pos
    bad = [p for p in idx if not -seq <= p < seq]
    if bad:
        raise InterpError(f"position {bad[0]} of {site} is out of range",
                          expected=f"positions in -{seq}..{seq - 1}", seen=f"inputs of {seq} tokens",
                          fix="pick positions inside the sequence")
    m[list(idx)] = True
    return m[None]


def as_subject(subject: Any) -> Subject:
    """``subject`` if it is a :class:`Subject`, else an InterpError saying how to make one."""
    if not isinstance(subject, Subject):
        raise InterpError("the first argument is not a Subject", expected="pi.load(path_or_model)",
                          seen=type(subject).__name__, fix="wrap the model with pi.load(...) first "
                          "(or use the `subject` fixture)")
    return subject
