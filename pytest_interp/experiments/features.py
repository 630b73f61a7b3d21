"""SAE features: their activations on inputs (top-activating examples), whether an SAE is faithful to the model
at its site, and how selective a feature is between two input classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.batch import real
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.stats import Effect, bootstrap_ci, check_finite, sign_flip_p
from ..engine.interventions import Reconstruct, Zero
from ..engine.runner import capture
from ..model.checks import as_subject, check_site
from ..model.sae import SAE
from ..model.subject import Subject
from .ablation import ablate
from .common import as_metric, stat_args


@dataclass(frozen=True, eq=False)
class FeatureActivations:
    """An SAE's feature activations on a batch: ``acts [n, seq, d_sae]`` (0 at padding), the tokens, and the
    top-activating (example, position) pairs of each feature."""

    acts: torch.Tensor = field(repr=False)
    tokens: torch.Tensor = field(repr=False)
    sae: SAE

    def top(self, feature: int, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` (example, position, activation) triples where ``feature`` fires most, largest first."""
        a = self.acts[..., int(feature)]
        vals, flat = a.flatten().topk(min(k, a.numel()))
        seq = a.shape[1]
        return [(int(i) // seq, int(i) % seq, float(v)) for v, i in zip(vals, flat) if float(v) > 0]

    def frequency(self) -> torch.Tensor:
        """Each feature's share of real tokens where it is active ``[d_sae]``."""
        valid = real(self.tokens).to(self.acts.device)
        return (self.acts > 0)[valid].float().mean(0)

    def at(self, position: int) -> torch.Tensor:
        """Activations at one position of every example ``[n, d_sae]`` (negative: from each example's end)."""
        lengths = real(self.tokens).sum(1)
        idx = lengths + position if position < 0 else torch.full_like(lengths, position)
        if bool((idx < 0).any()) or bool((idx >= lengths).any()):
            raise InterpError(f"position {position} is outside some example", expected="a position every "
                              "example has", seen=f"lengths {int(lengths.min())}..{int(lengths.max())}",
                              fix="use pi.last or a position inside the shortest example")
        return self.acts[torch.arange(len(idx)), idx.to(self.acts.device)]


def features(subject: Subject, sae: SAE, inputs: Any) -> FeatureActivations:
    """The SAE's feature activations on ``inputs`` (see :class:`FeatureActivations`)."""
    subject = as_subject(subject)
    tokens = subject.tokens(inputs)
    site = sae.features()
    check_site(subject, site, tokens)
    acts = capture(subject, tokens, [site])[site].float()
    acts = acts * real(tokens).to(acts.device)[..., None]
    return FeatureActivations(acts=acts, tokens=tokens, sae=sae)


@dataclass(frozen=True, eq=False)
class Fidelity:
    """How faithful an SAE is to the model at its site, on a batch.

    Attributes:
        recovered: the share of the metric's loss (zero-ablating the site) that substituting the SAE's
            reconstruction recovers, ``(M_zero - M_sae) / (M_zero - M_clean)`` on batch means, with a
            bootstrap CI (SAELens' CE loss recovered when the metric is the next-token loss).
        explained_variance: ``1 - sum |x - x_hat|^2 / sum |x - mean x|^2`` over real tokens.
        l0: mean number of active features per real token.
        dead: features never active on the batch.
    """

    recovered: Effect
    explained_variance: float
    l0: float
    dead: int
    sae: SAE

    def describe(self) -> str:
        r = self.recovered
        return (f"loss recovered {r.mean:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}], explained variance "
                f"{self.explained_variance:.3f}, L0 {self.l0:.1f}, dead {self.dead}/{self.sae.d_sae}")


def sae_fidelity(subject: Subject, sae: SAE, inputs: Any, *, metric: Metric | None = None,
                 alpha: float | None = None, seed: int | None = None) -> Fidelity:
    """Is ``sae`` faithful to ``subject`` at its site? (See :class:`Fidelity`.) ``metric`` defaults to the
    next-token loss (causal models); give another for encoders."""
    subject = as_subject(subject)
    if metric is None:
        if not subject.causal:
            raise InterpError("the SAE's loss recovered needs a metric on this model", expected="a causal LM "
                              "(next-token loss) or metric=...", seen=f"a {subject.adapter_spec.name} encoder",
                              fix="pass metric=, e.g. pi.metrics.cosine(...)")
        from ..core.metrics import loss

        metric = loss()
    metric = as_metric(metric)
    st = stat_args(alpha, seed)
    tokens = subject.tokens(inputs)
    host = sae.site
    check_site(subject, sae.features(), tokens)
    d_sae = ablate(subject, host, inputs=tokens, metric=metric, how=Reconstruct(sae=sae), alpha=alpha, seed=seed)
    d_zero = ablate(subject, host, inputs=tokens, metric=metric, how=Zero(), alpha=alpha, seed=seed)
    a, z = check_finite(d_sae.values, "damage"), check_finite(d_zero.values, "damage")
    if abs(float(z.mean())) < 1e-12:
        raise InterpError(f"zero-ablating {host} does not change {metric.name}", expected="a site whose "
                          "ablation changes the metric (the denominator of loss recovered)",
                          seen=f"mean damage {float(z.mean()):.3g}", fix="use another metric or inputs")
    ci = bootstrap_ci((a, z), lambda sa, sz: 1.0 - sa / sz, alpha=st["alpha"], n_boot=st["n_boot"],
                      seed=st["seed"])
    recovered = Effect(mean=float(1.0 - a.mean() / z.mean()), ci=ci, n=int(a.size),
                       p_value=sign_flip_p(z - a, n_perm=st["n_perm"], seed=st["seed"]), values=1.0 - a / z.mean(),
                       sites=(host,), method="SAE fidelity", intervention=f"SAE reconstruction vs zero ({sae.hook_name})",
                       metric=d_sae.metric, higher_is_better=True, seed=st["seed"], alpha=st["alpha"],
                       n_boot=st["n_boot"], details={"damage_sae": float(a.mean()), "damage_zero": float(z.mean())},
                       model=subject.identity(), ci_method="bootstrap")
    x = capture(subject, tokens, [host])[host].float()
    valid = real(tokens).to(x.device)
    x = x[valid]
    acts = sae.encode(x)
    err = ((x - sae.decode(acts)) ** 2).sum()
    var = ((x - x.mean(0)) ** 2).sum()
    return Fidelity(recovered=recovered, explained_variance=float(1.0 - err / var.clamp_min(1e-12)),
                    l0=float((acts > 0).sum(-1).float().mean()), dead=int(((acts > 0).sum(0) == 0).sum()), sae=sae)


def selectivity(subject: Subject, feature: Any, *, positive: Any, negative: Any, position: int = -1,
                alpha: float | None = None, seed: int | None = None) -> Effect:
    """How selective a feature is between two input classes, at one position of every example: the AUC of its
    activation (the probability that a ``positive`` example's activation exceeds a ``negative`` one's, ties
    counting half), with a bootstrap CI resampling each class."""
    subject = as_subject(subject)
    if feature.kind != "feature" or len(feature.features) != 1:
        raise InterpError("selectivity is of one SAE feature", expected="sae.feature(i)", seen=str(feature),
                          fix="pass one feature")
    st = stat_args(alpha, seed)
    i = feature.features[0]
    pos = features(subject, feature.sae, positive).at(position)[:, i].cpu().numpy().astype(np.float64)
    neg = features(subject, feature.sae, negative).at(position)[:, i].cpu().numpy().astype(np.float64)
    for name, v in (("positive", pos), ("negative", neg)):
        if v.size < 2:
            raise InterpError(f"too few {name} examples", expected=">= 2 per class", seen=f"{v.size}",
                              fix="pass more examples of each class")
    auc = _auc(pos, neg)
    from scipy.stats import mannwhitneyu

    p_value = 1.0 if np.ptp(np.concatenate([pos, neg])) == 0 else float(mannwhitneyu(pos, neg).pvalue)
    rng = np.random.default_rng(st["seed"])
    reps = np.array([_auc(pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)])
                     for _ in range(min(st["n_boot"], 2000))])
    lo, hi = np.quantile(reps, [st["alpha"] / 2, 1 - st["alpha"] / 2])
    return Effect(mean=auc, ci=(float(lo), float(hi)), n=int(pos.size + neg.size), p_value=p_value,
                  values=np.concatenate([pos, -neg]), sites=(feature,), method="selectivity",
                  intervention="none (feature activations)", metric=f"AUC at position {position}",
                  seed=st["seed"], alpha=st["alpha"], n_boot=min(st["n_boot"], 2000),
                  details={"mean_positive": float(pos.mean()), "mean_negative": float(neg.mean()),
                           "n_positive": int(pos.size), "n_negative": int(neg.size)},
                  model=subject.identity(), ci_method="bootstrap (per class)")


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC: P(pos > neg) + P(pos = neg) / 2."""
    both = np.concatenate([pos, neg])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(both.size)
    ranks[order] = np.arange(1, both.size + 1)
    for v in np.unique(both):  # mid-ranks for ties
        tie = both == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))

