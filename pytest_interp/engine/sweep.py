"""The sweep engine: many single-site interventions, computing only what each one can change.

For an intervention at layer l, blocks below l see exactly the clean inputs, so their outputs are taken from one
clean pass instead of being recomputed (the blocks' forward is replaced, for that pass, by a function returning
the cached output). In a causal model an intervention at position p cannot change positions before p at any
layer: the pass starts at p, reading the earlier positions' keys and values from the clean run's cache. Sites
of the same layer and position are packed into one forward pass: the batch is repeated once per site and each
site's hook edits only its own copy, which is where accelerators gain most. An edit that would leave its
activation bit-for-bit as it is in the clean pass (patching a position before the first token where the two
runs differ, or at layer 0 where only the embeddings of the changed tokens differ) is not run: its run is the
clean run.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..core.settings import settings
from ..core.sites import Mask, Site
from ..model.checks import position_mask
from ..model.subject import Subject
from .hooks import Edit, apply, hooks, install
from .runner import (ScoreFn, run, bind_lengths, check_edits, chunks, finite, forward, head_logits, logits_of,
                     output_kwargs)


@dataclass
class Work:
    """Layer x token evaluations run, against one full forward pass per site."""

    run: int = 0
    naive: int = 0

    @property
    def fraction(self) -> float:
        return self.run / self.naive if self.naive else 1.0


class Progress:
    """A one-line progress bar on a terminal, shown once a sweep has run for 2 s; silent when stderr is not a
    terminal (pytest's capture, CI logs) or CI is set."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.done, self.label = total, 0, label
        self.stream = sys.stderr
        self.enabled = self.stream.isatty() and not os.environ.get("CI")
        self.start, self.clock, self.shown = time.monotonic(), time.monotonic, False

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and (self.shown or self.clock() - self.start > 2.0):
            self.shown = True
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def start_layer(edit: Edit, n_layers: int) -> int:
    """The first block whose computation the edit can change."""
    return min(edit.site.layer, n_layers)


def start_position(edit: Edit, seq: int) -> int:
    """In a causal model, the first position whose computation the edit can change in any example (0 when it
    covers all)."""
    pos = edit.site.positions
    if edit.site.kind in ("expert", "router") or pos is None or isinstance(pos, Mask):
        return 0
    batch = 1 if edit.lengths is None else len(edit.lengths)
    mask = position_mask(edit.site, torch.arange(batch), batch, seq, "cpu", edit.lengths)
    return 0 if mask is None else int(mask.any(0).nonzero()[0])


def _capture_blocks(subject: Subject, chunk: torch.Tensor, keep_cache: bool, head: dict[str, Any],
                    sites: list[Site], kind: str) -> tuple[list[Any], torch.Tensor, Any, dict[Site, torch.Tensor]]:
    """One clean pass: every block's output object, the logits, (``keep_cache``) the key/value cache, and the
    activations at ``sites``."""
    outs: list[Any] = [None] * subject.n_layers
    acts: dict[Site, torch.Tensor] = {}
    handles = [subject.adapter.block(i).register_forward_hook(
        lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in range(subject.n_layers)]
    try:
        for s in sites:
            def read(act: Any, s: Site = s) -> None:
                acts[s] = act.detach().clone()
            handles.append(install(subject, s, read))
    except Exception:
        for h in handles:
            h.remove()
        raise
    with hooks(handles):
        head = {**head, **output_kwargs(subject, kind)}
        out = forward(subject, chunk, use_cache=True, **head) if keep_cache else forward(subject, chunk, **head)
        logits = finite(logits_of(out, kind), "clean run")
    return outs, logits, _plain_cache(getattr(out, "past_key_values", None)) if keep_cache else None, acts


def _skippable(edit: Edit, act: torch.Tensor | None, rows: torch.Tensor, batch: int, unread: bool) -> bool:
    """Whether ``edit``'s run is the clean run as far as the metric can see: the edit leaves the clean activation
    ``act`` exactly as it is (e.g. patching a position before the first one where clean and corrupt inputs
    differ), or (``unread``) it changes only positions the metric does not read, nor (causal) anything before
    them."""
    if not edit.pure or act is None or (edit.must_change and not unread):
        return False  # an ablation that changes nothing is an error the no-op guard reports, not a skip
    fired, changed = edit.fired, edit.changed
    if torch.equal(apply(edit, act, rows, batch), act) or unread:
        return True  # the site's hook fired (in the clean pass) on the activation it would see
    edit.fired, edit.changed = fired, changed  # the edit runs: its own hook must fire and change it
    return False


def _unread(reads: tuple[int, int] | None, p: int) -> bool:
    """Whether a pass starting at position ``p`` (causal prefix reuse) changes no position the metric reads."""
    return bool(p) and reads is not None and reads[1] <= p


def _plain_cache(cache: Any) -> Any:
    """The cache if every layer is a plain (full-attention) key/value layer whose prefix can be reused."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if not isinstance(cache, DynamicCache) or not cache.layers:
        return None
    if any(type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None for layer in cache.layers):
        return None
    return cache


def _prefix_cache(cache: Any, p: int, k: int) -> Any:
    """A fresh cache holding the first ``p`` positions of ``cache``, its batch repeated ``k`` times."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache(ddp_cache_data=[(lay.keys[:, :, :p].repeat(k, 1, 1, 1), lay.values[:, :, :p].repeat(k, 1, 1, 1))
                                        for lay in cache.layers])


def _repeat(output: Any, k: int, p: int = 0) -> Any:
    if isinstance(output, torch.Tensor):
        return output[:, p:].repeat(k, *([1] * (output.dim() - 1)))
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor) and \
            all(x is None for x in output[1:]):
        return (_repeat(output[0], k, p), *output[1:])
    return None  # an output we cannot replay: recompute the block


@contextmanager
def _replay(subject: Subject, outputs: list[Any], below: int, k: int, p: int = 0) -> Iterator[None]:
    """Blocks < ``below`` return their cached clean outputs (positions >= ``p``, repeated ``k`` times) instead of
    computing."""
    saved = []
    try:
        for i in range(below):
            replay = _repeat(outputs[i], k, p)
            if replay is None:
                continue
            block = subject.adapter.block(i)
            saved.append((block, block.__dict__.get("forward")))
            block.forward = lambda *a, _r=replay, **kw: _r
        yield
    finally:
        for block, original in saved:
            if original is None:
                del block.forward
            else:
                block.forward = original


_SPLITS: weakref.WeakKeyDictionary[Any, tuple[Any, Any] | None] = weakref.WeakKeyDictionary()


def _head_split(subject: Subject) -> tuple[Any, Any] | None:
    """``(base model, output head)`` when the model's logits are exactly its head applied to its base model's
    output (checked once per model on a short input; models that scale or cap their logits afterwards fail the
    check), else None."""
    model = subject.model
    if model in _SPLITS:
        return _SPLITS[model]
    found: tuple[Any, Any] | None = None
    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if subject.head_kwargs(_Reads()) and base is not None and base is not model and head is not None:
        seen: list[torch.Tensor] = []
        handle = base.register_forward_hook(lambda m, a, o: seen.append(_hidden(o)))
        x = torch.arange(min(4, subject.vocab_size), device=subject.device)[None]
        with hooks([handle]):
            full = logits_of(forward(subject, x))
        mine = head_logits(head, seen[0]) if seen else None
        if mine is not None and mine.shape == full.shape and torch.allclose(mine.float(), full.float(), rtol=1e-4,
                                                                          atol=1e-4):
            found = (base, head)
    _SPLITS[model] = found
    return found


class _Reads:
    """A stand-in metric reading one position, to ask whether the model can skip its head elsewhere."""

    reads, seq = (0, 1), 1


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.last_hidden_state


class _LateHead:
    """A packed pass's logits, one slot (b rows) at a time: the model runs its head on one position only, and
    the head is applied here to each slot's final hidden states, so full-vocabulary logits are never held for
    more rows than one chunk. Falls back to the model's own logits when the split is not exact."""

    def __init__(self, subject: Subject, kind: str) -> None:
        self.split = _head_split(subject) if kind == "logits" and subject.causal else None
        self.hidden: torch.Tensor | None = None
        self.group: tuple[int, int, Any, torch.Tensor] | None = None
        weights = sum(p.numel() * p.element_size() for p in subject.model.parameters()) if self.split else 0
        self.budget = max(LOGITS_BUDGET, weights // 8)

    @contextmanager
    def capture(self) -> Iterator[None]:
        if self.split is None:
            yield
            return
        handle = self.split[0].register_forward_hook(lambda m, a, o: setattr(self, "hidden", _hidden(o)))
        with hooks([handle]):
            yield

    def kwargs(self, head: dict[str, Any]) -> dict[str, Any]:
        return {"logits_to_keep": 1} if self.split is not None else head

    def logits(self, out: Any, kind: str, head: dict[str, Any], lo: int, hi: int) -> torch.Tensor:
        """Rows ``[lo, hi)`` (one slot) of the pass's logits. The head runs on as many slots at once as fit in
        :data:`LOGITS_BUDGET` or an eighth of the weights' size, whichever is larger (one big product is faster
        than several small ones), and at least one."""
        if self.split is None or self.hidden is None:
            return logits_of(out, kind)[lo:hi]
        if self.group is None or not self.group[0] <= lo < hi <= self.group[1] or self.group[2] is not out:
            h = self.hidden
            keep = head.get("logits_to_keep")
            if isinstance(keep, int) and keep > 0:
                h = h[:, -keep:]
            elif isinstance(keep, torch.Tensor):
                h = h[:, keep]
            per_row = h.shape[1] * self.split[1].weight.shape[0] * 4
            rows = max(hi - lo, (self.budget // max(per_row, 1)) // (hi - lo) * (hi - lo))
            end = min(lo + rows, h.shape[0])
            self.group = (lo, end, out, head_logits(self.split[1], h[lo:end]))
        start, _, _, logits = self.group
        return logits[lo - start:hi - start]


#: the least bytes of full-vocabulary logits a sweep computes at once (see ``_LateHead.logits``)
LOGITS_BUDGET = 64 * 2**20


def run_sites(subject: Subject, tokens: torch.Tensor, edits: list[Edit], score: ScoreFn, *, needs_clean: bool,
              pack: int | None = None, reuse_prefix: bool = True) -> tuple[list[torch.Tensor], Work]:
    """Scores of each single-site edit in ``edits`` (one list entry per edit), and the work done.

    An edit at layer l and position p (causal models) runs only blocks >= l on positions >= p: blocks below l
    return their clean outputs, and positions before p come from the clean run's key/value cache and logits.
    The LM head runs only at the positions the metric reads. A pure edit that leaves the clean activation
    exactly as it is (patching where the two runs agree), or changes only positions after every one the metric
    reads, is not run at all: its scores are the clean run's.
    """
    n_layers = subject.n_layers
    batch, seq = tokens.shape
    work = Work(naive=len(edits) * n_layers * batch * seq)
    if getattr(score, "output", "logits") == "generation" or subject.encoder_decoder:
        # every step of every edit's text is its own run; an encoder-decoder model runs whole (its decoder's blocks
        # read the encoder's output, so neither stack's blocks can be replayed from a clean pass alone)
        return [run(subject, tokens, [e], score, needs_clean=needs_clean) for e in edits], \
            Work(run=work.naive, naive=work.naive)
    parts: list[list[torch.Tensor]] = [[] for _ in edits]
    # prefix reuse splices clean logits before a site's position: not for one output per example (classifiers)
    causal = bool(subject.adapter.causal) and reuse_prefix and not getattr(score, "pooled", False)
    bind_lengths(edits, tokens)
    starts = [(start_layer(e, n_layers) if reuse_prefix else 0, start_position(e, seq) if causal else 0)
              for e in edits]
    order = sorted(range(len(edits)), key=lambda i: starts[i])
    head = subject.head_kwargs(score)  # the LM head only where the metric reads
    kind = getattr(score, "output", "logits")
    reads = getattr(score, "reads", None)
    r_lo = reads[0] if head and reads is not None else 0  # the clean logits cover positions [r_lo, ...)
    progress = Progress(len(edits) * len(range(0, batch, settings().batch_size)), "pytest-interp sweep")
    late = _LateHead(subject, kind)
    for rows in chunks(batch):
        chunk = tokens[rows.to(tokens.device)]
        b = chunk.shape[0]
        k_max = pack or max(1, settings().batch_size // b)
        # clean activations, kept only for the edits that may be skipped: patches (which may change nothing)
        # and edits after every position the metric reads
        check = list(dict.fromkeys(edits[i].site.unrestricted for i in order if edits[i].pure and (
            not edits[i].must_change or _unread(reads, starts[i][1]))))
        outputs, clean_logits, cache, acts = _capture_blocks(subject, chunk, any(p for _, p in starts), head,
                                                             check, kind)
        dev_rows = rows.to(tokens.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i in order:
            layer, p = starts[i]
            p = p if cache is not None else 0
            if _skippable(edits[i], acts.get(edits[i].site.unrestricted), rows, batch, _unread(reads, p)):
                # an edit that changes nothing the metric reads: its run is the clean run
                parts[i].append(score(clean_logits, dev_rows, clean_logits if needs_clean else None).detach())
                progress.step()
                continue
            groups.setdefault((layer, p), []).append(i)
        for (layer, p), members in groups.items():
            for j in range(0, len(members), k_max):
                pack_ids = members[j:j + k_max]
                k = len(pack_ids)
                handles = []
                try:
                    for slot, i in enumerate(pack_ids):
                        e = edits[i]
                        lo, hi = slot * b, (slot + 1) * b

                        def transform(act: Any, e: Edit = e, lo: int = lo, hi: int = hi, rows: torch.Tensor = rows,
                                      p: int = p) -> Any:
                            new = act.clone()
                            part = act[lo:hi]
                            if p:  # the edit sees full-length activations; positions < p are not in this pass
                                part = torch.cat([part.new_zeros(part.shape[0], p, *part.shape[2:]), part], 1)
                                new[lo:hi] = apply(e, part, rows, batch)[:, p:]
                            else:
                                new[lo:hi] = apply(e, part, rows, batch)
                            return new

                        handles.append(install(subject, e.site, transform))
                except Exception:
                    for h in handles:
                        h.remove()
                    raise
                hk = subject.head_kwargs(score, start=p) if p else head
                with hooks(handles), _replay(subject, outputs, layer, k, p), late.capture():
                    if p:
                        positions = torch.arange(p, seq, device=chunk.device)[None].expand(k * b, -1)
                        out = forward(subject, chunk[:, p:].repeat(k, 1), past_key_values=_prefix_cache(cache, p, k),
                                      position_ids=positions, use_cache=True, **late.kwargs(hk),
                                      **output_kwargs(subject, kind))
                    else:
                        out = forward(subject, chunk.repeat(k, 1), **late.kwargs(hk), **output_kwargs(subject, kind))
                work.run += k * (n_layers - layer) * b * (seq - p)
                for slot, i in enumerate(pack_ids):
                    if p and _unread(reads, p):  # the metric reads only positions before p: all clean
                        part = clean_logits
                    else:  # positions [max(r_lo, p), ...); with p > r_lo, the earlier ones are the clean run's
                        part = late.logits(out, kind, hk, slot * b, (slot + 1) * b)
                        if p > r_lo:
                            part = torch.cat([clean_logits[:, :p - r_lo], part], 1)
                    part = finite(part, "intervened run")
                    parts[i].append(score(part, dev_rows, clean_logits if needs_clean else None).detach())
                del out
                progress.step(k)
    progress.close()
    check_edits(edits)
    return [torch.cat(p) for p in parts], work
