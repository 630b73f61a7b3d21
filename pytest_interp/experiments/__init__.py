"""Experiments: describe runs for the engine and turn their scores into Effects (ablation, patching, sweeps, the
attribution screen, the routing log, prompt segments, causal tracing, attribution methods and faithfulness)."""
