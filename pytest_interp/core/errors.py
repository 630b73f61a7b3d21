"""The exceptions and warnings pytest-interp raises.

Exception tree::

    Exception
    ├── InterpError            bad input or a broken experiment: never a verdict
    │   └── InterventionNoOpError   an intervention did not fire or did not change its target
    └── AssertionError
        └── ClaimFailed        the experiment ran and the claim's decision rule rejected it

    UserWarning
    └── InterpWarning          something was changed on the user's behalf (e.g. SDPA switched to eager)
"""

from __future__ import annotations

from typing import Any


class InterpError(Exception):
    """Bad input, or an experiment that cannot give a trustworthy number.

    The message says what was wrong, what was expected, what was seen and how to fix it. The parts are kept
    as attributes so tools can show them separately.
    """

    def __init__(self, what: str, *, expected: str | None = None, seen: str | None = None,
                 fix: str | None = None) -> None:
        self.what = what
        self.expected = expected
        self.seen = seen
        self.fix = fix
        lines = [what]
        if expected is not None:
            lines.append(f"  expected: {expected}")
        if seen is not None:
            lines.append(f"  seen:     {seen}")
        if fix is not None:
            lines.append(f"  fix:      {fix}")
        super().__init__("\n".join(lines))


class InterventionNoOpError(InterpError):
    """An intervention did not fire, or left the activation it targets unchanged."""


class ClaimFailed(AssertionError):
    """A claim was tested and its decision rule rejected it.

    Attributes:
        record: the claim's record (claim text, sites, effect, CI, threshold, n, alpha, seed, verdict).
        effect: the :class:`~pytest_interp.Effect` the claim was decided on (None when it has none).
    """

    def __init__(self, message: str, record: Any = None, effect: Any = None) -> None:
        super().__init__(message)
        self.record = record
        self.effect = effect


class InterpWarning(UserWarning):
    """pytest-interp changed something on the user's behalf, or a result needs care."""


for _cls in (InterpError, InterventionNoOpError, ClaimFailed, InterpWarning):
    _cls.__module__ = "pytest_interp"
