"""Stability across input families: how much an attribution's rank order, or an effect, moves when the same
question is asked in another form (another phrasing, filler, document order, segment layout, decoding).

Families are drawn from a hypothesis strategy (:mod:`pytest_interp.strategies`) deterministically (a fixed seed,
no example database), or given as a list.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.errors import InterpError
from ..core.family import Family
from ..core.stats import Effect, mean_effect
from ..experiments.common import stat_args
from ..model.checks import as_subject


def draw(families: Any, count: int, seed: int, keep: Callable[[Any], bool] | None = None) -> tuple[list[Any], Any]:
    """Up to ``count`` distinct families from a hypothesis strategy (deterministic in ``seed``), or the given list.

    ``keep(family) -> bool``: called on each new family in order; when it returns True, hypothesis shrinks that
    family (calling ``keep`` on smaller candidates) and the smallest one it finds is returned second (else None).
    """
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample
    from hypothesis.strategies import SearchStrategy

    if isinstance(families, (list, tuple)):
        items = list(families)
        if not items:
            raise InterpError("no families given", expected="a non-empty list or a hypothesis strategy",
                              seen="[]", fix="pass families=pi.strategies.template_families(...) or a list")
        for f in items:
            if keep is not None and keep(f):
                return items, f
        return items, None
    if not isinstance(families, SearchStrategy):
        raise InterpError("families must be a hypothesis strategy or a list", expected="e.g. "
                          "pi.strategies.induction_families(64) or [pi.Greedy(), pi.Sample(n=8)]",
                          seen=type(families).__name__, fix="pass a strategy from pytest_interp.strategies")
    seen: dict[str, Any] = {}
    order: list[Any] = []

    def key(f: Any) -> str:
        return f.label if isinstance(f, Family) else repr(f)

    def condition(f: Any) -> bool:
        k = key(f)
        if k not in seen:
            seen[k] = f
            order.append(f)
        return bool(keep(f)) if keep is not None else False

    cfg = settings(max_examples=count, database=None, deadline=None, phases=(Phase.generate, Phase.shrink),
                   suppress_health_check=list(HealthCheck))
    try:
        found = find(families, condition, settings=cfg, random=random.Random(seed))
    except NoSuchExample:
        found = None
    return order, found


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # average ranks of ties
        m = x == v
        if m.sum() > 1:
            r[m] = r[m].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return None if den == 0 else float((ra * rb).sum() / den)


@dataclass
class Stability:
    """How much ``what`` moves across families.

    For an attribution: ``effect`` is the mean over examples of the mean Spearman correlation, over every pair of
    families, of that example's per-token scores on the base tokens both families share (its first token and the
    attributed position left out), with a CI over examples; ``pairs[(f, g)]`` the same for one pair. For an
    effect: ``effects`` per family, ``cv`` the coefficient of variation of the family means and ``spread`` their
    range, each with a percentile bootstrap CI over examples (each family resampled on its own).
    """

    kind: str
    families: list[str]
    effect: Effect | None = None
    pairs: dict[tuple[str, str], float] = field(default_factory=dict)
    effects: dict[str, Effect] = field(default_factory=dict)
    cv: tuple[float, tuple[float, float]] | None = None
    spread: tuple[float, tuple[float, float]] | None = None
    undefined: int = 0

    def __repr__(self) -> str:
        if self.kind == "rank" and self.effect is not None:
            e = self.effect
            return (f"<Stability rank agreement {e.mean:.3f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}] over "
                    f"{len(self.families)} families>")
        assert self.cv is not None
        return f"<Stability effect CV {self.cv[0]:.3f} [{self.cv[1][0]:.3f}, {self.cv[1][1]:.3f}] over " \
               f"{len(self.families)} families>"


_BUILTIN = ("attention", "rollout", "grad_x_input", "integrated_gradients", "leave_one_out")


def _attribution(subject: Any, what: Any, position: int, kw: dict[str, Any]) -> Callable[[Any], Any]:
    if callable(what):
        return what
    if what not in _BUILTIN:
        raise InterpError(f"unknown attribution {what!r}", expected=f"one of {', '.join(_BUILTIN)}, or a function "
                          "family -> Attribution or Effect", seen=repr(what)[:60],
                          fix="e.g. pi.stability(subject, 'attention', families, layer=1, head=0)")
    from . import explain as ex

    def run(fam: Family) -> Any:
        if what == "attention":
            return ex.attention(subject, fam.inputs, position=position, **kw)
        if what == "rollout":
            return ex.rollout(subject, fam.inputs, position=position, **kw)
        if fam.answers is None:
            raise InterpError(f"{what} needs each family's answers", expected="families with answers",
                              seen=f"family '{fam.label}' without answers", fix="build families that carry answers")
        fn = {"grad_x_input": ex.grad_x_input, "integrated_gradients": ex.integrated_gradients,
              "leave_one_out": ex.leave_one_token_out}[what]
        return fn(subject, fam.inputs, list(fam.answers), position=position, **kw)
    return run


def stability(subject: Any, what: Any, families: Any, *, count: int = 6, position: int = -1,
              alpha: float | None = None, seed: int | None = None, **kwargs: Any) -> Stability:
    """How stable ``what`` is across ``families`` (a list, or a strategy from which ``count`` are drawn).

    ``what``: ``"attention"`` (with ``layer=``, ``head=``), ``"rollout"``, ``"grad_x_input"``,
    ``"integrated_gradients"``, ``"leave_one_out"`` (the prediction at ``position``; families need ``align``),
    or a function ``family -> Attribution`` or ``family -> Effect`` (e.g. ``lambda f: pi.ablate(subject, site,
    inputs=f.inputs, metric=...)``). Attributions are compared by rank; effects by their coefficient of variation.
    """
    st = stat_args(alpha, seed)
    fams, _ = draw(families, count, st["seed"])
    fams = [f.check() if isinstance(f, Family) else f for f in fams]
    if len(fams) < 2:
        raise InterpError("stability needs at least two families", expected=">= 2 distinct families",
                          seen=f"{len(fams)}", fix="widen the strategy's parameters or pass more families")
    if not callable(what):
        subject = as_subject(subject)
    fn = _attribution(subject, what, position, kwargs)
    outs = [fn(f) for f in fams]
    labels = [f.label if isinstance(f, Family) else repr(f) for f in fams]
    if all(isinstance(o, Effect) for o in outs):
        return _effect_stability(labels, outs, st)
    if not all(hasattr(o, "scores") for o in outs):
        raise InterpError("what must give an Attribution or an Effect for every family", expected="a consistent "
                          "result type", seen=", ".join(sorted({type(o).__name__ for o in outs})),
                          fix="return pi.explain.<method>(...) or pi.ablate(...) from the function")
    model = subject.identity() if hasattr(subject, "identity") else {}
    return _rank_stability(labels, fams, outs, dict(st, model=model))


def _rank_stability(labels: list[str], fams: list[Any], outs: list[Any], st: dict[str, Any]) -> Stability:
    if not all(isinstance(f, Family) and f.align is not None for f in fams):
        raise InterpError("comparing attributions across families needs token alignments",
                          expected="families with align= (each token's base token index)",
                          seen="a family without one", fix="draw families from pytest_interp.strategies "
                          "(induction_families, token_families), which align their tokens")
    n = len(fams[0])
    if any(len(f) != n for f in fams):
        raise InterpError("families built from different base examples", expected=f"{n} examples in every family",
                          seen=str(sorted({len(f) for f in fams})), fix="build every family from the same base")
    maps = []
    for f, o in zip(fams, outs):
        scores = np.asarray(o.scores, dtype=float)
        pos = getattr(o, "position", -1) % scores.shape[1]
        rows = []
        for i in range(n):
            al = f.align[i]
            rows.append({al[t]: scores[i, t] for t in range(1, len(al)) if al[t] >= 0 and t != pos})
        maps.append(rows)
    per_pair: dict[tuple[str, str], list[float]] = {}
    values = np.zeros(n)
    undefined = 0
    k = len(fams)
    for i in range(n):
        total = 0.0
        for a in range(k):
            for b in range(a + 1, k):
                common = sorted(set(maps[a][i]) & set(maps[b][i]))
                if len(common) < 3:
                    raise InterpError("two families share too few tokens to rank", expected=">= 3 shared base "
                                      "tokens per example", seen=f"{len(common)} between '{labels[a]}' and "
                                      f"'{labels[b]}'", fix="families that keep more of the base example")
                r = spearman(np.array([maps[a][i][c] for c in common]), np.array([maps[b][i][c] for c in common]))
                if r is None:
                    undefined += 1
                    r = 0.0
                per_pair.setdefault((labels[a], labels[b]), []).append(r)
                total += r
        values[i] = total / (k * (k - 1) / 2)
    method = getattr(outs[0], "method", "attribution")
    eff = mean_effect(values, method="rank stability", metric=f"Spearman of {method} between families",
                      details={"families": k, "undefined": undefined, "attribution": method}, **st)
    return Stability("rank", labels, effect=eff, pairs={p: float(np.mean(v)) for p, v in per_pair.items()},
                     undefined=undefined)


def _effect_stability(labels: list[str], effects: list[Effect], st: dict[str, Any]) -> Stability:
    vals = [np.asarray(e.values, dtype=float) for e in effects]
    means = np.array([v.mean() for v in vals])
    if not abs(means.mean()) > 1e-12:
        raise InterpError("the family effects average to zero: their coefficient of variation is undefined",
                          expected="effects whose mean is not 0", seen=f"family means {np.round(means, 4).tolist()}",
                          fix="compare the effects' range instead (pi.assert_stable(..., spread=))")
    rng = np.random.default_rng(st["seed"])
    boots = np.stack([np.array([v[rng.integers(0, len(v), len(v))].mean() for _ in range(st["n_boot"])])
                      for v in vals], 1)  # [n_boot, families]

    def cv(m: np.ndarray) -> np.ndarray:
        return m.std(-1, ddof=1) / np.abs(m.mean(-1))

    a = st["alpha"]

    def ci(x: np.ndarray) -> tuple[float, float]:
        return float(np.quantile(x, a / 2)), float(np.quantile(x, 1 - a / 2))

    spread_b = boots.max(1) - boots.min(1)
    return Stability("effect", labels, effects=dict(zip(labels, effects)),
                     cv=(float(cv(means)), ci(cv(boots))), spread=(float(means.max() - means.min()), ci(spread_b)))
