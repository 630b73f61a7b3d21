"""Claims: experiments plus a pre-registered decision rule; a rejected claim raises ClaimFailed."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _records
from ._data import repeated_tokens
from ._errors import ClaimFailed, InterpError
from ._experiments import _stat_args, _subject, ablate, patch
from ._interventions import Intervention
from ._metrics import Metric, loss
from ._runner import check_site
from ._sites import Site, describe, head
from ._stats import Effect, bootstrap_ci


def _threshold(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InterpError(f"{name} must be a number", expected="a finite float", seen=repr(value),
                          fix=f"pass {name}=<effect size>")
    if positive and value <= 0:
        raise InterpError(f"{name} must be positive", expected="> 0", seen=repr(value),
                          fix=f"an equivalence margin is a positive {name}")
    return float(value)


def _decide(claim: str, effect: Effect, passed: bool, rule: str, threshold: str, extra: list[str] | None = None,
            kind: str = "", bounds: tuple[float, ...] = ()) -> Effect:
    __tracebackhide__ = True
    lvl = round(100 * (1 - effect.alpha), 2)
    record = {"claim": claim, "kind": kind, "sites": [str(s) for s in effect.sites],
              "intervention": effect.intervention, "metric": effect.metric, "method": effect.method,
              "effect": effect.mean, "ci": list(effect.ci), "n": effect.n, "p_value": effect.p_value,
              "alpha": effect.alpha, "seed": effect.seed, "threshold": threshold, "rule": rule,
              "passed": passed, "bounds": list(bounds), "model": effect.model, "n_boot": effect.n_boot,
              "details": {k: v for k, v in effect.details.items() if isinstance(v, (int, float, str))}}
    _records.add(record)
    if passed:
        return effect
    lines = [f"claim failed: {claim}",
             f"  sites:        {describe(tuple(effect.sites))}",
             f"  intervention: {effect.intervention}",
             f"  metric:       {effect.metric} ({'higher' if effect.higher_is_better else 'lower'} is better)",
             f"  effect:       {effect.mean:.4g}  {lvl:g}% CI [{effect.ci[0]:.4g}, {effect.ci[1]:.4g}]"
             f"  n={effect.n}  p={effect.p_value:.3g}",
             f"  threshold:    {threshold}",
             f"  rule:         {rule}",
             f"  alpha={effect.alpha}  seed={effect.seed}  bootstrap resamples={effect.n_boot}"]
    for k, v in effect.details.items():
        if isinstance(v, float):
            lines.append(f"  {k}: {v:.4g}")
    lines += extra or []
    raise ClaimFailed("\n".join(lines), record)


def assert_necessary(subject: Any, sites: Site | list[Site], *, inputs: Any, metric: Metric, at_least: float,
                     how: Intervention | None = None, alpha: float | None = None,
                     seed: int | None = None) -> Effect:
    """Claim: ablating ``sites`` damages ``metric`` by at least ``at_least``.

    Passes only when the lower end of the (1 - alpha) CI of the damage is >= ``at_least``. Returns the Effect.
    """
    __tracebackhide__ = True
    t = _threshold("at_least", at_least)
    eff = ablate(subject, sites, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    return _decide(f"{describe(eff.sites)} is necessary for {eff.metric} (damage >= {t:g})", eff,
                   eff.ci[0] >= t, "lower CI bound >= threshold", f"damage >= {t:g}", kind="necessary",
                   bounds=(t,))


def assert_not_necessary(subject: Any, sites: Site | list[Site], *, inputs: Any, metric: Metric, within: float,
                         how: Intervention | None = None, alpha: float | None = None,
                         seed: int | None = None) -> Effect:
    """Claim (equivalence): ablating ``sites`` changes ``metric`` by less than ``within`` either way.

    Passes only when the whole (1 - alpha) CI lies inside ``[-within, within]``: a noisy estimate near zero
    does not pass; it needs enough examples to show the effect is small.
    """
    __tracebackhide__ = True
    w = _threshold("within", within, positive=True)
    eff = ablate(subject, sites, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    return _decide(f"{describe(eff.sites)} is not necessary for {eff.metric} (|damage| < {w:g})", eff,
                   -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]",
                   f"|damage| <= {w:g}", kind="not_necessary", bounds=(-w, w))


def assert_restores(subject: Any, sites: Site | list[Site], *, clean: Any, corrupt: Any, metric: Metric,
                    at_least: float, into: str = "corrupt", alpha: float | None = None,
                    seed: int | None = None) -> Effect:
    """Claim: patching ``sites`` restores at least ``at_least`` of the clean-corrupt gap (lower CI bound)."""
    __tracebackhide__ = True
    t = _threshold("at_least", at_least)
    eff = patch(subject, sites, clean=clean, corrupt=corrupt, metric=metric, into=into, alpha=alpha, seed=seed)
    verb = "restores" if into == "corrupt" else "carries (noising)"
    return _decide(f"{describe(eff.sites)} {verb} >= {t:g} of the {eff.metric} gap", eff, eff.ci[0] >= t,
                   "lower CI bound >= threshold", f"fraction >= {t:g}", kind="restores", bounds=(t,))


def induction_scores(subject: Any, layer: int, data: Any) -> np.ndarray:
    """Per example, the mean attention of each head of ``layer`` from a repeated token to the token after its
    earlier occurrence: ``[n, heads]``."""
    from ._cache import current, tensor_digest

    def compute() -> torch.Tensor:
        att = subject.attention(data.tokens, layer)
        ex, q, k = data.induction_pairs()
        w = att[ex, :, q, k].cpu().double().numpy()  # [pairs, heads]
        ex_np = ex.cpu().numpy()
        n = len(data)
        sums = np.zeros((n, att.shape[1]))
        np.add.at(sums, ex_np, w)
        counts = np.bincount(ex_np, minlength=n)[:, None]
        return torch.as_tensor(sums / np.maximum(counts, 1))

    def parts() -> dict[str, Any]:
        return {"model": subject.fingerprint, "tokens": tensor_digest(data.tokens), "layer": layer,
                "scores": "induction attention", "pairs": tensor_digest(data.second_half),
                "offsets": tensor_digest(data.repeat_starts - data.starts), "attn": "eager"}

    return current().scores(parts, compute).numpy()


def assert_induction_head(subject: Any, layer: int, head_: int | None = None, *, n: int | None = None,
                          length: int | None = None, segment: int | tuple[int, int] | None = None,
                          attention_at_least: float = 0.3, loss_at_least: float = 0.02,
                          how: Intervention | None = None, alpha: float | None = None, seed: int | None = None,
                          **kwargs: Any) -> Effect:
    """Claim: head ``layer.head`` is an induction head. Needs BOTH:

    1. attention: on random sequences whose repeat offset varies, from a repeated token the head attends to
       the token after its earlier occurrence, mean weight >= ``attention_at_least`` (lower CI bound);
    2. causation: ablating the head (default: mean ablation) raises the in-context loss (predictions in the
       repeat) by >= ``loss_at_least`` nats (lower CI bound).

    Attention alone never passes. Inputs default from the model's config: its vocabulary (special tokens
    excluded), BOS, length min(context, 64), ``n`` = 128, segments of 4..min(20, room/2) tokens.
    Returns the causal Effect (the attention score is in ``effect.details``).
    """
    __tracebackhide__ = True
    if head_ is None:
        head_ = kwargs.pop("head", None)
    if kwargs:
        raise InterpError(f"unknown option(s) {sorted(kwargs)} for assert_induction_head",
                          expected="n, length, segment, attention_at_least, loss_at_least, how, alpha, seed",
                          seen=str(sorted(kwargs)), fix="check the spelling")
    if head_ is None:
        raise InterpError("assert_induction_head needs a head", expected="assert_induction_head(subject, layer, head)",
                          seen="no head", fix="pass head=")
    subject = _subject(subject)
    site = head(layer, head_)
    st = _stat_args(alpha, seed)
    ta = _threshold("attention_at_least", attention_at_least)
    tl = _threshold("loss_at_least", loss_at_least)
    if not subject.adapter.causal:
        raise InterpError("induction heads are a property of causal language models",
                          expected="a causal LM", seen=f"{subject.adapter.name} (bidirectional)",
                          fix="test a causal model")
    n = n or 128
    if length is None:
        length = min(subject.max_positions or 64, 64)
    if segment is None:
        room = length - 1
        segment = (min(4, room // 2), max(min(20, room // 2), min(4, room // 2)))
    data = repeated_tokens(subject, n=n, length=length, seed=st["seed"], segment=segment, layout="random")
    tokens = subject.tokens(data.tokens)
    check_site(subject, site, tokens)
    scores = induction_scores(subject, layer, data)[:, head_]
    a_ci = bootstrap_ci((scores,), lambda m: m, alpha=st["alpha"], n_boot=st["n_boot"], seed=st["seed"])
    attn_ok = a_ci[0] >= ta
    eff = ablate(subject, site, inputs=tokens, metric=loss(mask=data.second_half), how=how, alpha=alpha, seed=seed)
    causal_ok = eff.ci[0] >= tl
    lvl = round(100 * (1 - st["alpha"]), 2)
    details = dict(eff.details, attention_score=float(scores.mean()), attention_ci_lo=a_ci[0],
                   attention_ci_hi=a_ci[1])
    eff = Effect(mean=eff.mean, ci=eff.ci, n=eff.n, p_value=eff.p_value, values=eff.values, sites=eff.sites,
                 method=eff.method, intervention=eff.intervention, metric="in-context loss", higher_is_better=False,
                 seed=eff.seed, alpha=eff.alpha, n_boot=eff.n_boot, details=details, model=eff.model)
    extra = [f"  attention check: mean induction attention {scores.mean():.3g}, {lvl:g}% CI "
             f"[{a_ci[0]:.3g}, {a_ci[1]:.3g}], needs lower bound >= {ta:g}: {'ok' if attn_ok else 'FAILED'}",
             f"  causal check:    in-context loss increase {eff.mean:.3g}, {lvl:g}% CI "
             f"[{eff.ci[0]:.3g}, {eff.ci[1]:.3g}], needs lower bound >= {tl:g}: {'ok' if causal_ok else 'FAILED'}",
             f"  inputs: {n} random sequences of {length} tokens, repeated segment {segment} at random offsets"]
    return _decide(f"{site} is an induction head", eff, attn_ok and causal_ok,
                   "attention lower CI bound >= attention threshold AND ablation damage lower CI bound >= "
                   "loss threshold", f"attention >= {ta:g} and loss increase >= {tl:g}", extra,
                   kind="induction_head", bounds=(tl,))


