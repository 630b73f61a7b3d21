"""The mediation claim: restoring sites in a subject-noised run (causal tracing) recovers the answer."""

from __future__ import annotations

from typing import Any

from ..core.sites import describe
from ..core.stats import Effect
from ..experiments.tracing import restore
from ..model.subject import Subject
from .decide import decide, threshold


def assert_mediates(subject: Subject, sites: Any, *, prompts: Any, subject_tokens: Any, answer: Any, at_least: float,
                    noise: float = 3.0, samples: int = 5, alpha: float | None = None,
                    seed: int | None = None) -> Effect:
    """Claim: restoring ``sites`` (e.g. ``pi.mlp(3).at(last_subject_token)``) in the subject-noised run recovers at
    least ``at_least`` of the clean-corrupted gap in the answer's probability (lower CI bound)."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    eff = restore(subject, sites, prompts=prompts, subject_tokens=subject_tokens, answer=answer, noise=noise,
                  samples=samples, alpha=alpha, seed=seed)
    d = eff.details
    extra = [f"  answer probability: clean {d['clean_mean']:.4g}, corrupted {d['corrupt_mean']:.4g}, restored "
             f"{d['restored_mean']:.4g}",
             f"  noise: std {d['noise_std']:.4g} = {noise:g} x embedding std {d['embedding_std']:.4g}, "
             f"{samples} draw(s) per prompt"]
    return decide(f"{describe(eff.sites)} mediates the answer (restores >= {t:g} of the gap)", eff,
                   eff.ci[0] >= t, "lower CI bound >= threshold", f"fraction >= {t:g}", extra, kind="mediates",
                   bounds=(t,))
