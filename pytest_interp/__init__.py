"""pytest-interp: interpretability claims about transformer models, decided by interventions, as pytest tests.

Everything public is re-exported here; modules that need torch load on first use, so importing the package
(as pytest does for its plugin) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import ClaimFailed, InterpError, InterpWarning, InterventionNoOpError
from ._sites import Site, attn, expert, head, mlp, resid, router

__version__ = "0.1.0"

_LAZY = {
    "Adapter": "_adapters",
    "Effect": "_stats",
    "Intervention": "_interventions",
    "Mean": "_interventions",
    "Noise": "_interventions",
    "RepeatedTokens": "_data",
    "Resample": "_interventions",
    "Settings": "_settings",
    "Subject": "_subject",
    "Sweep": "_sweeps",
    "Zero": "_interventions",
    "ablate": "_experiments",
    "assert_induction_head": "_claims",
    "attribution_sweep": "_attribution",
    "rank_agreement": "_attribution",
    "assert_necessary": "_claims",
    "assert_not_necessary": "_claims",
    "assert_restores": "_claims",
    "configure": "_settings",
    "induction_scores": "_claims",
    "load": "_subject",
    "patch": "_experiments",
    "register_adapter": "_adapters",
    "repeated_tokens": "_data",
    "settings": "_settings",
    "sweep": "_sweeps",
    "patch_sweep": "_sweeps",
}
_SUBMODULES = {"metrics", "strategies"}

__all__ = [
    "Adapter",
    "ClaimFailed",
    "Effect",
    "InterpError",
    "InterpWarning",
    "Intervention",
    "InterventionNoOpError",
    "Mean",
    "Noise",
    "RepeatedTokens",
    "Resample",
    "Settings",
    "Site",
    "Subject",
    "Sweep",
    "Zero",
    "ablate",
    "assert_induction_head",
    "assert_necessary",
    "assert_not_necessary",
    "assert_restores",
    "attn",
    "attribution_sweep",
    "configure",
    "expert",
    "head",
    "induction_scores",
    "load",
    "metrics",
    "mlp",
    "patch",
    "patch_sweep",
    "rank_agreement",
    "register_adapter",
    "repeated_tokens",
    "resid",
    "router",
    "settings",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, "register" if name == "register_adapter" else name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'pytest_interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from . import metrics, strategies
    from ._adapters import Adapter
    from ._attribution import attribution_sweep, rank_agreement
    from ._adapters import register as register_adapter
    from ._claims import (assert_induction_head, assert_necessary, assert_not_necessary, assert_restores,
                          induction_scores)
    from ._data import RepeatedTokens, repeated_tokens
    from ._experiments import ablate, patch
    from ._interventions import Intervention, Mean, Noise, Resample, Zero
    from ._settings import Settings, configure, settings
    from ._stats import Effect
    from ._subject import Subject, load
    from ._sweeps import Sweep, patch_sweep, sweep
