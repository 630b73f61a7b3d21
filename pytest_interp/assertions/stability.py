"""Claims that must hold across input families and decoding settings.

``pi.assert_stable(claim, families)`` decides ``claim`` on every family hypothesis draws (or every item of a
list): "holds on every family" is an intersection-union test. It passes only if each family's own test passes
at alpha, and the chance that it passes when the claim is false on some family is at most alpha (the test of
that family alone already has that level), so no multiplicity correction is needed. A bound on the spread of the
effect across the k families is a claim about all of them at once: it is decided on intervals at alpha / k
(Bonferroni), so that all k hold together with probability >= 1 - alpha.

When a family fails, hypothesis shrinks it to the smallest failing family it can find (within ``max_shrinks``
extra claim runs) and the message shows that family's prompts, its effect and CI, and the families where the
claim held. The search is deterministic: a fixed seed, no example database.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core import records as _records
from ..core.errors import ClaimFailed, InterpError
from ..core.family import Family
from ..core.stats import Effect, mean_interval
from ..experiments.common import stat_args
from ..experiments.stability import Stability, draw, stability
from .decide import decide, threshold


@dataclass
class Stable:
    """What :func:`assert_stable` found: each family's effect (by label), the searched order, and the spread."""

    effects: dict[str, Effect]
    spread: float | None = None
    cv: float | None = None
    claim: str = ""
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return f"<Stable '{self.claim}' on {len(self.effects)} families>"


def _label(f: Any) -> str:
    if isinstance(f, Family):
        return f.label
    describe = getattr(f, "describe", None)
    return describe() if callable(describe) else repr(f)[:80]


def _show(f: Any) -> str:
    return f.show() if isinstance(f, Family) else _label(f)


@dataclass
class _Outcome:
    effect: Effect
    passed: bool
    claim: str
    message: str = ""


def _run(claim: Callable[[Any], Any], fam: Any, at_least: float | None, within: float | None) -> _Outcome:
    """Decide ``claim`` on one family, keeping its records out of the report."""
    if isinstance(fam, Family):
        fam.check()
    with _records.captured() as recs:
        try:
            got = claim(fam)
        except ClaimFailed as err:
            eff = getattr(err, "effect", None)
            if eff is None:
                raise InterpError("the claim failed without an effect to compare across families",
                                  expected="a claim from pytest_interp (it reports its effect)",
                                  seen=str(err).splitlines()[0][:100], fix="assert one of pi.assert_* per family")
            rec = err.record if isinstance(err.record, dict) else {}
            return _Outcome(eff, False, str(rec.get("claim", "the claim")), str(err))
    if isinstance(got, dict) and got and all(isinstance(v, Effect) for v in got.values()):
        got = min(got.values(), key=lambda e: e.ci[0])
    if not isinstance(got, Effect):
        raise InterpError("the claim function returned no Effect", expected="an Effect: return the claim call "
                          "(pi.assert_necessary(...) returns its Effect) or an experiment (pi.ablate(...)) with "
                          "at_least= or within=", seen=type(got).__name__, fix="add 'return' before the claim call")
    text = recs[-1]["claim"] if recs else " ".join(x for x in (got.method, got.intervention, "on", got.metric) if x)
    if not recs:  # an experiment: decide it here, on its interval
        if at_least is None and within is None:
            raise InterpError("an experiment without a decision", expected="a claim call, or at_least= / within=",
                              seen="an Effect and no threshold", fix="pass at_least=<effect size> or within=<margin>")
        if at_least is not None:
            return _Outcome(got, got.ci[0] >= at_least, f"{text} >= {at_least:g}")
        assert within is not None
        return _Outcome(got, -within <= got.ci[0] and got.ci[1] <= within, f"{text} within {within:g}")
    return _Outcome(got, True, text)


def _line(label: str, e: Effect) -> str:
    return f"{label}: {e.mean:.4g} [{e.ci[0]:.4g}, {e.ci[1]:.4g}] (n={e.n})"


def assert_stable(claim: Callable[[Any], Any], families: Any, *, spread: float | None = None,
                  at_least: float | None = None, within: float | None = None, max_families: int = 6,
                  max_shrinks: int = 6, alpha: float | None = None, seed: int | None = None) -> Stable:
    """Claim: ``claim`` holds on every family, and (``spread=``) its effect moves by at most ``spread`` across them.

    Args:
        claim: ``claim(family) -> Effect``: a claim call (``lambda f: pi.assert_necessary(subject, site,
            inputs=f.inputs, ...)``), or an experiment decided with ``at_least=`` / ``within=``.
        families: a hypothesis strategy of families (:mod:`pytest_interp.strategies`; up to ``max_families``
            distinct ones are drawn) or a list (every item is tried: families, or decoding settings such as
            ``[pi.Greedy(), pi.Sample(temperature=0.7, n=8)]``).
        spread: the largest allowed range of the family effects; decided on each family's interval at
            alpha / k: max(upper ends) - min(lower ends) <= spread.
        max_shrinks: extra claim runs hypothesis may spend shrinking a failing family.
    """
    __tracebackhide__ = True
    st = stat_args(alpha, seed)
    t_at = None if at_least is None else threshold("at_least", at_least)
    t_w = None if within is None else threshold("within", within, positive=True)
    t_s = None if spread is None else threshold("spread", spread, positive=True)
    if isinstance(max_families, bool) or not isinstance(max_families, int) or max_families < 1:
        raise InterpError("max_families must be a positive int", expected=">= 1", seen=repr(max_families),
                          fix="e.g. max_families=6")
    results: dict[str, _Outcome] = {}
    order: list[str] = []
    fams: dict[str, Any] = {}
    failed_first: list[str] = []
    budget = [max_shrinks]

    def outcome(f: Any) -> _Outcome | None:
        k = _label(f)
        if k not in results:
            if failed_first:
                if budget[0] <= 0:
                    return None  # shrinking budget spent
                budget[0] -= 1
            results[k] = _run(claim, f, t_at, t_w)
            order.append(k)
            fams[k] = f
        return results[k]

    def fails(f: Any) -> bool:
        o = outcome(f)
        if o is None:
            return False
        if not o.passed and not failed_first:
            failed_first.append(_label(f))
        return not o.passed

    _, smallest = draw(families, max_families, st["seed"], fails)
    held = [k for k in order if results[k].passed]
    text = next(iter(results.values())).claim if results else "claim"
    from ..core.decoding import Decoding

    over = "decoding settings" if fams and all(isinstance(f, Decoding) for f in fams.values()) else "input families"
    name = f"stable across {over}: {text}"
    how = "listed" if isinstance(families, (list, tuple)) else f"hypothesis search, seed {st['seed']}"
    tried = f"{len(order)} {'family' if len(order) == 1 else 'families'} tried ({how})"
    held_lines = [f"    {_line(k, results[k].effect)}" for k in held] or ["    (none)"]
    if smallest is not None:
        k = _label(smallest)
        worst = results[k]
        shrunk = "" if k == failed_first[0] else f" (shrunk from '{failed_first[0]}')"
        extra = [f"  failing family (the smallest found{shrunk}):", f"    {_show(smallest)}",
                 f"    effect {worst.effect.mean:.4g}, CI [{worst.effect.ci[0]:.4g}, {worst.effect.ci[1]:.4g}],"
                 f" n={worst.effect.n}", f"  held on {len(held)} of {len(order)} families tried:", *held_lines]
        if worst.message:
            extra += ["  the claim on the failing family:"] + ["    " + ln for ln in worst.message.splitlines()]
        eff = dataclasses.replace(worst.effect, details=dict(worst.effect.details, family=k, families=len(order)))
        decide(name, eff, False, "the claim holds on every family (intersection-union test at alpha)",
               f"holds on every family; {tried}", extra, kind="stable", deciding=f"fails on {k}")
    effects = {k: results[k].effect for k in order}
    worst_k = min(order, key=lambda k: effects[k].ci[0])
    means = np.array([effects[k].mean for k in order])
    cv = float(means.std(ddof=1) / abs(means.mean())) if len(means) > 1 and means.mean() != 0 else None
    rng = float(means.max() - means.min())
    lines = [f"  held on all {len(order)} families tried:", *held_lines]
    passed, rule, deciding = True, "the claim holds on every family (intersection-union test at alpha)", ""
    shown = effects[worst_k]
    if t_s is not None:
        k_fam = len(order)
        lo_hi = []
        for k in order:
            e = effects[k]
            v = np.asarray(e.values, dtype=float)
            if v.size == 0 or not np.isclose(e.mean, v.mean(), rtol=1e-6, atol=1e-9):
                raise InterpError("spread= needs effects that are means of per-example values",
                                  expected="claims such as assert_necessary, assert_only, assert_mediates",
                                  seen=f"{e.method} (its effect is not the mean of its values)",
                                  fix="leave spread= out, or use pi.stability(...) for the coefficient of variation")
            ci, _ = mean_interval(v, st["alpha"] / k_fam, n_boot=e.n_boot or st["n_boot"], seed=e.seed)
            lo_hi.append(ci)
        upper = max(h for _, h in lo_hi) - min(lo for lo, _ in lo_hi)
        passed = upper <= t_s
        rule += f"; spread: max(upper) - min(lower) of the {k_fam} families' intervals at alpha/{k_fam} <= {t_s:g}"
        deciding = f"spread {rng:.3g} (bound {upper:.3g} <= {t_s:g})" + (f", CV {cv:.3g}" if cv is not None else "")
        lines.append(f"  spread of the family effects: {rng:.4g}; Bonferroni bound {upper:.4g} (each interval at "
                     f"alpha/{k_fam}); allowed {t_s:g}")
    summary = dataclasses.replace(shown, details=dict(shown.details, families=len(order), spread=rng,
                                                      **({} if cv is None else {"cv": cv})))
    decide(name, summary, passed, rule, f"holds on every family{'' if t_s is None else f', spread <= {t_s:g}'};"
           f" {tried}", lines, kind="stable", deciding=deciding or f"worst family: {worst_k}")
    return Stable(effects, rng, cv, text)


def assert_rank_stable(subject: Any, what: Any, families: Any, *, at_least: float, count: int = 6,
                       position: int = -1, alpha: float | None = None, seed: int | None = None,
                       **kwargs: Any) -> Stability:
    """Claim: the attribution ``what`` ranks the base tokens alike across families: the mean Spearman
    correlation between families (:func:`pytest_interp.stability`) has its CI's lower end >= ``at_least``."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    res = stability(subject, what, families, count=count, position=position, alpha=alpha, seed=seed, **kwargs)
    return _decide_rank(res, t, True)


def assert_rank_unstable(subject: Any, what: Any, families: Any, *, below: float, count: int = 6,
                         position: int = -1, alpha: float | None = None, seed: int | None = None,
                         **kwargs: Any) -> Stability:
    """Claim: the attribution ``what`` does NOT rank tokens alike across families: the mean Spearman correlation
    has its CI's upper end < ``below``."""
    __tracebackhide__ = True
    t = threshold("below", below)
    res = stability(subject, what, families, count=count, position=position, alpha=alpha, seed=seed, **kwargs)
    return _decide_rank(res, t, False)


def _decide_rank(res: Stability, t: float, stable: bool) -> Stability:
    __tracebackhide__ = True
    if res.effect is None:
        raise InterpError("rank stability needs an attribution", expected="what= an attribution method",
                          seen="an experiment giving Effects", fix="use pi.assert_stable(..., spread=) for effects")
    e = res.effect
    worst = min(res.pairs.items(), key=lambda kv: kv[1])
    best = max(res.pairs.items(), key=lambda kv: kv[1])
    extra = [f"  {len(res.families)} families: " + "; ".join(res.families),
             f"  least alike pair: {worst[0][0]} / {worst[0][1]}: {worst[1]:.3f}; most alike: "
             f"{best[0][0]} / {best[0][1]}: {best[1]:.3f}; undefined (constant scores, counted 0): {res.undefined}"]
    what = str(e.details.get("attribution", "the attribution"))
    if stable:
        decide(f"{what} ranks tokens alike across input families", e, e.ci[0] >= t, "lower end of CI >= threshold",
               f">= {t:g}", extra, kind="rank-stable", bounds=(t,))
    else:
        decide(f"{what} does not rank tokens alike across input families", e, e.ci[1] < t,
               "upper end of CI < threshold", f"< {t:g}", extra, kind="rank-unstable", bounds=(t,))
    return res
