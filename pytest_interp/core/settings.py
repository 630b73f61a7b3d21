"""Run-wide settings (alpha, seeds, resampling counts, batch size, device) shared by claims and experiments."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InterpError


@dataclass(frozen=True)
class Settings:
    """Defaults used when a claim or experiment does not say otherwise.

    Attributes:
        alpha: two-sided error rate of confidence intervals (0.05 gives 95% intervals).
        seed: seed of bootstrap resampling, permutation tests and generated inputs.
        n_boot: bootstrap resamples per confidence interval.
        n_perm: sign-flip permutations per p-value.
        batch_size: examples per forward pass.
        device: torch device for models loaded by pytest-interp.
    """

    alpha: float = 0.05
    seed: int = 0
    n_boot: int = 10_000
    n_perm: int = 10_000
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise InterpError("alpha must be between 0 and 1", expected="e.g. 0.05", seen=str(self.alpha),
                              fix="set --interp-alpha / interp_alpha to a value in (0, 1)")
        for name in ("n_boot", "n_perm", "batch_size"):
            if getattr(self, name) < 1:
                raise InterpError(f"{name} must be positive", expected="an int >= 1",
                                  seen=str(getattr(self, name)), fix=f"raise {name}")


_current = [Settings()]


def settings() -> Settings:
    """The settings in force."""
    return _current[-1]


def configure(**changes: Any) -> Settings:
    """Replace settings in force (the pytest plugin calls this from options and ini keys)."""
    known = {f.name for f in fields(Settings)}
    unknown = set(changes) - known
    if unknown:
        raise InterpError(f"unknown setting(s) {sorted(unknown)}", expected=f"some of {sorted(known)}",
                          seen=str(sorted(changes)), fix="check the spelling")
    _current[-1] = replace(_current[-1], **changes)
    return _current[-1]
