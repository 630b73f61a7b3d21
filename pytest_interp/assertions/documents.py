"""Context claims: a document or tool output is necessary for the answer, or a document is unused (equivalence)."""

from __future__ import annotations

from typing import Any

from ..core.stats import Effect
from ..experiments.segments import leave_out, segment_name
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
