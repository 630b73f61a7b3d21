"""Causal scrubbing (Chan et al. 2022), in its single-level form: a hypothesis says what each of some sites
computes, as a function of the input; each site's activation at each token is replaced by its clean
activation at another token the hypothesis cannot tell apart (same value of the function: resampled within
equivalence classes, seeded), and the behaviour the hypothesis keeps is compared with full resampling.

Loss recovered = ``(M_random - M_scrubbed) / (M_random - M_clean)`` for a lower-is-better metric (the sign
follows the metric): 1 when the hypothesis keeps everything the sites do for the metric, 0 when it keeps no
more than replacing each site's activation by a random token's.

Limitations, stated in every result: each site's replacement is its *clean* activation at the donor token (the
hypothesis's sites are scrubbed side by side, not recursively, so a site is not recomputed on its donor with
its own inputs scrubbed); the replacement is drawn from the batch, so a token whose class has no other member
keeps its own activation (``Scrubbing.unscrubbed`` reports that share).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from ..core.batch import real
from ..core.cache import tensor_digest
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.sites import Site
from ..core.stats import Effect, bootstrap_ci, check_finite, sign_flip_p
from ..engine.interventions import Intervention
from ..engine.runner import capture
from ..model.checks import as_subject, check_site, one_stack
from ..model.subject import Subject
from .ablation import ablate
from .common import as_metric, stat_args

Hypothesis = dict[Site, Callable[[torch.Tensor], Any]]


def _labels(fn: Callable[[torch.Tensor], Any], site: Site, tokens: torch.Tensor) -> torch.Tensor:
    got = fn(tokens)
    lab = torch.as_tensor(got)
    if lab.shape != tokens.shape:
        raise InterpError(f"the hypothesis for {site} gives labels of the wrong shape",
                          expected=f"one label per token, [batch, seq] = {list(tokens.shape)}",
                          seen=str(list(lab.shape)), fix="return a tensor of the tokens' shape from the function")
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise InterpError(f"the hypothesis for {site} gives labels that are not integers",
                          expected="int labels (tokens with the same label are interchangeable)",
                          seen=str(lab.dtype), fix="return e.g. token ids or class indices as a long tensor")
    return lab.to(torch.long).cpu()


def donors(labels: torch.Tensor | None, tokens: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """For every real token, a donor token with the same label drawn at random (seeded; the token itself may be
    drawn, as from the conditional distribution), or any real token (``labels=None``): example and position
    indices ``[batch, seq]`` each, and the share of real tokens that are alone in their class."""
    ok = real(tokens).cpu()
    b, seq = tokens.shape
    cells = ok.flatten().nonzero()[:, 0]
    lab = torch.zeros(b * seq, dtype=torch.long) if labels is None else labels.flatten()
    g = torch.Generator().manual_seed(seed)
    pick = torch.arange(b * seq)
    keys, inverse, counts = torch.unique(lab[cells], return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    start = torch.cumsum(counts, 0) - counts
    r = torch.rand(len(cells), generator=g)
    k = (r * counts[inverse]).long().clamp_max(counts[inverse] - 1)
    pick[cells] = cells[order[start[inverse] + k]]
    alone = float((counts[inverse] == 1).float().mean()) if len(cells) else 0.0
    pick = pick.view(b, seq)
    return pick // seq, pick % seq, alone


@dataclass(frozen=True, eq=False)
class Scrub(Intervention):
    """Replace each site's activation at every token by its clean activation at a donor token with the same
    label under ``hypothesis`` (``{site: fn(tokens) -> labels [batch, seq]}``), or any token
    (``hypothesis=None``: full resampling). Seeded per site."""

    pure = True
    must_change: bool = field(default=False)
    hypothesis: Any = None
    seed: int = 0
    labels: Any = None  # {site: labels} once the inputs are known

    def for_inputs(self, tokens: torch.Tensor) -> Scrub:
        if self.hypothesis is None:
            return self
        return replace(self, labels={s.unrestricted: _labels(fn, s, tokens) for s, fn in self.hypothesis.items()})

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Any:
        lab = None if self.labels is None else self.labels[site.unrestricted]
        ex, pos, _ = donors(lab, tokens, self.seed + zlib.crc32(str(site.unrestricted).encode()))
        acts = capture(subject, tokens, [site.unrestricted])[site.unrestricted]
        table = acts[ex.to(acts.device), pos.to(acts.device)]
        return lambda act, rows: table[rows.to(table.device)].to(act.dtype)

    def spec(self) -> dict[str, Any]:
        labels = None if self.labels is None else {str(s): tensor_digest(v) for s, v in self.labels.items()}
        return {"kind": "Scrub", "labels": labels, "seed": self.seed}

    def describe(self) -> str:
        return "causal scrubbing (resampled within the hypothesis's classes)" if self.hypothesis is not None else \
            "full resampling (any token)"


@dataclass
class Scrubbing:
    """The result of :func:`scrub`.

    Attributes:
        recovered: the loss recovered (see the module), with a bootstrap CI over examples.
        scrubbed, random: the damage of the scrubbed and of the fully resampled run (metric units).
        unscrubbed: per site, the share of tokens alone in their class (they keep their own activation).
        classes: per site, the number of classes among the batch's tokens.
    """

    recovered: Effect
    scrubbed: Effect
    random: Effect
    unscrubbed: dict[str, float]
    classes: dict[str, int]

    def __str__(self) -> str:
        r = self.recovered
        alone = ", ".join(f"{s}: {v:.0%}" for s, v in self.unscrubbed.items())
        return (f"loss recovered {r.mean:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}] (scrubbed damage "
                f"{self.scrubbed.mean:.4g}, fully resampled {self.random.mean:.4g}; tokens alone in their class: "
                f"{alone})")


def scrub(subject: Subject, hypothesis: Hypothesis, *, inputs: Any, metric: Metric, max_alone: float = 0.02,
          alpha: float | None = None, seed: int | None = None) -> Scrubbing:
    """Causal scrubbing of ``hypothesis`` (``{site: fn(tokens) -> int labels [batch, seq]}``: tokens with the
    same label are what the hypothesis says the site cannot tell apart; put the position in the label to keep
    it). See the module for the loss recovered and the limitations.

    A token alone in its class keeps its own activation, which inflates the loss recovered: on the induction
    fixture one hypothesis recovered 0.84 on 64 sequences (25% of tokens alone in their class), 0.52 on 256
    (7%) and 0.37 on 512 (1.4%). More than ``max_alone`` of a site's tokens alone in their class is therefore
    an InterpError (more inputs, or coarser labels, fix it)."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "causal scrubbing")
    st = stat_args(alpha, seed)
    tokens = subject.tokens(inputs)
    if not isinstance(hypothesis, dict) or not hypothesis:
        raise InterpError("a hypothesis maps sites to functions of the input", expected="{pi.head(1, 0): fn} with "
                          "fn(tokens) -> labels [batch, seq]", seen=repr(hypothesis)[:80],
                          fix="name at least one site and what it is claimed to compute")
    for s, fn in hypothesis.items():
        if not isinstance(s, Site) or not callable(fn):
            raise InterpError("a hypothesis maps sites to functions of the input", expected="{Site: callable}",
                              seen=f"{s!r}: {fn!r}"[:80], fix="e.g. {pi.head(1, 0): pi.induction_target}")
        if s.positions is not None:
            raise InterpError(f"{s} is restricted to positions in a hypothesis", expected="a site over all tokens",
                              seen=str(s), fix="put what the positions mean into the labels instead")
        check_site(subject, s, tokens)
    how = Scrub(hypothesis=hypothesis, seed=st["seed"]).for_inputs(tokens)
    unscrubbed, classes = {}, {}
    ok = real(tokens).cpu()
    for s, lab in how.labels.items():
        valid = lab[ok]
        n_cls = int(torch.unique(valid).numel())
        _, _, alone = donors(lab, tokens, 0)
        if alone >= 1.0:
            raise InterpError(f"the hypothesis for {s} puts every token in a class of its own",
                              expected="classes with several tokens (something to resample)",
                              seen=f"{n_cls} classes for {int(ok.sum())} tokens",
                              fix="use coarser labels, or more inputs")
        if alone > max_alone:
            raise InterpError(f"too few inputs to scrub {s} within the hypothesis's classes",
                              expected=f"at most {max_alone:.0%} of tokens alone in their class (max_alone)",
                              seen=f"{alone:.0%} alone: they keep their own activation, which inflates the loss "
                                   f"recovered", fix="pass more inputs, or coarser labels")
        if n_cls == 1:
            raise InterpError(f"the hypothesis for {s} puts every token in one class",
                              expected="labels that tell tokens apart",
                              seen="one class: scrubbing would be full resampling, the claim says nothing",
                              fix="label what the site is claimed to depend on")
        unscrubbed[str(s)], classes[str(s)] = alone, n_cls
    sites = list(hypothesis)
    d_scrub = ablate(subject, sites, inputs=tokens, metric=metric, how=how, alpha=alpha, seed=seed)
    d_rand = ablate(subject, sites, inputs=tokens, metric=metric, how=Scrub(seed=st["seed"]), alpha=alpha, seed=seed)
    a, z = check_finite(d_scrub.values, "damage"), check_finite(d_rand.values, "damage")
    if abs(float(z.mean())) < 1e-12:
        raise InterpError("fully resampling the hypothesis's sites does not change the metric",
                          expected="sites whose resampling changes the metric (the denominator of loss recovered)",
                          seen=f"mean damage {float(z.mean()):.3g}", fix="name sites that matter, or another metric")
    ci = bootstrap_ci((a, z), lambda sa, sz: 1.0 - sa / sz, alpha=st["alpha"], n_boot=st["n_boot"], seed=st["seed"])
    recovered = Effect(mean=float(1.0 - a.mean() / z.mean()), ci=ci, n=int(a.size),
                       p_value=sign_flip_p(z - a, n_perm=st["n_perm"], seed=st["seed"]),
                       values=np.asarray(1.0 - a / z.mean()), sites=tuple(sites), method="causal scrubbing",
                       intervention=how.describe(), metric=d_scrub.metric, higher_is_better=True, seed=st["seed"],
                       alpha=st["alpha"], n_boot=st["n_boot"],
                       details={"damage_scrubbed": float(a.mean()), "damage_random": float(z.mean()),
                                **{f"alone {k}": v for k, v in unscrubbed.items()}},
                       model=subject.identity(), ci_method="bootstrap")
    return Scrubbing(recovered, d_scrub, d_rand, unscrubbed, classes)


def induction_target(tokens: Any) -> torch.Tensor:
    """Per token, the token that followed the most recent earlier occurrence of the same token (-1 when it has
    none): what an induction head is claimed to read and copy."""
    t = torch.as_tensor(tokens)
    ok = real(t)
    b, seq = t.shape
    out = torch.full((b, seq), -1, dtype=torch.long)
    for i in range(b):
        last: dict[int, int] = {}
        row = t[i].tolist()
        for p in range(seq):
            if not bool(ok[i, p]):
                continue
            j = last.get(row[p])
            if j is not None and j + 1 < seq:
                out[i, p] = row[j + 1]
            last[row[p]] = p
    return out
