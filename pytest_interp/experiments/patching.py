"""Activation patching: the fraction of a clean-corrupt gap in a metric that sites carry, computed on batch
means with a resampled-ratio confidence interval."""

from __future__ import annotations

from typing import Any

import torch

from ..core.cache import current as current_cache
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site, as_sites
from ..core.stats import Effect, bootstrap_ci, sign_flip_p
from ..engine.hooks import Edit
from ..engine.interventions import Patch
from ..engine.runner import run
from ..model.checks import as_subject, check_site
from ..model.subject import Subject
from .common import as_metric, cached_run, decoding_details, run_parts, stat_args, to_np


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
    subject, metric = as_subject(subject), as_metric(metric)
    sites_t = as_sites(sites)
    routed = [s for s in sites_t if s.kind in ("expert", "router")]
    if routed:
        raise InterpError(f"{routed[0]} cannot be patched", expected="a head, attn, mlp or resid site",
                          seen=f"a {routed[0].kind} site", fix=f"patch the whole MoE block, pi.mlp({routed[0].layer}), "
                          "or ablate the expert with pi.ablate(..., how=pi.Remove())")
    prep = PreparedPatch(subject, clean, corrupt, metric, into)
    for s in sites_t:
        check_site(subject, s, prep.target)
    return patch_prepared(subject, sites_t, prep, stat_args(alpha, seed))


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
        score_c, score_k = metric.bind(subject, subject.decoder_tokens(tc)), metric.bind(subject, subject.decoder_tokens(tk))
        self.k = k = to_np(cached_run(subject, tc, metric, score_c)) * sign
        self.c = c = to_np(cached_run(subject, tk, metric, score_k)) * sign
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

    p = current_cache().scores(run_parts(subject, prep.target, prep.metric, sites_t, how), compute,
                               rows=prep.target.shape[0])
    return patch_effect(subject, sites_t, prep, p, st)


def patch_effect(subject: Subject, sites_t: tuple[Site, ...], prep: PreparedPatch, patched: torch.Tensor,
                 st: dict[str, Any]) -> Effect:
    """The Effect of a patch from the patched run's per-example scores."""
    p = to_np(patched) * prep.sign
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
                           "patched_mean": sign * float(p.mean()), **decoding_details(prep.metric)})
