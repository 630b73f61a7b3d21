"""Circuit claims: a sender composes with a receiver through one input (path patching), a head's attention to
named keys is what does the work (attention-pattern edits beside a matched control), and a hypothesis about
what sites compute explains the behaviour (causal scrubbing)."""

from __future__ import annotations

from typing import Any

from ..core.metrics import Metric
from ..core.paths import path as make_path
from ..core.sites import Site
from ..core.stats import Effect, mean_effect
from ..engine.interventions import Intervention
from ..experiments.circuits import ablate_path, block_attention, record_pattern
from ..experiments.common import stat_args
from ..experiments.scrubbing import scrub
from .decide import decide, threshold


def assert_composes(subject: Any, sender: Site, receiver: Site | str, *, via: str | None = None, inputs: Any,
                    metric: Metric, at_least: float, how: Intervention | None = None, alpha: float | None = None,
                    seed: int | None = None) -> Effect:
    """Claim: ``sender`` feeds ``receiver`` through ``via`` (``"q"``, ``"k"``, ``"v"`` for a head; None for an
    MLP or ``"logits"``): ablating the sender's output (``how``, default the mean) *only where it enters that
    input* damages ``metric`` by at least ``at_least``. Decided on the lower CI bound of the path damage."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    p = make_path(sender, receiver, via)
    eff = ablate_path(subject, p, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    return decide(f"{p.sender} composes with {p.receiver}" + (f" through its {_INPUT[p.via]}" if p.via else "")
                  + f" ({eff.metric} path damage >= {t:g})", eff, eff.ci[0] >= t, "lower CI bound >= threshold",
                  f"path damage >= {t:g}", kind="composes", bounds=(t,))


def assert_does_not_compose(subject: Any, sender: Site, receiver: Site | str, *, via: str | None = None, inputs: Any,
                            metric: Metric, within: float, how: Intervention | None = None,
                            alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim (equivalence): the path ``sender -> receiver`` (through ``via``) carries nothing ``metric`` can see:
    the whole CI of the path damage lies inside ``[-within, within]``."""
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    p = make_path(sender, receiver, via)
    eff = ablate_path(subject, p, inputs=inputs, metric=metric, how=how, alpha=alpha, seed=seed)
    return decide(f"{p.sender} does not compose with {p.receiver}" + (f" through its {_INPUT[p.via]}" if p.via
                                                                       else "")
                  + f" (|path damage| <= {w:g})", eff, -w <= eff.ci[0] and eff.ci[1] <= w,
                  "whole CI inside [-within, within]", f"|path damage| <= {w:g}", kind="does_not_compose",
                  bounds=(-w, w))


_INPUT = {"q": "queries", "k": "keys", "v": "values"}


def assert_attention_mediates(subject: Any, head: Site, *, keys: Any, inputs: Any, metric: Metric, at_least: float,
                              alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: ``head``'s attention to the query -> key pairs ``keys`` is what does the work. Two tests, both
    at level alpha (an intersection-union test: the claim holds only when both reject, so no correction):

    * blocking those pairs (scores -inf before the head's softmax) damages ``metric`` by at least ``at_least``
      (lower CI bound);
    * and damages it more than the matched control, blocking as many other visible keys per query drawn at
      random (seeded): the lower CI bound of the paired difference is above 0.

    Returns the Effect of blocking the named keys; its details carry the control and the difference."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    named = block_attention(subject, head, keys=keys, inputs=inputs, metric=metric, alpha=alpha, seed=seed)
    record_pattern(subject, head, inputs)
    control = block_attention(subject, head, keys=keys, inputs=inputs, metric=metric, control=True, alpha=alpha,
                              seed=seed)
    diff = mean_effect(named.values - control.values, metric=named.metric, **stat_args(alpha, seed))
    named.details.update({"control": control.mean, "control_lo": control.ci[0], "control_hi": control.ci[1],
                          "control_attention": control.details["blocked_attention"],
                          "difference": diff.mean, "difference_lo": diff.ci[0], "difference_hi": diff.ci[1]})
    passed = named.ci[0] >= t and diff.ci[0] > 0
    extra = [f"  matched control ({control.intervention}): {control.describe()}",
             f"  attention removed: {named.details['blocked_attention']:.3g} by the named keys, "
             f"{control.details['blocked_attention']:.3g} by the control (matched on the number of keys)",
             f"  named - control (paired): {diff.describe()}"]
    return decide(f"{head}'s attention to the named keys mediates {named.metric} (damage >= {t:g}, and more than "
                  f"blocking as many other keys)", named, passed,
                  "lower CI bound >= threshold, and lower CI bound of (named - matched control) > 0",
                  f"damage >= {t:g}; > control", extra=extra, kind="attention_mediates", bounds=(t,),
                  deciding=f"matched control {control.mean:.3g} [{control.ci[0]:.3g}, {control.ci[1]:.3g}]; named - "
                           f"control {diff.mean:.3g} [{diff.ci[0]:.3g}, {diff.ci[1]:.3g}] vs > 0; attention removed "
                           f"{named.details['blocked_attention']:.3g} (control "
                           f"{control.details['blocked_attention']:.3g})")


def assert_hypothesis_explains(subject: Any, hypothesis: dict[Site, Any], *, inputs: Any, metric: Metric,
                               at_least: float, max_alone: float = 0.02, alpha: float | None = None,
                               seed: int | None = None) -> Effect:
    """Claim (causal scrubbing): resampling each of the hypothesis's sites within the classes it says the site
    cannot tell apart keeps at least ``at_least`` of the behaviour that full resampling destroys (lower CI
    bound of the loss recovered; see :func:`pi.scrub`)."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    res = scrub(subject, hypothesis, inputs=inputs, metric=metric, max_alone=max_alone, alpha=alpha, seed=seed)
    eff = res.recovered
    names = ", ".join(f"{s}: {getattr(fn, '__name__', 'fn')}" for s, fn in hypothesis.items())
    extra = [f"  scrubbed damage: {res.scrubbed.describe()}", f"  fully resampled damage: {res.random.describe()}",
             "  tokens alone in their class (kept their own activation): "
             + ", ".join(f"{k} {v:.0%}" for k, v in res.unscrubbed.items()),
             "  limitation: sites scrubbed side by side with their clean activations at the donor tokens (not "
             "recursively)"]
    return decide(f"the hypothesis {{{names}}} explains {eff.metric} (loss recovered >= {t:g})", eff,
                  eff.ci[0] >= t, "lower CI bound >= threshold", f"recovered >= {t:g}", extra=extra,
                  kind="hypothesis_explains", bounds=(t,),
                  deciding=f"scrubbed damage {res.scrubbed.mean:.3g}, fully resampled {res.random.mean:.3g}; tokens "
                           f"alone in their class at most {max(res.unscrubbed.values()):.1%}")
