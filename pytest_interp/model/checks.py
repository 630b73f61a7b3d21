"""Site checks: whether a site exists in a subject, and which token positions it covers in a batch."""

from __future__ import annotations

from typing import Any

import torch

from ..core.batch import lengths as real_lengths
from ..core.batch import ragged
from ..core.errors import InterpError
from ..core.sites import Mask, Site, Slice
from .subject import Subject


def check_layer(subject: Subject, layer: int, *, allow_final: bool = False, stack: str | None = None) -> None:
    """Raise InterpError unless ``layer`` is a layer of ``subject`` (or, with ``allow_final``, the final stream);
    of its decoder for ``stack="decoder"``."""
    n = subject.n_decoder_layers if stack == "decoder" else subject.n_layers
    top = n + (1 if allow_final else 0)
    if not 0 <= layer < top:
        where = f"{stack} of a" if stack else "a"
        raise InterpError(f"layer {layer} is out of range", expected=f"a layer in 0..{top - 1}",
                          seen=f"layer {layer} on {where} {n}-layer model",
                          fix="count layers from 0" + (f"; resid({n}) is the final stream"
                                                       if allow_final else ""))


def check_site(subject: Subject, site: Site, tokens: torch.Tensor) -> None:
    """Raise InterpError if ``site`` does not exist in ``subject`` or its positions miss ``tokens``."""
    if site.kind == "feature":
        from .sae import check_feature_site

        check_site(subject, site.host_site, tokens)
        check_feature_site(subject, site)
    check_stack(subject, site)
    check_layer(subject, site.layer, allow_final=site.kind == "resid" or (site.host is not None and
                                                                         site.host.kind == "resid"),
                stack=site.host_site.stack)
    if site.kind in ("head", "cross_head") and not 0 <= site.number < subject.n_heads:
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
    if site.decoder_side:  # positions of the decoder's input, the same for every example
        dec = subject.decoder_tokens(tokens)
        position_mask(site, torch.arange(dec.shape[0]), dec.shape[0], dec.shape[1], dec.device)
        return
    position_mask(site, torch.arange(tokens.shape[0]), tokens.shape[0], tokens.shape[1], tokens.device,
                  batch_lengths(tokens))


def check_stack(subject: Subject, site: Site) -> None:
    """An encoder-decoder model's sites name their stack; other models' sites name none and have no
    cross-attention."""
    host = site.host_site
    if subject.encoder_decoder:
        if host.stack is None and host.kind in ("head", "attn", "mlp", "resid"):
            raise InterpError(f"{host} does not say which stack of this encoder-decoder model it is in",
                              expected="stack='encoder' or stack='decoder' on head, attn, mlp and resid sites",
                              seen=f"{subject.adapter_spec.name}: {subject.n_layers} encoder and "
                                   f"{subject.n_decoder_layers} decoder layers",
                              fix=f"e.g. pi.{host.kind}({host.layer}{'' if host.index is None else f', {host.index}'}"
                                  f", stack='encoder'); the decoder's cross-attention is pi.cross_head / "
                                  "pi.cross_attn")
        if host.kind in ("expert", "router"):
            raise InterpError(f"{host}: experts of encoder-decoder models are not supported",
                              expected="a decoder-only mixture-of-experts model", seen=subject.adapter_spec.name,
                              fix="intervene on pi.mlp(l, stack=...) instead")
        return
    if host.kind in ("cross_head", "cross_attn"):
        raise InterpError(f"{host} is a cross-attention site, and this model has no cross-attention",
                          expected="an encoder-decoder model (T5, BART), whose decoder reads the encoder",
                          seen=f"a {'decoder-only' if subject.causal else 'encoder-only'} "
                               f"{subject.adapter_spec.name} model",
                          fix="use pi.head(l, h) / pi.attn(l) for its self-attention")
    if host.stack is not None:
        raise InterpError(f"{host} names the {host.stack} stack, and this model has one stack",
                          expected="stack= only on an encoder-decoder model's sites",
                          seen=f"a {subject.adapter_spec.name} model", fix="drop stack=")


def batch_lengths(tokens: torch.Tensor) -> torch.Tensor | None:
    """Each example's real length when the batch is ragged (right-padded), else None."""
    return real_lengths(tokens).cpu() if ragged(tokens) else None


def position_mask(site: Site, rows: torch.Tensor, batch: int, seq: int, device: Any,
                  lengths: torch.Tensor | None = None) -> torch.Tensor | None:
    """A bool mask [rows or 1, seq] of the positions ``site`` covers, or None for all positions.

    With ``lengths`` (a ragged batch: each example's real length), negative positions and slices count from
    each example's own end, and a position past an example's end is an error."""
    pos = site.positions
    if pos is None:
        return None
    if isinstance(pos, Mask):
        if pos.shape != (batch, seq):
            raise InterpError(f"the position mask of {site} has the wrong shape",
                              expected=f"[batch, seq] = {[batch, seq]}", seen=str(list(pos.shape)),
                              fix="build the mask for the same inputs")
        full = torch.tensor(pos.rows, dtype=torch.bool)
        if lengths is not None:
            pad = torch.arange(seq)[None] >= lengths[:, None]
            if bool((full & pad).any()):
                ex = int((full & pad).any(1).nonzero()[0])
                raise InterpError(f"the position mask of {site} selects padding",
                                  expected="True only at real tokens",
                                  seen=f"example {ex} ({int(lengths[ex])} tokens) selected past its end",
                                  fix="build the mask from the real tokens (pi.real(tokens) is the padding mask)")
        m = full.to(device)[rows.to(device)]
        if not bool(m.any()) and len(rows) == batch:
            raise InterpError(f"the position mask of {site} selects no position", expected="some True entries",
                              seen="an all-False mask", fix="select at least one position")
        return m
    if lengths is None:
        return _mask_of(site, pos, seq, seq).to(device)[None]
    sel = lengths.cpu()[rows.cpu()]
    out = torch.zeros(len(rows), seq, dtype=torch.bool)
    for n in sel.unique().tolist():
        out[sel == n, :n] = _mask_of(site, pos, int(n), seq, ragged=True)[:n]
    return out.to(device)


def _mask_of(site: Site, pos: Any, n: int, seq: int, ragged: bool = False) -> torch.Tensor:
    """The positions ``pos`` of one example of ``n`` real tokens, as a mask of ``seq`` columns."""
    m = torch.zeros(seq, dtype=torch.bool)
    where = f"an example of {n} tokens" if ragged else f"inputs of {n} tokens"
    if isinstance(pos, Slice):
        m[:n][slice(pos.start, pos.stop, pos.step)] = True
        if not bool(m.any()):
            raise InterpError(f"the positions of {site} select nothing", expected=f"positions within 0..{n - 1}",
                              seen=f"slice {pos} of {where}", fix="fix the slice bounds")
        return m
    idx = (pos,) if isinstance(pos, int) else pos
    bad = [p for p in idx if not -n <= p < n]
    if bad:
        raise InterpError(f"position {bad[0]} of {site} is out of range" + (" (past an example's end)" if ragged
                                                                           else ""),
                          expected=f"positions in -{n}..{n - 1}", seen=where,
                          fix="pick positions inside every example (negative positions count from each "
                              "example's end: pi.last is its last token)")
    m[[p % n for p in idx]] = True
    return m


def as_subject(subject: Any) -> Subject:
    """``subject`` if it is a :class:`Subject`, else an InterpError saying how to make one."""
    if not isinstance(subject, Subject):
        raise InterpError("the first argument is not a Subject", expected="pi.load(path_or_model)",
                          seen=type(subject).__name__, fix="wrap the model with pi.load(...) first "
                          "(or use the `subject` fixture)")
    return subject


def one_stack(subject: Subject, what: str) -> None:
    """An InterpError when ``subject`` is an encoder-decoder model and ``what`` is a method defined for models with
    one stack (a causal LM or an encoder)."""
    if subject.encoder_decoder:
        raise InterpError(f"{what} is not supported for encoder-decoder models",
                          expected="a decoder-only or encoder-only model",
                          seen=f"{subject.class_name} (an encoder and a decoder that reads it)",
                          fix="on encoder-decoder models use pi.ablate, pi.patch, pi.sweep and pi.patch_sweep at "
                              "sites with stack= or pi.cross_head / pi.cross_attn, the prompt-segment experiments "
                              "and claims, pi.provenance, pi.explain.attention and leave-one-token-out")
