"""Interventions: what replaces a site's activation (zero, mean, resampled, noised, or patched from another run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.cache import digest_any
from ..core.errors import InterpError
from ..core.sites import Site
from ..model.subject import Subject
from .hooks import Replacement
from .runner import capture


class Intervention:
    """Base of the interventions. ``prepare`` turns one into a replacement function for one site."""

    #: whether leaving the activation unchanged is a bug (True for ablations) or legitimate (patching)
    must_change: bool = True
    #: whether the prepared replacement is a deterministic function of (activation, rows): then an edit that
    #: leaves the clean activation as it is leaves the whole run as it is, and a sweep need not run it
    pure = False

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        """The batch whose clean activations :meth:`prepare` reads (None: none), so that a sweep can capture
        them for all its sites in one forward pass."""
        return None

    def spec(self) -> dict[str, Any]:
        """A JSON-able description of everything that sets this intervention's numbers (for the run cache)."""
        out: dict[str, Any] = {"kind": type(self).__name__}
        for name, value in vars(self).items():
            out[name] = digest_any(value) if name in ("reference", "source") else value
        return out


@dataclass(frozen=True)
class Zero(Intervention):
    """Replace the activation with zeros."""

    pure = True

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        return lambda act, rows: torch.zeros_like(act)

    def describe(self) -> str:
        return "zero-ablate"


@dataclass(frozen=True, eq=False)
class Mean(Intervention):
    """Replace the activation with its mean over a reference batch (default: the inputs themselves).

    By default (no ``reference``) each example's replacement is the mean over the *other* inputs: the
    leave-one-out mean, so that an example never partly keeps its own activation (with the example included, the
    ablation is shrunk by 1/n and the measured damage grows with n). A separate ``reference`` batch is averaged
    whole.

    Args:
        reference: token ids [n, seq] (or strings) to average over; ``None`` means the experiment's inputs.
        per_position: average over examples separately at each position (the default), or over examples
            and positions together (needed when the reference has another length than the inputs).
        exclude_self: with no ``reference``, leave each example out of its own mean (the default).
    """

    pure = True

    reference: Any = None
    per_position: bool = True
    exclude_self: bool = True

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        ref = tokens if self.reference is None else subject.tokens(self.reference, name="Mean reference")
        if self.per_position and ref.shape[1] != tokens.shape[1]:
            raise InterpError("Mean reference has another length than the inputs",
                              expected=f"{tokens.shape[1]} tokens per reference example (per-position mean)",
                              seen=f"{ref.shape[1]} tokens", fix="use Mean(reference, per_position=False)")
        acts = capture(subject, ref, [site.unrestricted])[site.unrestricted]
        if self.reference is None and self.exclude_self:
            return _leave_one_out_mean(acts, self.per_position)
        mean = acts.mean(0, keepdim=True) if self.per_position else acts.mean((0, 1), keepdim=True)
        return lambda act, rows: mean.to(act.dtype).expand_as(act)

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        return tokens if self.reference is None else subject.tokens(self.reference, name="Mean reference")

    def describe(self) -> str:
        if self.reference is None:
            src = "the other inputs" if self.exclude_self else "inputs"
        else:
            src = "reference batch"
        return f"mean-ablate (mean over {src}{'' if self.per_position else ', all positions'})"


def _leave_one_out_mean(acts: torch.Tensor, per_position: bool) -> Replacement:
    """Each example's mean over the other examples of ``acts`` ``[n, seq, d]``."""
    n = acts.shape[0]
    if n < 2:
        raise InterpError("a mean ablation over the inputs needs at least 2 examples", expected="a batch of >= 2 "
                          "(each example is replaced by the mean of the others)", seen=f"{n} example",
                          fix="pass more examples, or Mean(reference=...) with a separate batch")
    if per_position:
        total = acts.sum(0, keepdim=True)
        return lambda act, rows: ((total - acts[rows]) / (n - 1)).to(act.dtype)
    t = acts.shape[1]
    total = acts.sum((0, 1), keepdim=True)
    own = acts.sum(1, keepdim=True)
    return lambda act, rows: ((total - own[rows]) / ((n - 1) * t)).to(act.dtype).expand_as(act)


@dataclass(frozen=True, eq=False)
class Resample(Intervention):
    """Replace each example's activation with another example's, drawn (seeded) from a source batch.

    Args:
        source: token ids [n, seq] to draw activations from; ``None`` means the inputs themselves, each
            example receiving another example's activation (a seeded derangement).
        seed: seed of the draw.
    """

    pure = True

    source: Any = None
    seed: int = 0

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        src = tokens if self.source is None else subject.tokens(self.source, name="Resample source")
        if src.shape[1] != tokens.shape[1]:
            raise InterpError("Resample source has another length than the inputs",
                              expected=f"{tokens.shape[1]} tokens per source example", seen=f"{src.shape[1]} tokens",
                              fix="resample from sequences of the same length")
        n, m = tokens.shape[0], src.shape[0]
        g = torch.Generator().manual_seed(self.seed)
        if self.source is None:
            if n < 2:
                raise InterpError("Resample from the inputs needs at least 2 examples", expected=">= 2 examples",
                                  seen=f"{n}", fix="pass a larger batch or Resample(source=...)")
            shift = torch.randint(1, n, (n,), generator=g)  # example i takes (i + shift) mod n: never itself
            idx = (torch.arange(n) + shift) % n
        else:
            idx = torch.randint(0, m, (n,), generator=g)
        acts = capture(subject, src, [site.unrestricted])[site.unrestricted]
        picked = acts[idx.to(acts.device)]
        return lambda act, rows: picked[rows].to(act.dtype)

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        return tokens if self.source is None else subject.tokens(self.source, name="Resample source")

    def describe(self) -> str:
        src = "inputs" if self.source is None else "source batch"
        return f"resample-ablate (from {src}, seed {self.seed})"


@dataclass(frozen=True, eq=False)
class Noise(Intervention):
    """Add Gaussian noise of ``scale`` times the activation's standard deviation (over the inputs), seeded."""

    pure = True

    scale: float = 3.0
    seed: int = 0

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        if not self.scale > 0:
            raise InterpError("Noise scale must be positive", expected="scale > 0", seen=str(self.scale),
                              fix="e.g. pi.Noise(scale=3.0)")
        acts = capture(subject, tokens, [site.unrestricted])[site.unrestricted]
        std = float(acts.float().std())
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(acts.shape, generator=g).to(acts.device) * (self.scale * std)
        return lambda act, rows: act + noise[rows].to(act.dtype)

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        return tokens

    def describe(self) -> str:
        return f"add noise ({self.scale} x std, seed {self.seed})"


@dataclass(frozen=True, eq=False)
class Patch(Intervention):
    """Replace the activation with the same site's activation from another run (same shape)."""

    pure = True

    source: Any = None
    label: str = "patch"
    must_change: bool = field(default=False)

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        src = subject.tokens(self.source, name="patch source")
        if src.shape != tokens.shape:
            raise InterpError("patch source and target have different shapes",
                              expected=f"{tuple(tokens.shape)}", seen=f"{tuple(src.shape)}",
                              fix="clean and corrupt must be aligned token for token")
        acts = capture(subject, src, [site.unrestricted])[site.unrestricted]
        return lambda act, rows: acts[rows].to(act.dtype)

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        return subject.tokens(self.source, name="patch source")

    def describe(self) -> str:
        return self.label


def check_how(how: Any) -> Intervention:
    if isinstance(how, type) and issubclass(how, Intervention):
        raise InterpError("how= got an intervention class, not an instance", expected=f"{how.__name__}()",
                          seen=how.__name__, fix=f"write how=pi.{how.__name__}()")
    if not isinstance(how, Intervention):
        raise InterpError("how= is not an intervention", expected="pi.Zero(), pi.Mean(), pi.Resample() or "
                          "pi.Noise()", seen=repr(how)[:80], fix="pass one of the pi.* interventions")
    return how
