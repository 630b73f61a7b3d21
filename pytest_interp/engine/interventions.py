"""Interventions: what replaces a site's activation (zero, mean, resampled, noised, or patched from another run)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.batch import lengths, ragged, real
from ..core.cache import digest_any
from ..core.errors import InterpError
from ..core.sites import Site
from ..model.checks import batch_lengths, position_mask
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

    def for_inputs(self, tokens: torch.Tensor) -> Intervention:
        """This intervention with any setting left to the inputs decided (see :class:`Mean`'s
        ``per_position``); experiments call it once their inputs are known."""
        return self

    def weights(self, n: int) -> tuple[float, ...]:
        """How an intervened score is made from runs on a batch of ``n``: the weight of each run's scores, run
        ``i`` using :meth:`prepare_run` ``(..., i)``. One run of weight 1 for every intervention except the
        bias-corrected :class:`Mean`, which extrapolates from two."""
        return (1.0,)

    def prepare_run(self, subject: Subject, site: Site, tokens: torch.Tensor, i: int) -> Replacement:
        """The replacement function of run ``i`` (see :meth:`weights`)."""
        return self.prepare(subject, site, tokens)

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
            out[name] = digest_any(value) if name in ("reference", "source", "direction") else value
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

    By default (no ``reference``) each example's replacement is the mean over the *other* inputs, and the
    effect is corrected for the size of that mean. With the example included, the ablation is shrunk by 1/n and
    the measured damage grows with n. Left out, the replacement is the mean of n - 1 examples, whose sampling
    noise adds damage of about c / (n - 1) (the metric is curved around the mean): a strong head's effect is
    overstated at small n. The default therefore runs twice, once with the mean of the n - 1 others (k1) and
    once with the mean of a seeded random half of them (k2 = (n - 1) // 2), and reports the Richardson
    extrapolation (k1 E(k1) - k2 E(k2)) / (k1 - k2): the effect of ablating with the population mean, with a
    remaining bias of order 1 / n^2. ``debias=False`` runs once with the leave-one-out mean.

    A separate ``reference`` batch is averaged whole (one run; its bias is c / its size).

    Args:
        reference: token ids [n, seq] (or strings) to average over; ``None`` means the experiment's inputs.
        per_position: average over examples separately at each position, or over examples and their real
            positions together (needed when the reference has another length than the inputs). ``None`` (the
            default): per position when the examples have one length, over all positions when their lengths
            differ (real text: position t of one sentence has nothing to do with position t of another).
            ``True`` with examples of different lengths aligns them at their starts, or at their ends for a
            site at negative positions (``pi.last``).
        exclude_self: with no ``reference``, leave each example out of its own mean (the default).
        debias: with the leave-one-out mean, correct the effect for the mean's size (the default; two runs).
        seed: seed of the random halves the correction uses.
    """

    pure = True

    reference: Any = None
    per_position: bool | None = None
    exclude_self: bool = True
    debias: bool = True
    seed: int = 0

    def for_inputs(self, tokens: torch.Tensor) -> Mean:
        if self.per_position is not None:
            return self
        ref_ragged = self.reference is not None and isinstance(self.reference, torch.Tensor) and \
            ragged(self.reference)
        return dataclasses.replace(self, per_position=not (ragged(tokens) or ref_ragged))

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        return self.prepare_run(subject, site, tokens, 0)

    def weights(self, n: int) -> tuple[float, ...]:
        if not self._extrapolates(n):
            return (1.0,)
        k1, k2 = n - 1, (n - 1) // 2
        return (k1 / (k1 - k2), -k2 / (k1 - k2))

    def _extrapolates(self, n: int) -> bool:
        return self.reference is None and self.exclude_self and self.debias and n >= 3

    def prepare_run(self, subject: Subject, site: Site, tokens: torch.Tensor, i: int) -> Replacement:
        if self.per_position is None:
            return self.for_inputs(tokens).prepare_run(subject, site, tokens, i)
        ref = tokens if self.reference is None else subject.tokens(self.reference, name="Mean reference")
        acts = capture(subject, ref, [site.unrestricted])[site.unrestricted]
        tokens, ref = _layout(subject, site, tokens), _layout(subject, site, ref)  # the activations' positions
        from_end = _from_end(site)
        if self.per_position and not from_end and ref.shape[1] != tokens.shape[1]:
            raise InterpError("Mean reference has another length than the inputs",
                              expected=f"{tokens.shape[1]} tokens per reference example (per-position mean)",
                              seen=f"{ref.shape[1]} tokens", fix="use Mean(reference, per_position=False)")
        own = self.reference is None and self.exclude_self
        if not own:
            if self.reference is not None and self.per_position and (ragged(tokens) or ragged(ref)):
                raise InterpError("a per-position reference mean needs equal-length inputs and reference",
                                  expected="no padding in either batch", seen="examples of different lengths",
                                  fix="use pi.Mean(reference, per_position=False), or the inputs' own mean")
            mean = _Means(acts, real(ref), self.per_position, from_end).whole()
            if self.reference is None and self.per_position and from_end and ragged(tokens):
                raise InterpError("pi.Mean(exclude_self=False) on examples of different lengths is not supported",
                                  expected="equal-length inputs", seen="a ragged batch",
                                  fix="use the default pi.Mean() (it leaves each example out)")
            return lambda act, rows: mean.to(act.dtype).expand_as(act)
        means = _Means(acts, real(tokens), self.per_position, from_end)
        return means.leave_one_out() if i == 0 else means.subset(_halves(acts.shape[0], self.seed))

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        return tokens if self.reference is None else subject.tokens(self.reference, name="Mean reference")

    def describe(self) -> str:
        if self.reference is None:
            src = "the other inputs" if self.exclude_self else "inputs"
        else:
            src = "reference batch"
        extra = ", size-corrected" if self.reference is None and self.exclude_self and self.debias else ""
        where = {True: "", False: ", all positions", None: ", per position if one length"}[self.per_position]
        return f"mean-ablate (mean over {src}{where}{extra})"


def _layout(subject: Subject, site: Site, tokens: torch.Tensor) -> torch.Tensor:
    """The token ids whose positions ``site``'s activations run over: the inputs, or for a decoder-side site of an
    encoder-decoder model the decoder's (the same for every example, never padded)."""
    return subject.decoder_tokens(tokens) if site.decoder_side else tokens


def _halves(n: int, seed: int) -> torch.Tensor:
    """An ``[n, n]`` 0/1 matrix: row i marks a seeded random (n - 1) // 2 of the examples other than i."""
    k = (n - 1) // 2
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(n, n)
    for i in range(n):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, n)])
        w[i, others[torch.randperm(n - 1, generator=g)[:k]]] = 1.0
    return w


def _from_end(site: Site) -> bool:
    """Whether a site's positions count from each example's end (negative ints), so that examples of different
    lengths are aligned at their ends for a per-position mean (at their starts otherwise)."""
    pos = site.positions
    idx = (pos,) if isinstance(pos, int) else pos
    return isinstance(idx, tuple) and bool(idx) and all(isinstance(p, int) and p < 0 for p in idx)


class _Means:
    """Means of a site's activations ``acts [n, seq, ...]`` over real positions (``valid [n, seq]``) of other
    examples: per position (examples aligned at their starts, or ``from_end`` at their ends) or over all
    positions. Padded positions never enter a mean; a padded position's replacement is its own activation."""

    def __init__(self, acts: torch.Tensor, valid: torch.Tensor, per_position: bool, from_end: bool) -> None:
        n, seq = valid.shape
        self.n, self.seq, self.dtype_shape = n, seq, acts.shape[2:]
        self.per_position = per_position
        valid = valid.to(acts.device)
        self.shift: torch.Tensor | None = None
        if per_position and from_end and not bool(valid.all()):
            # example i's position t sits at column t + (seq - L_i) of the end-aligned frame
            self.shift = (seq - valid.sum(1)).to(acts.device)
            acts, valid = self._to_frame(acts), self._to_frame(valid)
        self.valid = valid
        v = valid.to(torch.float32).reshape(n, seq, *([1] * (acts.dim() - 2)))
        x = acts.float() * v
        if per_position:
            self.x, self.v = x, v  # [n, seq, ...], [n, seq, 1...]
        else:
            self.x, self.v = x.sum(1, keepdim=True), v.sum(1, keepdim=True)  # [n, 1, ...]: sums over positions

    def _frame_index(self, inverse: bool) -> torch.Tensor:
        assert self.shift is not None
        t = torch.arange(self.seq, device=self.shift.device)[None]
        return (t + self.shift[:, None]) % self.seq if inverse else (t - self.shift[:, None]) % self.seq

    def _to_frame(self, a: torch.Tensor) -> torch.Tensor:
        idx = self._frame_index(False)
        return a.gather(1, idx.reshape(*idx.shape, *([1] * (a.dim() - 2))).expand_as(a))

    def _from_frame(self, a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        idx = self._frame_index(True)[rows.to(self.shift.device)]  # type: ignore[union-attr]
        return a.gather(1, idx.reshape(*idx.shape, *([1] * (a.dim() - 2))).expand_as(a))

    def whole(self) -> torch.Tensor:
        """The mean over every example (a reference batch's mean), ``[1, seq or 1, ...]``."""
        count = self.v.sum(0, keepdim=True)
        if bool((count == 0).any()) and self.per_position:
            t = int((count.reshape(self.seq) == 0).nonzero()[0])
            raise InterpError("a per-position mean has no real token at some position", expected="every position "
                              "covered by some example", seen=f"position {t} is padding in every example",
                              fix="use pi.Mean(per_position=False) or equal-length inputs")
        return self.x.sum(0, keepdim=True) / count

    def _output(self, mean: torch.Tensor, act: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if not self.per_position:
            return mean.to(act.dtype).expand_as(act)
        if self.shift is not None:
            mean = self._from_frame(mean, rows)
        return mean.to(act.dtype)

    def leave_one_out(self) -> Replacement:
        """Each example's mean over the other examples' real tokens."""
        if self.n < 2:
            raise InterpError("a mean ablation over the inputs needs at least 2 examples", expected="a batch of "
                              ">= 2 (each example is replaced by the mean of the others)", seen=f"{self.n} example",
                              fix="pass more examples, or Mean(reference=...) with a separate batch")
        total, count = self.x.sum(0, keepdim=True), self.v.sum(0, keepdim=True)
        alone = (count - self.v == 0) & (self.v > 0)  # a real token no other example has at that position
        if bool(alone.any()):
            ex, t = (int(x) for x in alone.reshape(self.n, -1).nonzero()[0])
            raise InterpError("a per-position mean has no other example at some real position",
                              expected="each real position shared by at least 2 examples",
                              seen=f"example {ex}, position {t}{' from its end' if self.shift is not None else ''}:"
                                   " only it is that long",
                              fix="use pi.Mean(per_position=False), restrict the site to positions every example "
                                  "has (e.g. .at(pi.last)), or add examples of that length")

        def fn(act: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            r = rows.to(self.x.device)
            c = count - self.v[r]
            return self._output((total - self.x[r]) / c.clamp_min(1), act, rows)
        return fn

    def subset(self, w: torch.Tensor) -> Replacement:
        """Each example's mean over the examples its row of ``w`` marks (at a position none of them has, the
        leave-one-out mean)."""
        loo = self.leave_one_out()
        w = w.to(self.x.device)
        flat_x, flat_v = self.x.reshape(self.n, -1), self.v.reshape(self.n, -1)

        def fn(act: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            r = rows.to(self.x.device)
            s = (w[r] @ flat_x).reshape(len(rows), *self.x.shape[1:])
            c = (w[r] @ flat_v).reshape(len(rows), *self.v.shape[1:])
            mean = s / c.clamp_min(1e-12)
            if bool((c == 0).any()):
                other = loo(act, rows).float()
                if self.shift is not None and self.per_position:
                    other = self._to_frame_rows(other, rows)
                elif not self.per_position:
                    other = other[:, :1]
                mean = torch.where(c == 0, other, mean)
            return self._output(mean, act, rows)
        return fn

    def _to_frame_rows(self, a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert self.shift is not None
        t = torch.arange(self.seq, device=self.shift.device)[None]
        idx = (t - self.shift[rows.to(self.shift.device)][:, None]) % self.seq
        return a.gather(1, idx.reshape(*idx.shape, *([1] * (a.dim() - 2))).expand_as(a))


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
        n, m = tokens.shape[0], src.shape[0]
        if site.decoder_side:  # decoder positions: the same in every example, whatever the encoder's lengths
            return self._aligned(subject, site, src, n)
        if self.source is None and n < 2:
            raise InterpError("Resample from the inputs needs at least 2 examples", expected=">= 2 examples",
                              seen=f"{n}", fix="pass a larger batch or Resample(source=...)")
        if ragged(src) or ragged(tokens):
            return self._ragged(subject, site, tokens, src)
        if src.shape[1] != tokens.shape[1]:
            raise InterpError("Resample source has another length than the inputs",
                              expected=f"{tokens.shape[1]} tokens per source example", seen=f"{src.shape[1]} tokens",
                              fix="resample from sequences of the same length")
        return self._aligned(subject, site, src, n)

    def _aligned(self, subject: Subject, site: Site, src: torch.Tensor, n: int) -> Replacement:
        """Examples whose activations cover the same positions: each takes a whole donor example's activation."""
        m = src.shape[0]
        g = torch.Generator().manual_seed(self.seed)
        if self.source is None:
            shift = torch.randint(1, n, (n,), generator=g)  # example i takes (i + shift) mod n: never itself
            idx = (torch.arange(n) + shift) % n
        else:
            idx = torch.randint(0, m, (n,), generator=g)
        acts = capture(subject, src, [site.unrestricted])[site.unrestricted]
        picked = acts[idx.to(acts.device)]
        return lambda act, rows: picked[rows].to(act.dtype)

    def _ragged(self, subject: Subject, site: Site, tokens: torch.Tensor, src: torch.Tensor) -> Replacement:
        """Examples of different lengths: each example draws (seeded) a donor that has every position the site
        edits in it, aligned at the starts, or at the ends for a site at positions counted from the end
        (``.at(pi.last)``); a donor's padding never replaces a real token."""
        L, Ls = lengths(tokens), lengths(src)
        n, m = len(L), len(Ls)
        from_end = _from_end(site)
        pos = site.positions
        ints = (pos,) if isinstance(pos, int) else pos if isinstance(pos, tuple) else None
        if from_end and ints is not None:
            need = torch.full_like(L, -min(ints))
        elif ints is not None and all(isinstance(p, int) and p >= 0 for p in ints):
            need = torch.full_like(L, max(ints) + 1)
        else:  # every real position of the example (or positions that cannot be told apart by rule)
            need = L
        g = torch.Generator().manual_seed(self.seed)
        donor = torch.empty(n, dtype=torch.long)
        for i in range(n):
            ok = Ls >= need[i]
            if self.source is None:
                ok[i] = False
            choices = ok.nonzero().flatten()
            if choices.numel() == 0:
                where = "other input" if self.source is None else "source example"
                longest = int((Ls[torch.arange(m) != i] if self.source is None else Ls).max())
                raise InterpError(f"Resample has no {where} long enough for example {i}",
                                  expected=f"a donor with at least {int(need[i])} tokens (the positions the site "
                                           f"{site} edits)",
                                  seen=f"example {i} has {int(L[i])} tokens; the longest {where} has {longest}",
                                  fix="add longer examples (or Resample(source=...) with longer ones), or restrict "
                                      "the site to positions every example has, e.g. .at(pi.last)")
            donor[i] = choices[torch.randint(0, choices.numel(), (1,), generator=g)]
        acts = capture(subject, src, [site.unrestricted])[site.unrestricted]
        seq = tokens.shape[1]
        t = torch.arange(seq)[None]
        offset = (Ls[donor] - L)[:, None] if from_end else torch.zeros(n, 1, dtype=torch.long)
        col = t + offset  # example i's position t takes its donor's position t + offset
        valid = (t < L[:, None]) & (col >= 0) & (col < Ls[donor][:, None])
        col = col.clamp(0, src.shape[1] - 1).to(acts.device)
        rows_of = acts[donor.to(acts.device)]
        picked = rows_of.gather(1, col.reshape(n, seq, *([1] * (acts.dim() - 2))).expand(n, seq, *acts.shape[2:]))
        keep = valid.to(acts.device).reshape(n, seq, *([1] * (acts.dim() - 2)))
        return lambda act, rows: torch.where(keep[rows], picked[rows].to(act.dtype), act)

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
        std = float(acts[real(_layout(subject, site, tokens)).to(acts.device)].float().std())  # real tokens only
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(acts.shape, generator=g).to(acts.device) * (self.scale * std)
        return lambda act, rows: act + noise[rows].to(act.dtype)

    def reads(self, subject: Subject, tokens: torch.Tensor) -> torch.Tensor | None:
        return tokens

    def describe(self) -> str:
        return f"add noise ({self.scale} x std, seed {self.seed})"


@dataclass(frozen=True, eq=False)
class Steer(Intervention):
    """Add ``alpha`` times a direction: on SAE features (``sae.feature(i)``), ``alpha`` is added to each
    feature's activation, i.e. ``alpha`` times its decoder direction to the site; on other sites, give the
    ``direction`` (a vector as wide as the site's activation)."""

    pure = True

    alpha: float = 1.0
    direction: Any = None

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise InterpError("Steer needs a finite number alpha", expected="e.g. pi.Steer(2.0)",
                              seen=repr(self.alpha), fix="pass alpha as a float")
        if site.kind == "feature":
            if self.direction is not None:
                raise InterpError("Steer on SAE features takes no direction", expected="pi.Steer(alpha): the "
                                  "features' own decoder directions", seen="direction=...",
                                  fix="drop direction=, or steer the SAE's host site with it")
            return lambda act, rows: act + self.alpha
        v = as_direction(subject, site, self.direction, "Steer")
        return lambda act, rows: act + (self.alpha * v).to(act.device, act.dtype)

    def describe(self) -> str:
        return f"steer (+{self.alpha:g} x {'decoder direction' if self.direction is None else 'direction'})"


def as_direction(subject: Subject, site: Site, direction: Any, who: str) -> torch.Tensor:
    """``direction`` as a float32 vector as wide as ``site``'s activation, or an InterpError."""
    width = subject.adapter.head_dim if site.kind in ("head", "cross_head") else subject.adapter.hidden_size
    if direction is None:
        raise InterpError(f"{who} on {site} needs a direction", expected=f"a vector of {width} numbers",
                          seen="direction=None", fix=f"pass direction=... (e.g. a probe's weight vector)")
    v = torch.as_tensor(direction, dtype=torch.float32).flatten()
    if v.numel() != width:
        raise InterpError(f"the {who} direction has the wrong size for {site}", expected=f"{width} numbers",
                          seen=f"{v.numel()}", fix="use a direction read at this site")
    if not bool(torch.isfinite(v).all()) or float(v.norm()) == 0.0:
        raise InterpError(f"the {who} direction is zero or not finite", expected="a finite, non-zero vector",
                          seen=f"norm {float(v.norm())}", fix="check how the direction was computed")
    return v


@dataclass(frozen=True, eq=False)
class Direction(Intervention):
    """Remove one direction from a site's activation: ``mode="project"`` projects it out (the component along
    the direction set to zero), ``mode="mean"`` sets that component to its mean over the inputs at the
    positions the site covers (real tokens only). Everything orthogonal to the direction is kept."""

    pure = True

    direction: Any = None
    mode: str = "project"

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        if site.kind == "feature":
            raise InterpError("Direction acts on a site's activation, not on SAE features",
                              expected="a head, attn, mlp or resid site", seen=str(site),
                              fix="use the SAE's host site, or ablate the features themselves")
        if self.mode not in ("project", "mean"):
            raise InterpError(f"unknown Direction mode {self.mode!r}", expected="'project' or 'mean'",
                              seen=repr(self.mode), fix="pi.Direction(v) or pi.Direction(v, mode='mean')")
        v = as_direction(subject, site, self.direction, "Direction")
        u = v / v.norm()
        level = 0.0
        if self.mode == "mean":
            acts = capture(subject, tokens, [site.unrestricted])[site.unrestricted]
            tokens = _layout(subject, site, tokens)
            n, seq = tokens.shape
            covered = position_mask(site, torch.arange(n), n, seq, tokens.device, batch_lengths(tokens))
            keep = real(tokens) if covered is None else real(tokens) & covered.expand(n, seq)
            level = float((acts.float() @ u.to(acts.device))[keep.to(acts.device)].mean())

        def fn(act: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            w = u.to(act.device)
            along = act.float() @ w
            return (act.float() - (along - level)[..., None] * w).to(act.dtype)
        return fn

    def describe(self) -> str:
        return "project out a direction" if self.mode == "project" else "mean-ablate a direction"


@dataclass(frozen=True, eq=False)
class Reconstruct(Intervention):
    """Replace a site's activation by an SAE's reconstruction of it (for the SAE's fidelity)."""

    pure = True

    sae: Any = None

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        sae = self.sae
        return lambda act, rows: sae.decode(sae.encode(act)).to(act.dtype)

    def spec(self) -> dict[str, Any]:
        return {"kind": "Reconstruct", "sae": self.sae.fingerprint}

    def describe(self) -> str:
        return f"SAE reconstruction ({self.sae.hook_name})"


@dataclass(frozen=True, eq=False)
class Patch(Intervention):
    """Replace the activation with the same site's activation from another run (same shape)."""

    pure = True

    source: Any = None
    label: str = "patch"
    must_change: bool = field(default=False)

    def prepare(self, subject: Subject, site: Site, tokens: torch.Tensor) -> Replacement:
        src = subject.tokens(self.source, name="patch source")
        if src.shape == tokens.shape and not torch.equal(real(src), real(tokens)):
            raise InterpError("patch source and target are padded differently",
                              expected="examples of the same length in both, token for token",
                              seen="a different number of real tokens in some example",
                              fix="clean and corrupt prompts must have the same token length per example")
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
