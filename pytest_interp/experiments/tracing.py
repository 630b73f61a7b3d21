"""Causal tracing (Meng et al., 2022): where along the forward pass is a fact about the subject carried?

The subject tokens' input embeddings are corrupted with Gaussian noise; then the clean state of one site at one
position (or a window of adjacent layers) is restored in the corrupted run, and the answer's probability measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core import records as _records
from ..core.cache import current, site_key, tensor_digest
from ..core.batch import require_equal_lengths
from ..core.errors import InterpError
from ..core.settings import settings
from ..core.sites import Site, as_sites, attn, mlp, resid
from ..core.stats import Effect, bootstrap_ci, sign_flip_p
from ..engine.hooks import Edit
from ..engine.runner import capture, check_edits, chunks, embedding, intervened_logits
from ..model.checks import as_subject, check_site, one_stack
from ..model.subject import Subject
from .common import stat_args

KINDS = {"resid": resid, "mlp": mlp, "attn": attn}


def subject_mask(subject: Subject, tokens: torch.Tensor, subject_tokens: Any) -> torch.Tensor:
    """Bool ``[batch, seq]`` of the subject's positions, from a mask, positions, a slice, or the subject's text
    (found as a token subsequence of each prompt)."""
    n, t = tokens.shape
    st = subject_tokens
    if isinstance(st, str) or (isinstance(st, (list, tuple)) and st and all(isinstance(x, str) for x in st)):
        texts = [st] * n if isinstance(st, str) else list(st)
        if len(texts) != n:
            raise InterpError("one subject text per prompt is needed", expected=f"{n} strings", seen=str(len(texts)),
                              fix="pass one subject for all prompts or one per prompt")
        mask = torch.zeros(n, t, dtype=torch.bool)
        for i, text in enumerate(texts):
            ids = subject._tokenize([text], "subject tokens")[0]
            row = tokens[i].tolist()
            hits = [j for j in range(t - len(ids) + 1) if ids and row[j:j + len(ids)] == ids]
            if not hits:
                raise InterpError(f"the subject {text!r} is not in prompt {i}",
                                  expected="the subject's tokens as a contiguous run of the prompt's tokens",
                                  seen=f"subject ids {ids}, prompt ids {row}",
                                  fix="check the spelling and spacing (tokenisers split ' x' and 'x' differently)")
            mask[i, hits[-1]:hits[-1] + len(ids)] = True
        return mask.to(tokens.device)
    if isinstance(st, slice):
        mask = torch.zeros(n, t, dtype=torch.bool)
        mask[:, st] = True
    elif isinstance(st, (list, tuple)) and st and all(isinstance(x, (list, tuple)) for x in st) and \
            not all(isinstance(x, bool) for row in st for x in row):
        if len(st) != n:
            raise InterpError("one list of subject positions per prompt is needed", expected=f"{n} lists",
                              seen=str(len(st)), fix="pass the positions for every prompt")
        mask = torch.zeros(n, t, dtype=torch.bool)
        for i, row in enumerate(st):
            mask[i, _check_positions(row, t)] = True
    elif isinstance(st, (list, tuple)) and st and all(isinstance(x, int) and not isinstance(x, bool) for x in st):
        mask = torch.zeros(n, t, dtype=torch.bool)
        mask[:, _check_positions(st, t)] = True
    else:
        try:
            got: torch.Tensor | None = torch.as_tensor(st).to("cpu")
        except (TypeError, ValueError, RuntimeError):
            got = None
        if got is None or got.dtype != torch.bool:
            raise InterpError("subject_tokens has an unsupported form", expected="the subject's text, positions "
                              "(ints, one list per prompt, a slice) or a bool mask [batch, seq]",
                              seen=repr(subject_tokens)[:80], fix="e.g. subject_tokens='Eiffel Tower' or [1, 2, 3]")
        mask = got
        if mask.dim() == 1:
            mask = mask[None].expand(n, -1)
        if tuple(mask.shape) != (n, t):
            raise InterpError("the subject mask has the wrong shape", expected=f"[batch, seq] = {[n, t]}",
                              seen=str(list(mask.shape)), fix="build the mask for the same prompts")
    empty = ~mask.any(1)
    if bool(empty.any()):
        raise InterpError(f"no subject token in {int(empty.sum())} prompt(s)", expected="at least one subject "
                          "position per prompt", seen=f"first empty prompt: {int(empty.nonzero()[0])}",
                          fix="mark the subject's tokens in every prompt")
    return mask.to(tokens.device)


def _check_positions(pos: Any, t: int, what: str = "subject position") -> list[int]:
    bad = [p for p in pos if not -t <= int(p) < t]
    if bad:
        raise InterpError(f"{what} {bad[0]} is outside the prompt", expected=f"positions in -{t}..{t - 1}",
                          seen=f"prompts of {t} tokens", fix="give positions inside the prompt")
    return [int(p) % t for p in pos]


class Corruption:
    """Prompts with noised subject embeddings (``samples`` seeded draws per prompt), ready to restore sites in."""

    def __init__(self, subject: Subject, prompts: Any, subject_tokens: Any, answer: Any, *, noise: float = 3.0,
                 samples: int = 5, seed: int = 0) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise > 0 or not np.isfinite(noise):
            raise InterpError("the noise scale must be positive", expected="noise > 0 (a multiple of the embedding "
                              "std; ROME uses 3)", seen=repr(noise), fix="e.g. noise=3.0")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InterpError("samples must be a positive int", expected=">= 1 noise draws per prompt",
                              seen=repr(samples), fix="e.g. samples=5")
        self.subject = subject
        self.tokens = tokens = subject.tokens(prompts, name="prompts")
        require_equal_lengths(tokens, "causal tracing")
        self.mask = subject_mask(subject, tokens, subject_tokens)
        ans = subject.token_ids(answer)
        n, t = tokens.shape
        if ans.numel() == 1:
            ans = ans.expand(n)
        if ans.numel() != n:
            raise InterpError("one answer per prompt is needed", expected=f"{n} answers", seen=f"{ans.numel()}",
                              fix="pass one answer for all prompts or one per prompt")
        self.answer = ans
        emb = embedding(subject)
        self.embedding_std = float(emb.weight.detach().float().std())
        self.scale, self.samples, self.seed = float(noise), samples, seed
        g = torch.Generator().manual_seed(seed)
        d = emb.weight.shape[1]
        z = torch.randn(samples, n, t, d, generator=g) * (self.scale * self.embedding_std)
        self.noise = (z * self.mask.to("cpu")[None, :, :, None]).reshape(samples * n, t, d).to(subject.device)
        self.clean = self._score(corrupt=False)
        self.corrupted = self.score(())

    def _score(self, *, corrupt: bool, sites: tuple[Site, ...] = ()) -> np.ndarray:
        """Per prompt, the answer probability (mean over noise draws) with ``sites`` restored (run-cached)."""
        subject = self.subject

        def parts() -> dict[str, Any]:
            return {"model": subject.fingerprint, "kind": "causal trace", "tokens": tensor_digest(self.tokens),
                    "subject": tensor_digest(self.mask), "answer": tensor_digest(self.answer),
                    "noise": [self.scale, self.samples, self.seed] if corrupt else None,
                    "sites": [site_key(s) for s in sites], "dtype": subject.dtype_key, "device": str(subject.device),
                    "attn": subject.attn_implementation, "batch_size": settings().batch_size}

        got = current().scores(parts, lambda: torch.as_tensor(self._run(corrupt=corrupt, sites=sites)),
                               rows=self.tokens.shape[0])
        return got.double().numpy()

    def _run(self, *, corrupt: bool, sites: tuple[Site, ...] = ()) -> np.ndarray:
        subject, tokens = self.subject, self.tokens
        n = tokens.shape[0]
        reps = self.samples if corrupt else 1
        clean_acts = capture(subject, tokens, [s.unrestricted for s in sites]) if sites else {}
        probs = []
        all_rows = torch.arange(n * reps)

        def restored(s: Site) -> Any:
            return lambda act, rows: clean_acts[s.unrestricted][rows].to(act.dtype)

        edits = [Edit(s, restored(s), False, "restore") for s in sites]
        for chunk in chunks(n * reps):
            rows = all_rows[chunk]
            base = rows % n
            noise = self.noise[rows.to(self.noise.device)] if corrupt else None
            logits = intervened_logits(subject, tokens[base.to(tokens.device)], base, edits, n, embed_delta=noise,
                                       what="tracing run")
            p = torch.softmax(logits[:, -1].float(), -1).gather(-1, self.answer[base.to(tokens.device)][:, None])
            probs.append(p[:, 0].cpu())
        check_edits(edits)
        return torch.cat(probs).reshape(reps, n).mean(0).double().numpy()

    def score(self, sites: tuple[Site, ...]) -> np.ndarray:
        for s in sites:
            if s.kind not in ("resid", "mlp", "attn", "head"):
                raise InterpError(f"{s} cannot be restored", expected="a resid, mlp, attn or head site",
                                  seen=f"a {s.kind} site", fix="restore the MoE block with pi.mlp(layer)")
            check_site(self.subject, s, self.tokens)
        return self._score(corrupt=True, sites=sites)

    def effect(self, sites: tuple[Site, ...], restored: np.ndarray, *, alpha: float, seed: int,
               n_boot: int, n_perm: int) -> Effect:
        """The fraction of the clean-corrupted gap that restoring ``sites`` recovers, with a bootstrap CI."""
        k, c, p = self.clean, self.corrupted, restored
        gap = float(k.mean() - c.mean())
        if not gap > 1e-9:
            raise InterpError("the corruption does not lower the answer's probability",
                              expected="clean probability > corrupted probability",
                              seen=f"clean {k.mean():.4g}, corrupted {c.mean():.4g}",
                              fix="check the subject tokens and the answer, or raise the noise scale")
        ci = bootstrap_ci((p, c, k), lambda P, C, K: (P - C) / (K - C), alpha=alpha, n_boot=n_boot, seed=seed)
        return Effect(mean=float((p.mean() - c.mean()) / gap), ci=ci, n=int(p.size),
                      p_value=sign_flip_p(p - c, n_perm=n_perm, seed=seed), values=(p - c) / gap, sites=sites,
                      method="causal tracing", intervention=self.describe(), metric="answer probability",
                      higher_is_better=True, seed=seed, alpha=alpha, n_boot=n_boot, model=self.subject.identity(),
                      details={"clean_mean": float(k.mean()), "corrupt_mean": float(c.mean()),
                               "restored_mean": float(p.mean()), "embedding_std": self.embedding_std,
                               "noise_std": self.scale * self.embedding_std, "noise_samples": self.samples})

    def describe(self) -> str:
        return f"restore clean state (subject noised {self.scale:g}x emb. std, {self.samples} draws, seed {self.seed})"


class Trace:
    """A causal-tracing result: per kind (``resid``, ``mlp``, ``attn``), per layer and position, the answer
    probability with that site (and, for mlp/attn, its window of adjacent layers) restored.

    Attributes:
        clean, corrupted: mean answer probability without and with the noise.
        restored: ``{kind: [layers, positions, prompts]}`` per-prompt restored probabilities.
        embedding_std, noise_std: the measured embedding std and the noise std used.
    """

    def __init__(self, corruption: Corruption, restored: dict[str, np.ndarray], layers: list[int],
                 positions: list[int], window: int, labels: list[str]) -> None:
        self.corruption = corruption
        self.restored = restored
        self.layers, self.positions, self.window, self.labels = layers, positions, window, labels
        self.clean = float(corruption.clean.mean())
        self.corrupted = float(corruption.corrupted.mean())
        self.embedding_std = corruption.embedding_std
        self.noise_std = corruption.scale * corruption.embedding_std

    def grid(self, kind: str = "resid", *, normalised: bool = True) -> tuple[np.ndarray, list[str], list[str]]:
        """``(values [layers, positions], row labels, column labels)``: the mean restored probability minus the
        corrupted one (the indirect effect), divided by the clean-corrupted gap when ``normalised``."""
        r = self._kind(kind).mean(-1)
        ie = r - self.corrupted
        return (ie / (self.clean - self.corrupted) if normalised else ie,
                [f"{kind} {lay}" for lay in self.layers], list(self.labels))

    def ci(self, kind: str = "resid", *, normalised: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell seeded bootstrap CI (prompts resampled) of :meth:`grid`."""
        s = settings()
        r = self._kind(kind)
        c, k = self.corruption.corrupted, self.corruption.clean
        rng = np.random.default_rng(s.seed)
        idx = rng.integers(0, c.size, size=(min(s.n_boot, 2000), c.size))
        rb, cb, kb = r[..., idx].mean(-1), c[idx].mean(-1), k[idx].mean(-1)
        stat = (rb - cb) / (kb - cb) if normalised else rb - cb
        a = s.alpha / 2
        return np.quantile(stat, a, axis=-1), np.quantile(stat, 1 - a, axis=-1)

    def effect(self, kind: str, layer: int, position: int) -> Effect:
        """The restored fraction at one cell, as an Effect."""
        s = settings()
        li, pi_ = self.layers.index(layer), self.positions.index(position)
        sites = _window_sites(kind, layer, position, self.window, self.corruption.subject.n_layers)
        return self.corruption.effect(sites, self._kind(kind)[li, pi_], alpha=s.alpha, seed=s.seed,
                                      n_boot=s.n_boot, n_perm=s.n_perm)

    def _kind(self, kind: str) -> np.ndarray:
        if kind not in self.restored:
            raise InterpError(f"this trace has no {kind!r} grid", expected=f"one of {sorted(self.restored)}",
                              seen=repr(kind), fix="trace that kind with kinds=(...)")
        return self.restored[kind]

    def __str__(self) -> str:
        lines = [f"causal trace: clean p={self.clean:.4f}, corrupted p={self.corrupted:.4f}, noise std "
                 f"{self.noise_std:.4g} (= {self.corruption.scale:g} x embedding std {self.embedding_std:.4g}), "
                 f"window {self.window}"]
        for kind in self.restored:
            values, rows, cols = self.grid(kind)
            lines.append(f"{kind:<9}" + "".join(f"{c[:8]:>9}" for c in cols))
            lines += [f"{row:<9}" + "".join(f"{v:9.3f}" for v in vals) for row, vals in zip(rows, values)]
        return "\n".join(lines)


def _window_sites(kind: str, layer: int, position: int, window: int, n_layers: int) -> tuple[Site, ...]:
    make = KINDS[kind]
    if kind == "resid" or window <= 1:
        return (make(layer).at(position),)
    lo = max(0, layer - window // 2)  # as in ROME: [l - w//2, l - w//2 + w), shifted to fit inside the model
    hi = min(n_layers, lo + window)
    lo = max(0, hi - window)
    return tuple(make(lay).at(position) for lay in range(lo, hi))


def trace(subject: Subject, prompts: Any, subject_tokens: Any, answer: Any, *, kinds: tuple[str, ...] = ("resid", "mlp",
          "attn"), window: int = 3, noise: float = 3.0, samples: int = 5, layers: Any = None,
          positions: Any = None, seed: int | None = None, record: bool = True) -> Trace:
    """Causal tracing: noise the subject's embeddings (``noise`` x the embedding matrix's std, ``samples`` seeded
    draws per prompt), then restore each (layer, position) of each kind in ``kinds`` and measure the answer's
    probability. For mlp/attn a row restores ``window`` adjacent layers around its layer,
    ``[l - window // 2, l - window // 2 + window)`` shifted to fit the model. ``resid l`` is the stream entering
    layer l (``resid 0``: the embeddings). Inside a pytest session each grid becomes a heatmap in the HTML
    report."""
    subject = as_subject(subject)
    one_stack(subject, "causal tracing")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InterpError(f"cannot trace {bad[0] if bad else 'nothing'!r}", expected="kinds from 'resid', 'mlp', "
                          "'attn'", seen=repr(kinds), fix="e.g. kinds=('resid', 'mlp')")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InterpError("window must be a positive int", expected=">= 1 adjacent layers", seen=repr(window),
                          fix="ROME uses 10 on 48-layer models; use 1-3 on small ones")
    seed = settings().seed if seed is None else seed
    corr = Corruption(subject, prompts, subject_tokens, answer, noise=noise, samples=samples, seed=seed)
    t = corr.tokens.shape[1]
    layers_l = list(range(subject.n_layers)) if layers is None else [int(x) for x in layers]
    positions_l = list(range(t)) if positions is None else _check_positions(list(positions), t, "traced position")
    labels = _labels(subject, corr, positions_l)
    restored = {}
    for kind in kinds:
        grid = np.zeros((len(layers_l), len(positions_l), corr.tokens.shape[0]))
        for li, layer in enumerate(layers_l):
            for pi_, pos in enumerate(positions_l):
                grid[li, pi_] = corr.score(_window_sites(kind, layer, pos, window, subject.n_layers))
        restored[kind] = grid
    result = Trace(corr, restored, layers_l, positions_l, window, labels)
    if record:
        for kind in kinds:
            values, rows, cols = result.grid(kind)
            _records.add_grid({"title": f"causal trace: {kind}{'' if kind == 'resid' else f' (window {window})'}, "
                                        f"restored fraction of the answer probability gap", "rows": rows,
                               "cols": cols, "values": values.tolist()})
    return result


def _labels(subject: Subject, corr: Corruption, positions: list[int]) -> list[str]:
    row = corr.tokens[0].tolist()
    subj = corr.mask[0].tolist()
    tok = subject.tokenizer
    out = []
    for p in positions:
        word = tok.convert_ids_to_tokens(row[p]) if tok is not None else str(row[p])
        out.append(f"{p}:{word}{'*' if subj[p] else ''}")
    return out


def restore(subject: Subject, sites: Any, *, prompts: Any, subject_tokens: Any, answer: Any, noise: float = 3.0,
            samples: int = 5, alpha: float | None = None, seed: int | None = None) -> Effect:
    """The fraction of the clean-corrupted gap in the answer's probability recovered by restoring ``sites``
    (together) in the subject-noised run."""
    subject = as_subject(subject)
    one_stack(subject, "causal tracing")
    sites_t = as_sites(sites)
    st = stat_args(alpha, seed)
    corr = Corruption(subject, prompts, subject_tokens, answer, noise=noise, samples=samples, seed=st["seed"])
    return corr.effect(sites_t, corr.score(sites_t), alpha=st["alpha"], seed=st["seed"], n_boot=st["n_boot"],
                       n_perm=st["n_perm"])
