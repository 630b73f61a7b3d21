"""Experiments: ablation and activation patching, measured over many inputs into an Effect."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ._cache import current as current_cache
from ._cache import site_key, tensor_digest
from ._errors import InterpError
from ._interventions import Intervention, Mean, Patch, check_how
from ._metrics import Metric
from ._runner import Edit, check_site, run
from ._settings import settings
from ._sites import Site, as_sites
from ._stats import Effect, bootstrap_ci, mean_effect, sign_flip_p
from ._subject import Subject


def _subject(subject: Any) -> Subject:
    if not isinstance(subject, Subject):
        raise InterpError("the first argument is not a Subject", expected="pi.load(path_or_model)",
                          seen=type(subject).__name__, fix="wrap the model with pi.load(...) first "
                          "(or use the `subject` fixture)")
    return subject


def _metric(metric: Any) -> Metric:
    if not isinstance(metric, Metric):
        raise InterpError("metric is not a pi.metrics.Metric", expected="e.g. pi.metrics.loss() or "
                          "pi.metrics.Metric(fn, higher_is_better=True)", seen=repr(metric)[:80],
                          fix="wrap a function with pi.metrics.Metric(fn, higher_is_better=...)")
    return metric


def _stat_args(alpha: float | None, seed: int | None) -> dict[str, Any]:
    s = settings()
    return {"alpha": s.alpha if alpha is None else alpha, "seed": s.seed if seed is None else seed,
            "n_boot": s.n_boot, "n_perm": s.n_perm}


def run_parts(subject: Subject, tokens: torch.Tensor, metric: Metric, sites_t: tuple[Site, ...] = (),
              how: Intervention | None = None) -> Callable[[], dict[str, Any] | None]:
    """The run cache key's parts for scoring ``tokens`` with ``metric`` under ``how`` at ``sites_t``."""
    def parts() -> dict[str, Any] | None:
        mspec = metric.cache_spec()
        if mspec is None:
            return None
        spec = subject.adapter_spec
        return {"model": subject.fingerprint, "adapter": [spec.name, spec.layers, spec.attn_out, spec.mlp],
                "tokens": tensor_digest(tokens), "metric": mspec, "sites": [site_key(s) for s in sites_t],
                "intervention": how.spec() if how is not None else "clean",
                "dtype": subject.dtype_key, "device": str(subject.device),
                "batch_size": settings().batch_size, "attn": subject.attn_implementation}
    return parts


def cached_run(subject: Subject, tokens: torch.Tensor, metric: Metric, score: Any) -> torch.Tensor:
    """Per-example scores of the clean run, from the run cache when it has them."""
    return current_cache().scores(run_parts(subject, tokens, metric), lambda: run(subject, tokens, [], score))


def resolve_how(sites_t: tuple[Site, ...], how: Any) -> Intervention:
    """The intervention to apply at ``sites_t``: ``how`` checked, or the default for those sites (the mean over
    the inputs; removal after top-k for MoE experts)."""
    from ._moe import resolve_how as moe_how

    return moe_how(sites_t, None if how is None else check_how(how)) or Mean()


def _to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


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
    subject, metric = _subject(subject), _metric(metric)
    sites_t = as_sites(sites)
    how, tokens, score, clean = prepare_ablation(subject, sites_t, how, inputs, metric)
    return ablate_prepared(subject, sites_t, tokens, metric, score, clean, how, _stat_args(alpha, seed))


def prepare_ablation(subject: Subject, sites_t: tuple[Site, ...], how: Intervention | None, inputs: Any,
                     metric: Metric) -> tuple[Intervention, torch.Tensor, Any, torch.Tensor]:
    """An ablation's intervention, validated inputs and sites, bound metric, and clean scores."""
    how = resolve_how(sites_t, how)
    tokens = subject.tokens(inputs)
    for s in sites_t:
        check_site(subject, s, tokens)
    score = metric.bind(subject, tokens)
    return how, tokens, score, cached_run(subject, tokens, metric, score)


def ablate_prepared(subject: Subject, sites_t: tuple[Site, ...], tokens: torch.Tensor, metric: Metric,
                    score: Any, clean: torch.Tensor, how: Intervention, st: dict[str, Any]) -> Effect:
    """:func:`ablate` after validation and the clean run (shared by sweeps)."""
    def compute() -> torch.Tensor:
        edits = [Edit(s, how.prepare(subject, s, tokens), how.must_change, how.describe(), how.pure) for s in sites_t]
        return run(subject, tokens, edits, score, needs_clean=metric.needs_clean)

    hit = current_cache().scores(run_parts(subject, tokens, metric, sites_t, how), compute)
    return ablation_effect(subject, sites_t, metric, how, clean, hit, st)


def ablation_effect(subject: Subject, sites_t: tuple[Site, ...], metric: Metric, how: Intervention,
                    clean: torch.Tensor, hit: torch.Tensor, st: dict[str, Any]) -> Effect:
    """The Effect of an ablation from its clean and intervened per-example scores."""
    values = clean - hit if metric.higher_is_better else hit - clean
    return mean_effect(_to_np(values), sites=sites_t, method="ablate", intervention=how.describe(),
                       metric=metric.name, higher_is_better=metric.higher_is_better,
                       details={"clean_mean": float(clean.mean()), "ablated_mean": float(hit.mean())},
                       model=subject.identity(), **st)


def patch(subject: Subject, sites: Site | list[Site], *, clean: Any, corrupt: Any, metric: Metric,
          into: str = "corrupt", alpha: float | None = None, seed: int | None = None) -> Effect:
    """Activation patching: the fraction of the clean-corrupt gap in ``metric`` that ``sites`` carry.

    ``into="corrupt"`` (denoising, the default) runs the corrupt inputs with the sites' clean activations and
    reports the restored fraction ``(mean patched - mean corrupt) / (mean clean - mean corrupt)``.
    ``into="clean"`` (noising) runs the clean inputs with the sites' corrupt activations and reports the
    destroyed fraction ``(mean clean - mean patched) / (mean clean - mean corrupt)``. Both are computed on
    batch means, so an example whose own gap is near zero cannot blow the estimate up; the CI resamples
    examples and recomputes the ratio.
    """
    subject, metric = _subject(subject), _metric(metric)
    sites_t = as_sites(sites)
    routed = [s for s in sites_t if s.kind in ("expert", "router")]
    if routed:
        raise InterpError(f"{routed[0]} cannot be patched", expected="a head, attn, mlp or resid site",
                          seen=f"a {routed[0].kind} site", fix=f"patch the whole MoE block, pi.mlp({routed[0].layer}), "
                          "or ablate the expert with pi.ablate(..., how=pi.Remove())")
    prep = PreparedPatch(subject, clean, corrupt, metric, into)
    for s in sites_t:
        check_site(subject, s, prep.target)
    return patch_prepared(subject, sites_t, prep, _stat_args(alpha, seed))


class PreparedPatch:
    """Validated clean/corrupt batches with their metric scores (shared by patching sweeps)."""

    def __init__(self, subject: Subject, clean: Any, corrupt: Any, metric: Metric, into: str) -> None:
        if into not in ("corrupt", "clean"):
            raise InterpError("into= must be 'corrupt' or 'clean'", expected="'corrupt' (clean activations into "
                              "the corrupt run) or 'clean' (corrupt activations into the clean run)",
                              seen=repr(into), fix="pick one of the two directions")
        if metric.needs_clean:
            raise InterpError(f"metric {metric.name} cannot score patching", expected="a metric of the run alone "
                              "(logprob, logit_diff, loss, accuracy, or your own)", seen=metric.name,
                              fix="use pi.metrics.logit_diff(answer, wrong) or logprob(answer)")
        tc = subject.tokens(clean, name="clean")
        tk = subject.tokens(corrupt, name="corrupt")
        if tc.shape != tk.shape:
            raise InterpError("clean and corrupt inputs have different shapes",
                              expected="the same [batch, seq] (aligned token for token)",
                              seen=f"clean {tuple(tc.shape)}, corrupt {tuple(tk.shape)}",
                              fix="pad or choose prompts so the two batches tokenise to equal shapes")
        self.metric, self.into = metric, into
        self.sign = sign = 1.0 if metric.higher_is_better else -1.0
        score_c, score_k = metric.bind(subject, tc), metric.bind(subject, tk)
        self.k = k = _to_np(cached_run(subject, tc, metric, score_c)) * sign
        self.c = c = _to_np(cached_run(subject, tk, metric, score_k)) * sign
        self.gap = gap = float(k.mean() - c.mean())
        scale = max(abs(float(k.mean())), abs(float(c.mean())), 1e-6)
        if not abs(gap) > 1e-6 * scale:
            raise InterpError(f"clean and corrupt inputs give the same {metric.name}",
                              expected="a clean-corrupt gap to restore", seen=f"mean clean {k.mean():.6g}, "
                              f"mean corrupt {c.mean():.6g}",
                              fix="corrupt the inputs in a way that changes the behaviour")
        if gap < 0:
            raise InterpError(f"the corrupt inputs score better than the clean ones on {metric.name}",
                              expected="clean better than corrupt", seen=f"mean clean {sign * k.mean():.6g}, "
                              f"mean corrupt {sign * c.mean():.6g}",
                              fix="swap clean= and corrupt=, or check the metric")
        if into == "corrupt":
            self.target, self.source, self.score, self.label = tk, tc, score_k, "patch clean -> corrupt"
        else:
            self.target, self.source, self.score, self.label = tc, tk, score_c, "patch corrupt -> clean"


def patch_prepared(subject: Subject, sites_t: tuple[Site, ...], prep: PreparedPatch, st: dict[str, Any]) -> Effect:
    """:func:`patch` after validation and the clean/corrupt runs (shared by sweeps)."""
    how = Patch(source=prep.source, label=prep.label)

    def compute() -> torch.Tensor:
        edits = [Edit(s, how.prepare(subject, s, prep.target), False, prep.label, how.pure) for s in sites_t]
        return run(subject, prep.target, edits, prep.score)

    p = current_cache().scores(run_parts(subject, prep.target, prep.metric, sites_t, how), compute)
    return patch_effect(subject, sites_t, prep, p, st)


def patch_effect(subject: Subject, sites_t: tuple[Site, ...], prep: PreparedPatch, patched: torch.Tensor,
                 st: dict[str, Any]) -> Effect:
    """The Effect of a patch from the patched run's per-example scores."""
    p = _to_np(patched) * prep.sign
    c, k, gap, sign = prep.c, prep.k, prep.gap, prep.sign
    if prep.into == "corrupt":
        diff, ratio = p - c, (lambda P, C, K: (P - C) / (K - C))
        mean = float((p.mean() - c.mean()) / gap)
    else:
        diff, ratio = k - p, (lambda P, C, K: (K - P) / (K - C))
        mean = float((k.mean() - p.mean()) / gap)
    ci = bootstrap_ci((p, c, k), ratio, alpha=st["alpha"], n_boot=st["n_boot"], seed=st["seed"])
    return Effect(mean=mean, ci=ci, n=int(p.size), p_value=sign_flip_p(diff, n_perm=st["n_perm"], seed=st["seed"]),
                  values=diff / gap, sites=sites_t, method="patch", intervention=prep.label,
                  metric=prep.metric.name, higher_is_better=prep.metric.higher_is_better, seed=st["seed"],
                  alpha=st["alpha"], n_boot=st["n_boot"], model=subject.identity(),
                  details={"clean_mean": sign * float(k.mean()), "corrupt_mean": sign * float(c.mean()),
                           "patched_mean": sign * float(p.mean())})
