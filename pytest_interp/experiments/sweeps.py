"""Sweeps: the same experiment at many sites, as a mapping site -> Effect that ranks and converts to a grid."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ..core import records as _records
from ..core.cache import current as current_cache
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site, as_sites, attn, cross_head, head, mlp, resid
from ..core.stats import Effect, benjamini_hochberg
from ..engine.hooks import Edit
from ..engine.interventions import Intervention, Patch
from ..engine.runner import capture
from ..engine.sweep import Work, run_sites
from ..model.checks import as_subject, check_site
from ..model.subject import Subject
from .ablation import ablation_effect, prepare_ablation
from .common import as_metric, combine_runs, run_parts, stat_args
from .patching import PreparedPatch, patch_effect


class Sweep(Mapping[Site, Effect]):
    """Effects of one experiment at many sites: ``sweep[site]`` is that site's Effect."""

    def __init__(self, effects: dict[Site, Effect], title: str) -> None:
        self._effects = effects
        self.title = title
        #: layer x token evaluations run against one full forward per site (``work.fraction``)
        self.work = Work()

    def __getitem__(self, site: Site) -> Effect:
        try:
            return self._effects[site]
        except KeyError:
            raise InterpError(f"{site} is not in this sweep", expected="one of the swept sites",
                              seen=f"{len(self)} sites, e.g. {next(iter(self._effects), None)}",
                              fix="index with a site the sweep covered") from None

    def __iter__(self) -> Iterator[Site]:
        return iter(self._effects)

    def __len__(self) -> int:
        return len(self._effects)

    def ranked(self, *, by: str = "mean") -> list[tuple[Site, Effect]]:
        """Sites from the largest effect down (``by="ci_low"`` ranks by the lower CI bound)."""
        key = (lambda kv: kv[1].mean) if by == "mean" else (lambda kv: kv[1].ci[0])
        return sorted(self._effects.items(), key=key, reverse=True)

    def adjusted_p(self) -> dict[Site, float]:
        """Each site's Benjamini-Hochberg adjusted p-value (q-value) over this sweep: the two-sided p-value of "no
        effect" corrected for the number of sites swept."""
        sites = list(self._effects)
        q = benjamini_hochberg([self._effects[s].p_value for s in sites])
        return dict(zip(sites, q))

    def significant(self, q: float = 0.05) -> list[tuple[Site, Effect]]:
        """The sites whose effect differs from zero at false-discovery rate ``q`` (Benjamini-Hochberg over the
        sweep's p-values), largest effect first. Use it, not the uncorrected intervals, to pick sites from a
        sweep: among 8 null sites at n = 32, some interval excluded 0 about half the time."""
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
            raise InterpError("q must be between 0 and 1", expected="a false-discovery rate, e.g. 0.05",
                              seen=repr(q), fix="pass q=0.05")
        adjusted = self.adjusted_p()
        return [(s, e) for s, e in self.ranked() if adjusted[s] <= q]

    def grid(self) -> tuple[np.ndarray, list[str], list[str]]:
        """``(values, row labels, column labels)``: layer x head for head sites, layer x position for
        position-restricted sites, layer x kind otherwise. Missing cells are NaN."""
        sites = list(self._effects)
        if any(s.stack is not None for s in sites):  # an encoder-decoder model: a row per stack and layer
            return self._stacked_grid(sites)
        layers = sorted({s.layer for s in sites})
        if all(s.kind == "head" for s in sites):
            cols: list[Any] = sorted({s.number for s in sites})
            col_of: dict[Any, int] = {c: j for j, c in enumerate(cols)}
            col_labels = [f"H{c}" for c in cols]
            cell = lambda s: col_of[s.index]  # noqa: E731
        elif all(isinstance(s.positions, int) for s in sites):
            cols = sorted({s.positions for s in sites if isinstance(s.positions, int)})
            col_of = {c: j for j, c in enumerate(cols)}
            col_labels = [str(c) for c in cols]
            cell = lambda s: col_of[s.positions]  # noqa: E731
        else:
            kinds = sorted({str(s.unrestricted).split()[0] for s in sites})
            col_of = {k: j for j, k in enumerate(kinds)}
            col_labels = kinds
            cell = lambda s: col_of[s.kind]  # noqa: E731
        row_of = {lay: i for i, lay in enumerate(layers)}
        values = np.full((len(layers), len(col_labels)), np.nan)
        for s, e in self._effects.items():
            values[row_of[s.layer], cell(s)] = e.mean
        return values, [f"L{lay}" for lay in layers], col_labels

    def _stacked_grid(self, sites: list[Site]) -> tuple[np.ndarray, list[str], list[str]]:
        def row(s: Site) -> str:
            return f"{'cross' if s.kind.startswith('cross') else s.stack} L{s.layer}" + (
                "" if s.kind in ("head", "cross_head") or s.kind.startswith("cross") else f" {s.kind}")
        rows = list(dict.fromkeys(row(s) for s in sites))
        heads = all(s.index is not None for s in sites)
        cols = sorted({s.number for s in sites}) if heads else [0]
        values = np.full((len(rows), len(cols)), np.nan)
        for s, e in self._effects.items():
            values[rows.index(row(s)), cols.index(s.number) if heads else 0] = e.mean
        return values, rows, [f"H{c}" for c in cols] if heads else ["effect"]

    def to_numpy(self) -> np.ndarray:
        """The grid's values (see :meth:`grid`)."""
        return self.grid()[0]

    def _record(self) -> None:
        values, rows, cols = self.grid()
        _records.add_grid({"title": self.title, "rows": rows, "cols": cols,
                           "values": [[None if np.isnan(v) else float(v) for v in row] for row in values]})
        adjusted = self.adjusted_p()
        q = Sweep({s: dataclasses.replace(e, mean=adjusted[s]) for s, e in self._effects.items()}, "").grid()[0]
        _records.add_grid({"title": f"{self.title}: Benjamini-Hochberg adjusted p (q-value)", "rows": rows,
                           "cols": cols, "values": [[None if np.isnan(v) else float(v) for v in row] for row in q]})


def all_heads(subject: Subject) -> list[Site]:
    """Every head of the subject: ``head(l, h)`` for all layers and heads; for an encoder-decoder model the
    encoder's and the decoder's self-attention heads and the decoder's cross-attention heads."""
    if subject.encoder_decoder:
        enc = [head(lay, h, stack="encoder") for lay in range(subject.n_layers) for h in range(subject.n_heads)]
        dec = [head(lay, h, stack="decoder") for lay in range(subject.n_decoder_layers) for h in range(subject.n_heads)]
        return enc + dec + [cross_head(lay, h) for lay in range(subject.n_decoder_layers)
                            for h in range(subject.n_heads)]
    return [head(lay, h) for lay in range(subject.n_layers) for h in range(subject.n_heads)]


def sweep(subject: Subject, sites: Iterable[Site] | None = None, *, inputs: Any, metric: Metric,
          how: Intervention | None = None, alpha: float | None = None, seed: int | None = None) -> Sweep:
    """Ablate each site on its own (default: every head); ``result[site]`` equals ``pi.ablate`` at that site.

    Computes less than one forward pass per site: the clean run is shared, blocks below a site's layer are
    replayed from the clean pass instead of recomputed, and sites of one layer share a forward pass (the batch
    repeated once per site). ``result.work.fraction`` is the share of the naive layer x token evaluations
    actually run. Inside a pytest session the sweep's grid is added to the HTML report as a heatmap.
    """
    subject, metric = as_subject(subject), as_metric(metric)
    with subject.steady():  # one fingerprint for every site
        sites_t = as_sites(all_heads(subject) if sites is None else list(sites))
        how, tokens, score, clean = prepare_ablation(subject, sites_t, how, inputs, metric)
        st = stat_args(alpha, seed)
        scores, work = _cached_sites(subject, tokens, metric, score, sites_t, how)
        effects = {s: ablation_effect(subject, (s,), metric, how, clean, scores[s], st) for s in sites_t}
        result = Sweep(effects, f"ablation sweep: {how.describe()}, damage to {metric.name}")
        result.work = work
        result._record()
        return result


def patch_sweep(subject: Subject, *, clean: Any, corrupt: Any, metric: Metric, layers: Iterable[int] | None = None,
                positions: Iterable[int] | None = None, kind: str = "resid", into: str = "corrupt",
                stack: str | None = None, alpha: float | None = None, seed: int | None = None) -> Sweep:
    """Patch ``kind`` (``resid``, ``attn`` or ``mlp``) at each (layer, position); ``result[site]`` equals
    ``pi.patch`` at that site. Defaults: every layer and every position. For an encoder-decoder model name the
    ``stack`` (``"encoder"``: its layers and the encoder's tokens; ``"decoder"``: its layers and positions).

    In a causal model each pass starts at its position (earlier keys and values come from the unpatched run),
    and sites where the two runs' activations are bit-for-bit equal (every position before the first differing
    token; at layer 0, every unchanged token) or that only change positions after the ones the metric reads
    are not run: their scores are the unpatched run's. ``result.work.fraction`` counts what did run."""
    subject, metric = as_subject(subject), as_metric(metric)
    with subject.steady():  # one fingerprint for every site
        make = {"resid": resid, "attn": attn, "mlp": mlp}.get(kind)
        if make is None:
            raise InterpError(f"patch_sweep kind {kind!r} is not supported",
                              expected="'resid', 'attn' or 'mlp'",
                              seen=repr(kind), fix="pick one of the three")
        prep = PreparedPatch(subject, clean, corrupt, metric, into)
        seq = (subject.decoder_tokens(prep.target) if stack == "decoder" else prep.target).shape[1]
        n_layers = subject.n_decoder_layers if stack == "decoder" else subject.n_layers
        layers_l = list(range(n_layers)) if layers is None else list(layers)
        positions_l = list(range(seq)) if positions is None else list(positions)
        sites_t = as_sites([make(lay, stack=stack).at(p) for lay in layers_l for p in positions_l])
        for s in sites_t:
            check_site(subject, s, prep.target)
        st = stat_args(alpha, seed)
        how = Patch(source=prep.source, label=prep.label)
        scores, work = _cached_sites(subject, prep.target, prep.metric, prep.score, sites_t, how)
        effects = {s: patch_effect(subject, (s,), prep, scores[s], st) for s in sites_t}
        result = Sweep(effects, f"{kind} patching sweep ({prep.label}): restored fraction of {metric.name}")
        result.work = work
        result._record()
        return result


def _cached_sites(subject: Subject, tokens: torch.Tensor, metric: Metric, score: Any, sites_t: tuple[Site, ...],
                  how: Intervention) -> tuple[dict[Site, torch.Tensor], Work]:
    """Each site's intervened scores: from the run cache where it has them, the rest by the sweep engine."""
    cache = current_cache()
    scores: dict[Site, torch.Tensor] = {}
    keys: dict[Site, str | None] = {}
    for s in sites_t:
        parts = run_parts(subject, tokens, metric, (s,), how)() if cache.mode != "off" else None
        keys[s] = cache.key(parts) if parts is not None else None
        key = keys[s]
        got = cache.get(key, rows=tokens.shape[0]) if key is not None else None
        if got is not None:
            scores[s] = got
    todo = [s for s in sites_t if s not in scores]
    work = Work()
    if todo:
        source = how.reads(subject, tokens)
        if source is not None:  # every site's clean activations in one forward pass, not one pass per site
            capture(subject, source, list(dict.fromkeys(s.unrestricted for s in todo)))
        def one(i: int) -> list[torch.Tensor]:
            edits = [Edit(s, how.prepare_run(subject, s, tokens, i), how.must_change, how.describe(), how.pure)
                     for s in todo]
            got, done = run_sites(subject, tokens, edits, score, needs_clean=metric.needs_clean)
            work.run, work.naive = work.run + done.run, work.naive + done.naive
            return got

        computed = combine_runs(how, tokens.shape[0], one)
        for s, value in zip(todo, computed):
            scores[s] = value
            key = keys[s]
            if key is not None:
                cache.put(key, value, {"sites": [str(s)]})
    return scores, work
