"""An input family: one batch of prompts that all vary the same way (one phrasing, one filler length, one
document order), on which a claim is decided as a whole. :func:`pytest_interp.assert_stable` decides a claim on
many families; :mod:`pytest_interp.strategies` draws them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InterpError


@dataclass(frozen=True, eq=False)
class Family:
    """One input family.

    Attributes:
        inputs: what the claim receives (token ids ``[n, seq]``, strings, ``pi.Prompt`` objects).
        label: what makes this family what it is, e.g. ``"template 2, filler 3"`` (messages show it).
        answers: each example's answer in this family (``None``: the task has none, e.g. induction loss).
        expected: the answers the family must keep (the base examples' answers); a family whose ``answers``
            differ from them is a different task, and :func:`~pytest_interp.assert_stable` refuses it.
        align: per example, per token, the base example's token index it came from (-1: a token the family
            added). Families built from the same base examples can then be compared token by token
            (:func:`pytest_interp.stability`).
        params: the family's parameters (for reports).
    """

    inputs: Any
    label: str
    answers: tuple[Any, ...] | None = None
    expected: tuple[Any, ...] | None = None
    align: tuple[tuple[int, ...], ...] | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def __len__(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:
        return f"<Family {self.label} ({len(self)} examples)>"

    def show(self, limit: int = 3) -> str:
        """The label and the first ``limit`` prompts, for messages."""
        shown = []
        for x in list(self.inputs)[:limit]:
            if hasattr(x, "segments"):
                text = " ".join(seg.text for seg in x.segments)
            elif hasattr(x, "tolist"):
                text = " ".join(map(str, x.tolist()))
            else:
                text = str(x)
            shown.append(text if len(text) <= 110 else text[:107] + "...")
        more = f" (+{len(self) - limit} more)" if len(self) > limit else ""
        return f"{self.label}: " + " | ".join(repr(t) for t in shown) + more

    def check(self) -> Family:
        """This family, or an InterpError if it is empty or changes the answers it must keep."""
        if len(self) == 0:
            raise InterpError(f"input family '{self.label}' is empty", expected="at least one example per family",
                              seen="0 examples", fix="check the family generator's parameters")
        if self.expected is not None and self.answers is not None:
            bad = [i for i, (a, e) in enumerate(zip(self.answers, self.expected)) if a != e]
            if bad or len(self.answers) != len(self.expected):
                i = bad[0] if bad else min(len(self.answers), len(self.expected))
                raise InterpError(f"input family '{self.label}' changes the answer: it is another task",
                                  expected="every variant keeps its base example's answer",
                                  seen=f"example {i}: answer {self.answers[i]!r} where the base has "
                                       f"{self.expected[i]!r}" if i < min(len(self.answers), len(self.expected))
                                  else f"{len(self.answers)} answers for {len(self.expected)} base examples",
                                  fix="keep the answer-bearing tokens out of the perturbation (keep=...)")
        if self.align is not None and len(self.align) != len(self):
            raise InterpError(f"input family '{self.label}' has {len(self.align)} alignments for {len(self)} "
                              "examples", expected="one per example", seen=str(len(self.align)),
                              fix="build align with one row per example")
        return self
