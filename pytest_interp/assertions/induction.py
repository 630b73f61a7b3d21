"""The induction-head claim: attention to the token after the earlier occurrence AND damage when the head is
ablated. Attention alone never passes."""

from __future__ import annotations

from typing import Any

from ..core.data import repeated_tokens
from ..core.errors import InterpError
from ..core.metrics import loss
from ..core.sites import head
from ..core.stats import Effect, bootstrap_ci
from ..engine.interventions import Intervention
from ..experiments.ablation import ablate
from ..experiments.common import stat_args
from ..experiments.circuits import record_pattern
from ..experiments.induction import induction_scores
from ..model.checks import as_subject, check_site
from ..model.subject import Subject
from .decide import decide, threshold


def assert_induction_head(subject: Subject, layer: int, head_: int | None = None, *, n: int | None = None,
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
    subject = as_subject(subject)
    site = head(layer, head_)
    st = stat_args(alpha, seed)
    ta = threshold("attention_at_least", attention_at_least)
    tl = threshold("loss_at_least", loss_at_least)
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
    record_pattern(subject, site, tokens)
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
    return decide(f"{site} is an induction head", eff, attn_ok and causal_ok,
                   "attention lower CI bound >= attention threshold AND ablation damage lower CI bound >= "
                   "loss threshold", f"attention >= {ta:g} and loss increase >= {tl:g}", extra,
                   kind="induction_head", bounds=(tl,),
                   deciding=f"induction attention {scores.mean():.3g} [{a_ci[0]:.3g}, {a_ci[1]:.3g}] vs >= {ta:g} "
                            f"({'ok' if attn_ok else 'FAILED'}); in-context loss increase (the effect) "
                            f"{'ok' if causal_ok else 'FAILED'}")
