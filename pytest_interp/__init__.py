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
    "Attribution": "_explain",
    "Effect": "_stats",
    "Faithfulness": "_explain",
    "Force": "_moe",
    "Intervention": "_interventions",
    "Mean": "_interventions",
    "Noise": "_interventions",
    "Prompt": "_context",
    "Remove": "_moe",
    "RepeatedTokens": "_data",
    "Reroute": "_moe",
    "Resample": "_interventions",
    "Routing": "_moe",
    "Segment": "_context",
    "Settings": "_settings",
    "Subject": "_subject",
    "Sweep": "_sweeps",
    "Trace": "_trace",
    "Zero": "_interventions",
    "ablate": "_experiments",
    "assert_document_necessary": "_context",
    "assert_document_unused": "_context",
    "assert_expert_necessary": "_moe",
    "assert_expert_not_necessary": "_moe",
    "assert_faithful": "_explain",
    "assert_induction_head": "_claims",
    "assert_mediates": "_trace",
    "assert_necessary": "_claims",
    "assert_not_faithful": "_explain",
    "assert_not_necessary": "_claims",
    "assert_restores": "_claims",
    "assert_routes_to": "_moe",
    "assert_tool_output_necessary": "_context",
    "attribution_sweep": "_attribution",
    "configure": "_settings",
    "faithfulness": "_explain",
    "induction_scores": "_claims",
    "keep_only": "_context",
    "leave_one_out": "_context",
    "leave_out": "_context",
    "load": "_subject",
    "patch": "_experiments",
    "patch_sweep": "_sweeps",
    "provenance": "_context",
    "rank_agreement": "_attribution",
    "register_adapter": "_adapters",
    "repeated_tokens": "_data",
    "replace_segment": "_context",
    "restore": "_trace",
    "routing": "_moe",
    "settings": "_settings",
    "shuffle_segments": "_context",
    "sweep": "_sweeps",
    "trace": "_trace",
}
_SUBMODULES = {"explain", "metrics", "strategies"}

__all__ = [
    "Adapter",
    "Attribution",
    "ClaimFailed",
    "Effect",
    "Faithfulness",
    "Force",
    "InterpError",
    "InterpWarning",
    "Intervention",
    "InterventionNoOpError",
    "Mean",
    "Noise",
    "Prompt",
    "Remove",
    "RepeatedTokens",
    "Reroute",
    "Resample",
    "Routing",
    "Segment",
    "Settings",
    "Site",
    "Subject",
    "Sweep",
    "Trace",
    "Zero",
    "ablate",
    "assert_document_necessary",
    "assert_document_unused",
    "assert_expert_necessary",
    "assert_expert_not_necessary",
    "assert_faithful",
    "assert_induction_head",
    "assert_mediates",
    "assert_necessary",
    "assert_not_faithful",
    "assert_not_necessary",
    "assert_restores",
    "assert_routes_to",
    "assert_tool_output_necessary",
    "attn",
    "attribution_sweep",
    "configure",
    "expert",
    "explain",
    "faithfulness",
    "head",
    "induction_scores",
    "keep_only",
    "leave_one_out",
    "leave_out",
    "load",
    "metrics",
    "mlp",
    "patch",
    "patch_sweep",
    "provenance",
    "rank_agreement",
    "register_adapter",
    "repeated_tokens",
    "replace_segment",
    "resid",
    "restore",
    "router",
    "routing",
    "settings",
    "shuffle_segments",
    "sweep",
    "trace",
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
    from . import explain, metrics, strategies
    from ._adapters import Adapter
    from ._attribution import attribution_sweep, rank_agreement
    from ._adapters import register as register_adapter
    from ._claims import (assert_induction_head, assert_necessary, assert_not_necessary, assert_restores,
                          induction_scores)
    from ._context import (Prompt, Segment, assert_document_necessary, assert_document_unused,
                           assert_tool_output_necessary, keep_only, leave_one_out, leave_out, provenance,
                           replace_segment, shuffle_segments)
    from ._data import RepeatedTokens, repeated_tokens
    from ._explain import Attribution, Faithfulness, assert_faithful, assert_not_faithful, faithfulness
    from ._experiments import ablate, patch
    from ._interventions import Intervention, Mean, Noise, Resample, Zero
    from ._moe import (Force, Remove, Reroute, Routing, assert_expert_necessary, assert_expert_not_necessary,
                       assert_routes_to, routing)
    from ._settings import Settings, configure, settings
    from ._stats import Effect
    from ._subject import Subject, load
    from ._sweeps import Sweep, patch_sweep, sweep
    from ._trace import Trace, assert_mediates, restore, trace
