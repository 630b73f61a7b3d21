"""Context claims: a document or tool output is necessary for the answer, or a document is unused (equivalence)."""

from __future__ import annotations

from typing import Any

from ..core.stats import Effect
from ..experiments.segments import attention_mass, leave_out, segment_name
from ..model.subject import Subject
from .decide import decide, threshold



def _necessary(subject: Subject, prompts: Any, which: Any, kind: str, at_least: float, method: str, metric: str,
               alpha: float | None, seed: int | None, claim_kind: str) -> Effect:
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    eff = leave_out(subject, prompts, which, method=method, metric=metric, kind=kind, alpha=alpha, seed=seed)
    return decide(f"{segment_name(which, kind)} is necessary for the answer (damage >= {t:g})", eff, eff.ci[0] >= t,
                   "lower CI bound >= threshold", f"damage >= {t:g}", _acc(eff), kind=claim_kind, bounds=(t,))


def _acc(eff: Effect) -> list[str]:
    d = eff.details
    if "clean_accuracy" not in d:
        return []
    return [f"  answer accuracy: {d['clean_accuracy']:.3f} with it, {d['ablated_accuracy']:.3f} without"]


def assert_document_necessary(subject: Subject, prompts: Any, doc: Any, *, at_least: float, method: str = "delete",
                              metric: str = "logprob", alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: removing document ``doc`` (index, name, or one per prompt) damages the answer by at least
    ``at_least`` (lower CI bound; default metric: the answer's log-probability)."""
    __tracebackhide__ = True
    return _necessary(subject, prompts, doc, "document", at_least, method, metric, alpha, seed, "document_necessary")


def assert_tool_output_necessary(subject: Subject, prompts: Any, output: Any = 0, *, at_least: float,
                                 method: str = "delete", metric: str = "logprob", alpha: float | None = None,
                                 seed: int | None = None) -> Effect:
    """Claim: removing tool output ``output`` (default the first) damages the answer by at least ``at_least``."""
    __tracebackhide__ = True
    return _necessary(subject, prompts, output, "tool_output", at_least, method, metric, alpha, seed,
                      "tool_output_necessary")


def assert_document_unused(subject: Subject, prompts: Any, doc: Any, *, within: float, method: str = "delete",
                           metric: str = "logprob", alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim (equivalence): removing document ``doc`` changes the answer's score by less than ``within`` either
    way (the whole CI inside ``[-within, within]``)."""
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    eff = leave_out(subject, prompts, doc, method=method, metric=metric, alpha=alpha, seed=seed)
    return decide(f"{segment_name(doc, 'document')} is unused by the answer (|damage| <= {w:g})", eff,
                   -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]", f"|damage| <= {w:g}",
                   _acc(eff), kind="document_unused", bounds=(-w, w))


def assert_choice_depends_on(subject: Subject, prompts: Any, segment: Any, *, at_least: float,
                             kind: str = "tool_description", method: str = "delete", metric: str = "choice",
                             alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: the model's choice among the prompt's options (``pi.Prompt(..., choices=[...])``, e.g. the tools it
    lists) depends on ``segment`` (a ``kind`` index or a name; default a tool description): removing it lowers
    the answer's log-probability renormalised over the choices by at least ``at_least`` (lower CI bound)."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    eff = leave_out(subject, prompts, segment, method=method, metric=metric, kind=kind, alpha=alpha, seed=seed)
    return decide(f"the choice depends on {segment_name(segment, kind)} (damage >= {t:g})", eff, eff.ci[0] >= t,
                  "lower CI bound >= threshold", f"damage >= {t:g}", _acc(eff), kind="choice_depends",
                  bounds=(t,))


def assert_choice_independent_of(subject: Subject, prompts: Any, segment: Any, *, within: float,
                                 kind: str = "tool_description", method: str = "delete", metric: str = "choice",
                                 alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim (equivalence): removing ``segment`` changes the choice's renormalised log-probability by less than
    ``within`` either way (the whole CI inside ``[-within, within]``)."""
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    eff = leave_out(subject, prompts, segment, method=method, metric=metric, kind=kind, alpha=alpha, seed=seed)
    return decide(f"the choice does not depend on {segment_name(segment, kind)} (|damage| <= {w:g})", eff,
                  -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]", f"|damage| <= {w:g}",
                  _acc(eff), kind="choice_independent", bounds=(-w, w))


def _read(subject: Subject, prompts: Any, segment: Any, kind: str, attention_at_least: float, layers: Any,
          alpha: float | None, seed: int | None) -> tuple[float, Effect]:
    a = threshold("attention_at_least", attention_at_least, positive=True)
    return a, attention_mass(subject, prompts, segment, kind=kind, layers=layers, alpha=alpha, seed=seed)


def assert_read_not_relied_on(subject: Subject, prompts: Any, segment: Any, *, attention_at_least: float,
                              within: float, kind: str = "document", method: str = "delete", metric: str = "logprob",
                              layers: Any = None, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: provenance and reliance disagree. The answer position attends to ``segment`` (the lower CI bound of
    its attention mass, cross-attention for an encoder-decoder model, is at least ``attention_at_least``), yet
    removing it changes the answer by less than ``within`` either way (the whole CI inside
    ``[-within, within]``): a passage read but not relied on. Both must hold, each at alpha (an
    intersection-union test). Returns the removal effect."""
    __tracebackhide__ = True
    a, mass = _read(subject, prompts, segment, kind, attention_at_least, layers, alpha, seed)
    w = threshold("within", within, positive=True)
    eff = leave_out(subject, prompts, segment, method=method, metric=metric, kind=kind, alpha=alpha, seed=seed)
    read, unused = mass.ci[0] >= a, -w <= eff.ci[0] and eff.ci[1] <= w
    shown = f"attention mass {mass.mean:.3f} [{mass.ci[0]:.3f}, {mass.ci[1]:.3f}]"
    return decide(f"{segment_name(segment, kind)} is read (attention >= {a:g}) but not relied on "
                  f"(|damage| <= {w:g})", eff, read and unused,
                  "attention mass lower CI bound >= attention_at_least and removal CI inside [-within, within]",
                  f"attention >= {a:g}, |damage| <= {w:g}",
                  [f"  {shown}: {'read' if read else 'NOT read at that level'}",
                   f"  removal damage: {'unused' if unused else 'NOT within the margin'}", *_acc(eff)],
                  kind="read_not_relied_on", bounds=(-w, w), deciding=shown)


def assert_read_and_relied_on(subject: Subject, prompts: Any, segment: Any, *, attention_at_least: float,
                              at_least: float, kind: str = "document", method: str = "delete", metric: str = "logprob",
                              layers: Any = None, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Claim: provenance and reliance agree. The answer position attends to ``segment`` (attention mass lower CI
    bound >= ``attention_at_least``) and removing it damages the answer by at least ``at_least`` (lower CI
    bound). Both must hold, each at alpha. Returns the removal effect."""
    __tracebackhide__ = True
    a, mass = _read(subject, prompts, segment, kind, attention_at_least, layers, alpha, seed)
    t = threshold("at_least", at_least)
    eff = leave_out(subject, prompts, segment, method=method, metric=metric, kind=kind, alpha=alpha, seed=seed)
    read, used = mass.ci[0] >= a, eff.ci[0] >= t
    shown = f"attention mass {mass.mean:.3f} [{mass.ci[0]:.3f}, {mass.ci[1]:.3f}]"
    return decide(f"{segment_name(segment, kind)} is read (attention >= {a:g}) and relied on (damage >= {t:g})",
                  eff, read and used, "attention mass lower CI bound >= attention_at_least and removal lower CI "
                  "bound >= at_least", f"attention >= {a:g}, damage >= {t:g}",
                  [f"  {shown}: {'read' if read else 'NOT read at that level'}",
                   f"  removal damage: {'relied on' if used else 'NOT at that level'}", *_acc(eff)],
                  kind="read_and_relied_on", bounds=(t,), deciding=shown)
