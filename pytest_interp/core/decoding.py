"""Decoding settings (:class:`Greedy`, :class:`Sample`) and metrics scored on generated text.

A generation metric makes every run of an experiment generate: the clean run and each intervened run decode
``max_new_tokens`` tokens from every prompt, with the experiment's edits installed at every step (an ablated head
stays ablated while the model writes). Each step recomputes the whole sequence (no key/value cache), so an edit
sees every position at every step, exactly as in a single forward pass over the text generated so far.

Positions: a site restricted to positions (``pi.head(1, 0).at(pi.last)``) means those positions of the PROMPT
(negative positions count from each prompt's end); generated tokens are not edited there. A site without positions
is edited everywhere, generated tokens included, which needs an intervention that does not depend on the position
(``Zero``, ``Mean(per_position=False)``, a direction or feature edit; a generation metric makes the default mean
ablation average over all positions).

Sampling is reproducible per example: example ``i``'s ``n`` samples draw their uniform numbers from a
``torch.Generator`` seeded from ``(seed, i)`` (:func:`example_seed`), one ``torch.rand(n, dtype=float64)`` per
step, and each picks the first token whose cumulative probability (float64, in token-id order) exceeds its
number. The draws do not depend on the batch size or on the other examples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .batch import PAD
from .cache import digest_any
from .errors import InterpError
from .metrics import Metric, TokenIds


def _count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InterpError(f"{name} must be an integer >= {low}", expected=f"an int >= {low}", seen=repr(value),
                          fix=f"pass {name}={max(low, 1)} or more")
    return value


def _stops(stop: Any) -> tuple[int, ...]:
    if stop is None:
        return ()
    ids = (stop,) if isinstance(stop, int) else tuple(stop)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise InterpError("stop must be token ids", expected="an int id or a list of ids (e.g. the EOS id)",
                          seen=repr(stop)[:60], fix="pass stop=tokenizer.eos_token_id")
    return ids


class Decoding:
    """Base of the decoding settings. ``n`` samples per prompt, ``max_new_tokens`` tokens each; tokens after a
    ``stop`` id are not part of the text (they read as padding, -1)."""

    n: int = 1
    max_new_tokens: int = 8
    stop: Any = None

    def spec(self) -> dict[str, Any]:
        """Everything that sets the generated tokens (for the run cache and the claim records)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def pick(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        """The next token of each row of ``logits [rows, vocab]`` (rows: example-major, ``n`` per example)."""
        raise NotImplementedError

    def generators(self, rows: torch.Tensor) -> list[torch.Generator] | None:
        """One generator per example in ``rows`` (None for greedy decoding)."""
        return None


@dataclass(frozen=True)
class Greedy(Decoding):
    """Greedy decoding: the argmax token at every step (ties: the lowest id). One sample per prompt."""

    max_new_tokens: int = 8
    stop: Any = None

    def __post_init__(self) -> None:
        _count("max_new_tokens", self.max_new_tokens)
        object.__setattr__(self, "stop", _stops(self.stop) or None)

    @property
    def n(self) -> int:  # type: ignore[override]
        return 1

    def spec(self) -> dict[str, Any]:
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens, "stop": list(self.stop or ())}

    def describe(self) -> str:
        return f"greedy, {self.max_new_tokens} new tokens"

    def pick(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        return logits.float().argmax(-1)


def example_seed(seed: int, example: int) -> int:
    """The seed of example ``example``'s sampling generator under ``Sample(seed=seed)``."""
    return int.from_bytes(hashlib.sha256(f"pytest-interp sample {seed} {example}".encode()).digest()[:8],
                          "little") >> 1


@dataclass(frozen=True)
class Sample(Decoding):
    """Sampling: ``n`` continuations per prompt at ``temperature``, keeping the ``top_k`` most likely tokens
    (0: all) and then the smallest set of them whose probability reaches ``top_p`` (1.0: all), seeded by
    ``seed`` (see the module docstring for the exact draw)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 8
    seed: int = 0
    max_new_tokens: int = 8
    stop: Any = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t != t or t == float("inf"):
            raise InterpError("temperature must be a positive number when sampling", expected="temperature > 0 "
                              "(0 would be greedy decoding)", seen=repr(t), fix="pass temperature=0.7, or use "
                              "pi.Greedy() for deterministic decoding")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise InterpError("top_p must be in (0, 1]", expected="0 < top_p <= 1 (1.0 keeps every token)",
                              seen=repr(p), fix="pass top_p=0.9, or leave it out")
        _count("top_k", self.top_k, 0)
        _count("n", self.n)
        _count("max_new_tokens", self.max_new_tokens)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InterpError("seed must be a non-negative int", expected="e.g. seed=0", seen=repr(self.seed),
                              fix="pass seed=0")
        object.__setattr__(self, "stop", _stops(self.stop) or None)

    def spec(self) -> dict[str, Any]:
        return {"decoding": "sample", "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": self.top_k, "n": self.n, "seed": self.seed, "max_new_tokens": self.max_new_tokens,
                "stop": list(self.stop or ())}

    def describe(self) -> str:
        parts = [f"temperature {self.temperature:g}"]
        if self.top_p < 1:
            parts.append(f"top-p {self.top_p:g}")
        if self.top_k:
            parts.append(f"top-k {self.top_k}")
        return f"sample ({', '.join(parts)}), {self.n} per prompt, seed {self.seed}, {self.max_new_tokens} new tokens"

    def generators(self, rows: torch.Tensor) -> list[torch.Generator] | None:
        return [torch.Generator().manual_seed(example_seed(self.seed, int(i))) for i in rows.tolist()]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution each row samples from: temperature, then top-k, then top-p; float64."""
        z = logits.double() / float(self.temperature)
        if self.top_k and self.top_k < z.shape[-1]:
            kth = torch.topk(z, self.top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        probs = torch.softmax(z, -1)
        if self.top_p < 1:
            sp, order = probs.sort(dim=-1, descending=True, stable=True)
            before = sp.cumsum(-1) - sp  # mass of the tokens ranked above each one
            sp = sp.masked_fill(before >= self.top_p, 0.0)  # keep the smallest prefix that reaches top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sp)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def pick(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        assert generators is not None
        probs = self.probabilities(logits)
        u = torch.cat([torch.rand(self.n, generator=g, dtype=torch.float64) for g in generators])
        cdf = probs.cumsum(-1)
        return (cdf < u.to(cdf.device)[:, None]).sum(-1).clamp_max(probs.shape[-1] - 1)


def check_decoding(decoding: Any) -> Decoding:
    if not isinstance(decoding, Decoding):
        raise InterpError("decoding is not a decoding setting", expected="pi.Greedy(...) or pi.Sample(...)",
                          seen=repr(decoding)[:80], fix="pass decoding=pi.Greedy(max_new_tokens=4)")
    return decoding


def cut_at_stop(generated: torch.Tensor, stop: Any) -> torch.Tensor:
    """``generated [rows, new]`` with every token after the first stop id set to padding (-1); the stop token
    itself is kept."""
    if not stop:
        return generated
    hit = torch.zeros_like(generated, dtype=torch.bool)
    for s in stop:
        hit |= generated == s
    after = (hit.long().cumsum(-1) - hit.long()) > 0
    return generated.masked_fill(after, PAD)


class GenerationMetric(Metric):
    """A metric scored on generated tokens: ``fn(generated, tokens) -> Tensor[batch]`` with ``generated
    [batch, n, max_new_tokens]`` (padding -1 after a stop token) and ``tokens`` the prompts. May take ``rows``
    like any metric."""

    output = "generation"

    def __init__(self, fn: Callable[..., torch.Tensor] | None, decoding: Any, *, higher_is_better: bool = True,
                 name: str | None = None, cache_key: str | None = None) -> None:
        super().__init__(fn, higher_is_better=higher_is_better, name=name, cache_key=cache_key)
        if "clean" in self._takes:
            raise InterpError("a generation metric cannot read the clean run", expected="fn(generated, tokens) "
                              "or fn(generated, tokens, rows=...)", seen="a clean= parameter",
                              fix="compare with the clean run through the experiment (ablate/patch do)")
        self.decoding = check_decoding(decoding)
        self.name = f"{self.name} [{self.decoding.describe()}]"

    def cache_spec(self) -> dict[str, Any] | None:
        base = super().cache_spec()
        return None if base is None else {**base, "decoding": self.decoding.spec()}

    def check_subject(self, subject: Any) -> None:
        if getattr(subject, "encoder_decoder", False):
            raise InterpError(f"{self.name} generates text, and generation of encoder-decoder models is not "
                              "supported", expected="a causal LM (generation runs the prompt and the text so far)",
                              seen=f"an encoder-decoder model ({getattr(subject, 'class_name', '?')})",
                              fix="score its decoder's first prediction (pi.metrics.logprob(answer)) or the "
                                  "teacher-forced answer of pi.Prompt experiments")
        if not getattr(subject, "causal", True):
            raise InterpError(f"{self.name} generates text and this model is not a causal LM",
                              expected="a left-to-right language model with an LM head",
                              seen=f"an encoder ({getattr(subject, 'class_name', '?')})",
                              fix="score an encoder with a single-pass metric (pi.metrics.cosine(), masked_logprob)")
        if not getattr(subject, "has_head", True):
            raise InterpError(f"{self.name} needs next-token logits", expected="a model with an LM head",
                              seen="final hidden states only", fix="load the model with its LM head")

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        self.check_subject(subject)
        fn = self.fn
        assert fn is not None
        takes = self._takes
        d = self.decoding

        def score(generated: torch.Tensor, rows: torch.Tensor, clean: Any = None) -> torch.Tensor:
            extra = {"rows": rows} if "rows" in takes else {}
            out = torch.as_tensor(fn(generated, tokens[rows], **extra))
            if out.shape != (len(rows),):
                raise InterpError(f"metric {self.name} returned the wrong shape",
                                  expected=f"one score per prompt: ({len(rows)},)", seen=str(tuple(out.shape)),
                                  fix="reduce over samples and generated tokens inside the metric function")
            return out.float()

        score.output, score.decoding = "generation", d  # type: ignore[attr-defined]
        return score


def _answer_sequences(subject: TokenIds, answer: Any, b: int) -> list[list[int]]:
    """One token sequence per example from ``answer``: one answer for all or one per example; each an id, a
    one-token string, or a list of ids."""
    if isinstance(answer, torch.Tensor):
        answer = answer.tolist()
    one = not isinstance(answer, (list, tuple)) or (bool(answer) and all(
        isinstance(a, int) and not isinstance(a, bool) for a in answer) and len(answer) != b)
    items = [answer] * b if one else list(answer)
    if len(items) != b:
        raise InterpError(f"answer has {len(items)} entries for {b} prompts", expected="one answer for all or one "
                          "per prompt", seen=f"{len(items)} answers", fix="pass answers with the batch's length")
    out = []
    for a in items:
        if isinstance(a, (list, tuple)):
            seq = [int(x) for x in a]
        else:
            seq = [int(subject.token_ids(a, name="answer").reshape(-1)[0])]
        if not seq:
            raise InterpError("an answer is empty", expected="at least one token", seen=repr(a), fix="drop it")
        out.append(seq)
    return out


class _Contains(GenerationMetric):
    def __init__(self, answer: Any, decoding: Any) -> None:
        super().__init__(lambda g, t: g, decoding, name="answer generated")
        self.answer = answer

    def cache_spec(self) -> dict[str, Any] | None:
        return {"kind": "contains", "answer": digest_any(self.answer), "decoding": self.decoding.spec()}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        self.check_subject(subject)
        seqs = _answer_sequences(subject, self.answer, tokens.shape[0])
        if any(len(s) > self.decoding.max_new_tokens for s in seqs):
            raise InterpError("an answer is longer than the generated text can be",
                              expected=f"answers of at most max_new_tokens = {self.decoding.max_new_tokens} tokens",
                              seen=f"an answer of {max(map(len, seqs))} tokens",
                              fix="raise max_new_tokens in the decoding setting")

        def score(generated: torch.Tensor, rows: torch.Tensor, clean: Any = None) -> torch.Tensor:
            out = torch.empty(len(rows))
            for j, r in enumerate(rows.tolist()):
                a = torch.tensor(seqs[r], device=generated.device)
                w = generated[j].unfold(-1, len(a), 1)  # [n, windows, len]
                out[j] = (w == a).all(-1).any(-1).float().mean()
            return out

        score.output, score.decoding = "generation", self.decoding  # type: ignore[attr-defined]
        return score


def generates(answer: Any, *, decoding: Any = None) -> Metric:
    """The rate at which the generated continuation contains ``answer`` (per prompt: the fraction of its ``n``
    samples whose text holds the answer's tokens contiguously; 0 or 1 for greedy decoding). ``answer``: one id
    or one-token string per prompt (or one for all), or a list of ids per prompt. ``decoding`` defaults to
    ``pi.Greedy(max_new_tokens=8)``. Higher is better."""
    return _Contains(answer, Greedy() if decoding is None else decoding)


def generated(fn: Callable[..., torch.Tensor], *, decoding: Any = None, higher_is_better: bool = True,
              name: str | None = None, cache_key: str | None = None) -> Metric:
    """A metric of your own on generated tokens: ``fn(generated [batch, n, new], tokens) -> Tensor[batch]``."""
    return GenerationMetric(fn, Greedy() if decoding is None else decoding, higher_is_better=higher_is_better,
                            name=name, cache_key=cache_key)
