"""Ablation: the damage done to a metric by replacing sites' activations (mean, zero, resample, noise, or an
expert's removal), per example, with a confidence interval."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.cache import current as current_cache
from ..core.metrics import Metric
from ..core.sites import Site, as_sites
from ..core.stats import Effect, mean_effect
from ..engine.hooks import Edit
from ..engine.interventions import Intervention, Mean
from ..engine.runner import run
from ..model.checks import as_subject, check_site
from ..model.subject import Subject
from .common import as_metric, decoding_details, cached_run, combine_runs, resolve_how, run_parts, stat_args, to_np


def ablate(subject: Subject, sites: Site | list[Site], *, inputs: Any, metric: Metric,
           how: Intervention | None = None, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Damage done by ablating ``sites`` together: per example, how much worse the metric gets
    (positive = behaviour lost; for a higher-is-better metric, clean - ablated; else ablated - clean).

    Args:
        subject: the model (from :func:`pytest_interp.load`).
        sites: one site or several, ablated in the same forward pass.
        inputs: token ids [batch, seq] (or equal-length strings, with a tokenizer).
        metric: the behaviour score.
        how: the intervention; default :class:`Mean` over the inputs (for expert sites :class:`Remove`: the
            expert is dropped after top-k and the token's other weights renormalised).
        alpha, seed: override the run-wide settings for this experiment.
    """
    subject, metric = as_subject(subject), as_metric(metric)
    sites_t = as_sites(sites)
    how, tokens, score, clean = prepare_ablation(subject, sites_t, how, inputs, metric)
    return ablate_prepared(subject, sites_t, tokens, metric, score, clean, how, stat_args(alpha, seed))


def prepare_ablation(subject: Subject, sites_t: tuple[Site, ...], how: Intervention | None, inputs: Any,
                     metric: Metric) -> tuple[Intervention, torch.Tensor, Any, torch.Tensor]:
    """An ablation's intervention, validated inputs and sites, bound metric, and clean scores."""
    tokens = subject.tokens(inputs)
    how = resolve_how(sites_t, how)
    if getattr(metric, "output", "") == "generation" and isinstance(how, Mean) and how.per_position is None and \
            any(s.positions is None for s in sites_t):
        how = dataclasses.replace(how, per_position=False)  # generated positions have no per-position mean
    how = how.for_inputs(tokens)
    for s in sites_t:
        check_site(subject, s, tokens)
    score = metric.bind(subject, subject.decoder_tokens(tokens))
    return how, tokens, score, cached_run(subject, tokens, metric, score)


def ablate_prepared(subject: Subject, sites_t: tuple[Site, ...], tokens: torch.Tensor, metric: Metric,
                    score: Any, clean: torch.Tensor, how: Intervention, st: dict[str, Any]) -> Effect:
    """:func:`ablate` after validation and the clean run (shared by sweeps)."""
    def one(i: int) -> torch.Tensor:
        edits = [Edit(s, how.prepare_run(subject, s, tokens, i), how.must_change, how.describe(), how.pure)
                 for s in sites_t]
        return run(subject, tokens, edits, score, needs_clean=metric.needs_clean)

    def compute() -> torch.Tensor:
        return combine_runs(how, tokens.shape[0], one)

    hit = current_cache().scores(run_parts(subject, tokens, metric, sites_t, how), compute, rows=tokens.shape[0])
    return ablation_effect(subject, sites_t, metric, how, clean, hit, st)


def ablation_effect(subject: Subject, sites_t: tuple[Site, ...], metric: Metric, how: Intervention,
                    clean: torch.Tensor, hit: torch.Tensor, st: dict[str, Any]) -> Effect:
    """The Effect of an ablation from its clean and intervened per-example scores."""
    values = clean - hit if metric.higher_is_better else hit - clean
    return mean_effect(to_np(values), sites=sites_t, method="ablate", intervention=how.describe(),
                       metric=metric.name, higher_is_better=metric.higher_is_better,
                       details={"clean_mean": float(clean.mean()), "ablated_mean": float(hit.mean()),
                                **decoding_details(metric)},
                       model=subject.identity(), **st)
