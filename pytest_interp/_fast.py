"""The sweep engine: many single-site interventions, computing only what each one can change.

For an intervention at layer l, blocks below l see exactly the clean inputs, so their outputs are taken from one
clean pass instead of being recomputed (the blocks' forward is replaced, for that pass, by a function returning
the cached output). Sites of the same layer are packed into one forward pass: the batch is repeated once per
site and each site's hook edits only its own copy, which is where accelerators gain most.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ._runner import Edit, ScoreFn, _apply, _chunks, _finite, _hooks, _install, _logits, check_edits
from ._settings import settings


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
        import os
        import sys
        import time

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


def _capture_blocks(subject: Any, chunk: torch.Tensor) -> tuple[list[Any], torch.Tensor]:
    """One clean pass: every block's output object, and the logits."""
    outs: list[Any] = [None] * subject.n_layers
    handles = [subject.adapter.block(i).register_forward_hook(
        lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in range(subject.n_layers)]
    with _hooks(subject, handles):
        logits = _finite(_logits(subject.forward(chunk)), "clean run")
    return outs, logits


def _repeat(output: Any, k: int) -> Any:
    if isinstance(output, torch.Tensor):
        return output.repeat(k, *([1] * (output.dim() - 1)))
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor) and \
            all(x is None for x in output[1:]):
        return (_repeat(output[0], k), *output[1:])
    return None  # an output we cannot replay: recompute the block


@contextmanager
def _replay(subject: Any, outputs: list[Any], below: int, k: int) -> Iterator[None]:
    """Blocks < ``below`` return their cached clean outputs (repeated ``k`` times) instead of computing."""
    saved = []
    try:
        for i in range(below):
            replay = _repeat(outputs[i], k)
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


def run_sites(subject: Any, tokens: torch.Tensor, edits: list[Edit], score: ScoreFn, *, needs_clean: bool,
              pack: int | None = None, reuse_prefix: bool = True) -> tuple[list[torch.Tensor], Work]:
    """Scores of each single-site edit in ``edits`` (one list entry per edit), and the work done."""
    n_layers = subject.n_layers
    batch, seq = tokens.shape
    work = Work(naive=len(edits) * n_layers * batch * seq)
    parts: list[list[torch.Tensor]] = [[] for _ in edits]
    order = sorted(range(len(edits)), key=lambda i: start_layer(edits[i], n_layers))
    progress = Progress(len(edits) * len(range(0, batch, settings().batch_size)), "pytest-interp sweep")
    for rows in _chunks(batch):
        chunk = tokens[rows.to(tokens.device)]
        b = chunk.shape[0]
        k_max = pack or max(1, settings().batch_size // b)
        outputs, clean_logits = _capture_blocks(subject, chunk)
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(start_layer(edits[i], n_layers) if reuse_prefix else 0, []).append(i)
        for layer, members in groups.items():
            for j in range(0, len(members), k_max):
                pack_ids = members[j:j + k_max]
                k = len(pack_ids)
                handles = []
                try:
                    for slot, i in enumerate(pack_ids):
                        e = edits[i]
                        lo, hi = slot * b, (slot + 1) * b

                        def transform(act: torch.Tensor, e: Edit = e, lo: int = lo, hi: int = hi,
                                      rows: torch.Tensor = rows) -> torch.Tensor:
                            new = act.clone()
                            new[lo:hi] = _apply(e, act[lo:hi], rows, batch)
                            return new

                        handles.append(_install(subject, e.site, transform))
                except Exception:
                    for h in handles:
                        h.remove()
                    raise
                with _hooks(subject, handles), _replay(subject, outputs, layer, k):
                    logits = _finite(_logits(subject.forward(chunk.repeat(k, 1))), "intervened run")
                work.run += k * (n_layers - layer) * b * seq
                dev_rows = rows.to(tokens.device)
                for slot, i in enumerate(pack_ids):
                    part = logits[slot * b:(slot + 1) * b]
                    parts[i].append(score(part, dev_rows, clean_logits if needs_clean else None).detach())
                progress.step(k)
    progress.close()
    check_edits(edits)
    return [torch.cat(p) for p in parts], work
