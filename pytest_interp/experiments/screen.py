"""Attribution screens: a first-order estimate of every site's ablation effect from one forward and one
backward pass (the gradient of the metric times the change the ablation makes), to rank sites before the
exact sweep confirms the top ones. An estimate ranks; it never decides a claim."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import torch

from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site, as_sites
from ..core.stats import mean_effect
from ..engine.hooks import install
from ..engine.interventions import Intervention, Mean, Zero, check_how
from ..engine.runner import backward, capture, chunks, remember
from ..model.checks import as_subject, check_site, one_stack, position_mask
from ..model.subject import Subject
from .common import as_metric, stat_args, to_np
from .sweeps import Sweep, all_heads


def attribution_sweep(subject: Subject, sites: Iterable[Site] | None = None, *, inputs: Any, metric: Metric,
                      how: Intervention | None = None, alpha: float | None = None,
                      seed: int | None = None) -> Sweep:
    """Estimate each site's ablation damage (as :func:`pytest_interp.sweep` measures it) to first order:
    ``damage ~ -(replacement - activation) . d score / d activation`` (sign flipped for lower-is-better
    metrics), for every site at once. Supports ``Mean()`` and ``Zero()``.

    A set of SAE features (``sae.features()``: all of them) is screened in one hook and estimated feature by
    feature: the result has one entry per feature, ``sae.feature(i)`` (with the set's positions)."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "the attribution sweep")
    with subject.steady():  # one fingerprint for every site
        how = check_how(Mean() if how is None else how)
        if not isinstance(how, (Mean, Zero)):
            raise InterpError("attribution needs a deterministic replacement",
                              expected="pi.Mean() or pi.Zero()",
                              seen=how.describe(), fix="screen with Mean or Zero, then run the exact sweep")
        if metric.needs_clean:
            raise InterpError(f"metric {metric.name} has no useful gradient at the clean run",
                              expected="loss, logprob, logit_diff, accuracy-free metrics", seen=metric.name,
                              fix="screen with pi.metrics.loss() or logprob(answer)")
        sites_t = as_sites(all_heads(subject) if sites is None else list(sites))
        tokens = subject.tokens(inputs)
        how = how.for_inputs(tokens)
        for s in sites_t:
            check_site(subject, s, tokens)
        source = how.reads(subject, tokens)
        # the replacement reads clean activations of ``source``: when that is the batch itself and it fits in
        # one forward pass, the screen's own pass provides them; otherwise one capture pass reads every site
        own = source is not None and len(list(chunks(tokens.shape[0]))) == 1 and torch.equal(source, tokens)
        if source is not None and not own:
            capture(subject, source, list(dict.fromkeys(s.unrestricted for s in sites_t)))
        weights = how.weights(tokens.shape[0])  # the size-corrected mean combines its runs' replacements

        def prepared() -> dict[Site, list[Any]]:
            return {s: [how.prepare_run(subject, s, tokens, i) for i in range(len(weights))] for s in sites_t}

        replace = {} if own else prepared()
        score = metric.bind(subject, subject.decoder_tokens(tokens))
        sign = -1.0 if metric.higher_is_better else 1.0
        est: dict[Site, list[np.ndarray]] = {s: [] for s in sites_t}
        for rows in chunks(tokens.shape[0]):
            chunk = tokens[rows.to(tokens.device)]
            acts: dict[Site, torch.Tensor] = {}
            handles = []
            for s in sites_t:
                def keep(act: torch.Tensor, s: Site = s) -> torch.Tensor:
                    act = act * 1.0  # a fresh node whose gradient is this site's, even for a head's slice
                    act.retain_grad()
                    acts[s] = act
                    return act
                handles.append(install(subject, s, keep))
            dev_rows = rows.to(tokens.device)
            backward(subject, chunk, handles, lambda logits: score(logits, dev_rows).sum())
            if own:
                for s in sites_t:
                    remember(subject, tokens, s.unrestricted, acts[s].detach())
                replace = prepared()
            for s in sites_t:
                a = acts[s]
                if a.grad is None:
                    raise InterpError(f"no gradient reached {s}", expected="a site upstream of the logits",
                                      seen="grad None", fix="check the adapter for this model")
                delta = sum(w * (fn(a.detach(), rows) - a.detach()) for w, fn in zip(weights, replace[s]))
                mask = position_mask(s, rows, tokens.shape[0], a.shape[1], a.device)
                if mask is not None:
                    delta = delta * mask[..., None]
                if _per_feature(s):  # [rows, k]: each feature's own estimate
                    est[s].append(to_np(sign * (delta * a.grad).sum(1)))
                else:
                    est[s].append(to_np(sign * (delta * a.grad).sum((1, 2))))
        st = stat_args(alpha, seed)
        effects = {}
        for s in sites_t:
            values = np.concatenate(est[s])
            parts = ([(dataclasses.replace(s, index=f, features=(f,)), values[:, j]) for j, f in enumerate(s.features)]
                     if _per_feature(s) else [(s, values)])
            for site, v in parts:
                effects[site] = mean_effect(v, sites=(site,), method="attribution", estimate=True,
                                            intervention=f"first-order estimate of {how.describe()}",
                                            metric=metric.name, higher_is_better=metric.higher_is_better,
                                            model=subject.identity(), **st)
        return Sweep(effects, f"attribution screen: {how.describe()}, estimated damage to {metric.name}")


def _per_feature(site: Site) -> bool:
    return site.kind == "feature" and len(site.features) > 1


def rank_agreement(estimate: Sweep, exact: Sweep) -> float:
    """Spearman rank correlation between two sweeps' effects over their common sites."""
    common = [s for s in exact if s in estimate]
    a = np.array([estimate[s].mean for s in common])
    b = np.array([exact[s].mean for s in common])
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])
