"""pytest-interp: interpretability claims about transformer models, decided by interventions, as pytest tests.

Everything public is re-exported here; modules that need torch load on first use, so importing the package
(as pytest does for its plugin) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.errors import ClaimFailed, InterpError, InterpWarning, InterventionNoOpError
from .core.sites import Site, attn, cross_attn, cross_head, expert, head, last, mlp, resid, router

__version__ = "0.1.0"

_LAZY = {
    "Adapter": "model.adapters",
    "Attribution": "experiments.explain",
    "Effect": "core.stats",
    "Faithfulness": "experiments.faithfulness",
    "Force": "engine.experts",
    "Editing": "experiments.editing",
    "Fact": "experiments.editing",
    "Family": "core.family",
    "Chain": "experiments.cot",
    "CoT": "experiments.cot",
    "cot": "experiments.cot",
    "cot_chains": "experiments.cot",
    "assert_cot_used": "assertions.cot",
    "assert_cot_post_hoc": "assertions.cot",
    "edit": "experiments.editing",
    "Localisation": "experiments.editing",
    "localisation_vs_editing": "experiments.editing",
    "editing": "experiments.editing",
    "Greedy": "core.decoding",
    "Sample": "core.decoding",
    "Intervention": "engine.interventions",
    "Mean": "engine.interventions",
    "Noise": "engine.interventions",
    "Prompt": "experiments.prompts",
    "Remove": "engine.experts",
    "RepeatedTokens": "core.data",
    "Reroute": "engine.experts",
    "Resample": "engine.interventions",
    "Routing": "experiments.routing",
    "Segment": "experiments.prompts",
    "Settings": "core.settings",
    "Subject": "model.subject",
    "Sweep": "experiments.sweeps",
    "Trace": "experiments.tracing",
    "Zero": "engine.interventions",
    "ablate": "experiments.ablation",
    "ablate_path": "experiments.circuits",
    "patch_path": "experiments.circuits",
    "patch_pattern": "experiments.circuits",
    "block_attention": "experiments.circuits",
    "composition": "experiments.circuits",
    "edge_screen": "experiments.circuits",
    "induction_keys": "experiments.circuits",
    "matched_keys": "experiments.circuits",
    "Path": "core.paths",
    "path": "core.paths",
    "assert_composes": "assertions.circuits",
    "assert_hypothesis_explains": "assertions.circuits",
    "scrub": "experiments.scrubbing",
    "Scrub": "experiments.scrubbing",
    "Scrubbing": "experiments.scrubbing",
    "induction_target": "experiments.scrubbing",
    "assert_does_not_compose": "assertions.circuits",
    "assert_attention_mediates": "assertions.circuits",
    "assert_document_necessary": "assertions.documents",
    "assert_choice_depends_on": "assertions.documents",
    "assert_read_and_relied_on": "assertions.documents",
    "assert_read_not_relied_on": "assertions.documents",
    "attention_mass": "experiments.segments",
    "assert_choice_independent_of": "assertions.documents",
    "assert_document_unused": "assertions.documents",
    "assert_expert_necessary": "assertions.experts",
    "assert_expert_not_necessary": "assertions.experts",
    "assert_faithful": "assertions.faithfulness",
    "assert_induction_head": "assertions.induction",
    "assert_mediates": "assertions.tracing",
    "assert_necessary": "assertions.ablation",
    "assert_not_faithful": "assertions.faithfulness",
    "assert_not_necessary": "assertions.ablation",
    "assert_only": "assertions.families",
    "assert_editable": "assertions.editing",
    "assert_localisation_predicts_editing": "assertions.editing",
    "assert_localisation_does_not_predict_editing": "assertions.editing",
    "assert_rank_stable": "assertions.stability",
    "assert_rank_unstable": "assertions.stability",
    "assert_stable": "assertions.stability",
    "Stable": "assertions.stability",
    "stability": "experiments.stability",
    "Stability": "experiments.stability",
    "assert_restores": "assertions.ablation",
    "assert_routes_to": "assertions.experts",
    "assert_tool_output_necessary": "assertions.documents",
    "attribution_sweep": "experiments.screen",
    "configure": "core.settings",
    "embeddings": "experiments.representations",
    "faithfulness": "experiments.faithfulness",
    "induction_scores": "experiments.induction",
    "keep_only": "experiments.segments",
    "leave_one_out": "experiments.segments",
    "leave_out": "experiments.segments",
    "load": "model.subject",
    "assert_direction_unused": "assertions.probes",
    "assert_direction_used": "assertions.probes",
    "assert_probe_selective": "assertions.probes",
    "Probe": "experiments.probes",
    "probe": "experiments.probes",
    "Direction": "engine.interventions",
    "assert_feature_selective": "assertions.features",
    "assert_feature_sufficient": "assertions.features",
    "assert_feature_necessary": "assertions.features",
    "assert_sae_faithful": "assertions.features",
    "selectivity": "experiments.features",
    "sae_fidelity": "experiments.features",
    "features": "experiments.features",
    "Steer": "engine.interventions",
    "load_sae": "model.sae",
    "SAE": "model.sae",
    "patch": "experiments.patching",
    "patch_sweep": "experiments.sweeps",
    "provenance": "experiments.segments",
    "rank_agreement": "experiments.screen",
    "real": "core.batch",
    "register_adapter": "model.adapters",
    "repeated_tokens": "core.data",
    "replace_segment": "experiments.segments",
    "restore": "experiments.tracing",
    "routing": "experiments.routing",
    "settings": "core.settings",
    "shuffle_segments": "experiments.segments",
    "sweep": "experiments.sweeps",
    "trace": "experiments.tracing",
}
_SUBMODULES = {"explain", "metrics", "strategies"}

__all__ = [
    "Adapter",
    "Attribution",
    "Chain",
    "ClaimFailed",
    "CoT",
    "Direction",
    "Editing",
    "Effect",
    "Fact",
    "Faithfulness",
    "Family",
    "Force",
    "Greedy",
    "InterpError",
    "InterpWarning",
    "Intervention",
    "InterventionNoOpError",
    "Localisation",
    "Mean",
    "Noise",
    "Path",
    "Probe",
    "Prompt",
    "Remove",
    "RepeatedTokens",
    "Reroute",
    "Resample",
    "Routing",
    "SAE",
    "Sample",
    "Scrub",
    "Scrubbing",
    "Segment",
    "Settings",
    "Site",
    "Stability",
    "Stable",
    "Steer",
    "Subject",
    "Sweep",
    "Trace",
    "Zero",
    "ablate",
    "ablate_path",
    "assert_attention_mediates",
    "assert_choice_depends_on",
    "assert_choice_independent_of",
    "assert_composes",
    "assert_cot_post_hoc",
    "assert_cot_used",
    "assert_direction_unused",
    "assert_direction_used",
    "assert_document_necessary",
    "assert_document_unused",
    "assert_does_not_compose",
    "assert_editable",
    "assert_expert_necessary",
    "assert_expert_not_necessary",
    "assert_faithful",
    "assert_feature_necessary",
    "assert_feature_selective",
    "assert_feature_sufficient",
    "assert_hypothesis_explains",
    "assert_induction_head",
    "assert_localisation_does_not_predict_editing",
    "assert_localisation_predicts_editing",
    "assert_mediates",
    "assert_necessary",
    "assert_not_faithful",
    "assert_not_necessary",
    "assert_only",
    "assert_probe_selective",
    "assert_rank_stable",
    "assert_rank_unstable",
    "assert_read_and_relied_on",
    "assert_read_not_relied_on",
    "assert_restores",
    "assert_routes_to",
    "assert_sae_faithful",
    "assert_stable",
    "assert_tool_output_necessary",
    "attention_mass",
    "attn",
    "attribution_sweep",
    "block_attention",
    "composition",
    "configure",
    "cot",
    "cot_chains",
    "cross_attn",
    "cross_head",
    "edge_screen",
    "edit",
    "editing",
    "embeddings",
    "expert",
    "explain",
    "faithfulness",
    "features",
    "head",
    "induction_keys",
    "induction_scores",
    "induction_target",
    "keep_only",
    "last",
    "leave_one_out",
    "leave_out",
    "load",
    "load_sae",
    "localisation_vs_editing",
    "matched_keys",
    "metrics",
    "mlp",
    "patch",
    "patch_path",
    "patch_pattern",
    "patch_sweep",
    "path",
    "probe",
    "provenance",
    "rank_agreement",
    "real",
    "register_adapter",
    "repeated_tokens",
    "replace_segment",
    "resid",
    "restore",
    "router",
    "routing",
    "sae_fidelity",
    "scrub",
    "selectivity",
    "settings",
    "shuffle_segments",
    "stability",
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
    from .assertions.ablation import assert_necessary, assert_not_necessary, assert_restores
    from .assertions.documents import (assert_read_and_relied_on, assert_read_not_relied_on,
                                       assert_choice_depends_on, assert_choice_independent_of,
                                       assert_document_necessary, assert_document_unused,
                                       assert_tool_output_necessary)
    from .assertions.experts import assert_expert_necessary, assert_expert_not_necessary, assert_routes_to
    from .assertions.faithfulness import assert_faithful, assert_not_faithful
    from .assertions.families import assert_only
    from .assertions.induction import assert_induction_head
    from .assertions.tracing import assert_mediates
    from .assertions.circuits import (assert_attention_mediates, assert_composes, assert_does_not_compose,
                                     assert_hypothesis_explains)
    from .experiments.scrubbing import Scrub, Scrubbing, induction_target, scrub
    from .core.paths import Path, path
    from .experiments.circuits import (ablate_path, block_attention, composition, edge_screen, induction_keys,
                                       matched_keys, patch_path, patch_pattern)
    from .core.data import RepeatedTokens, repeated_tokens
    from .core.settings import Settings, configure, settings
    from .core.stats import Effect
    from .engine.experts import Force, Remove, Reroute
    from .engine.interventions import Intervention, Mean, Noise, Resample, Zero
    from .experiments.ablation import ablate
    from .experiments.explain import Attribution
    from .experiments.faithfulness import Faithfulness, faithfulness
    from .experiments.induction import induction_scores
    from .experiments.patching import patch
    from .experiments.prompts import Prompt, Segment
    from .experiments.routing import Routing, routing
    from .experiments.screen import attribution_sweep, rank_agreement
    from .experiments.segments import (attention_mass, keep_only, leave_one_out, leave_out, provenance, replace_segment,
                                       shuffle_segments)
    from .experiments.sweeps import Sweep, patch_sweep, sweep
    from .experiments.tracing import Trace, restore, trace
    from .model.adapters import Adapter, register as register_adapter
    from .model.sae import SAE, load_sae
    from .engine.interventions import Direction, Steer
    from .experiments.probes import Probe, probe
    from .assertions.probes import assert_direction_unused, assert_direction_used, assert_probe_selective
    from .experiments.features import features, sae_fidelity, selectivity
    from .assertions.features import (assert_feature_necessary, assert_feature_selective, assert_feature_sufficient,
                                      assert_sae_faithful)
    from .model.subject import Subject, load
    from .core.decoding import Greedy, Sample
    from .core.family import Family
    from .assertions.stability import Stable, assert_rank_stable, assert_rank_unstable, assert_stable
    from .experiments.stability import Stability, stability
    from .experiments.editing import Editing, Fact, Localisation, edit, editing, localisation_vs_editing
    from .experiments.cot import Chain, CoT, cot, cot_chains
    from .assertions.cot import assert_cot_post_hoc, assert_cot_used
    from .assertions.editing import (assert_editable, assert_localisation_does_not_predict_editing,
                                     assert_localisation_predicts_editing)
