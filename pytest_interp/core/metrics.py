"""Metrics: per-example behaviour scores read off the logits, each knowing whether higher is better."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch

from .batch import lengths, real
from .cache import digest_any, tensor_digest
from .errors import InterpError



class TokenIds(Protocol):
    """What a metric needs of the subject it is bound to: answer strings or ids as one token id each."""

    def token_ids(self, answers: Any, *, name: str = "answer") -> torch.Tensor: ...


class Metric:
    """A per-example behaviour score.

    Args:
        fn: ``fn(logits, tokens) -> Tensor[batch]``. It is called on batch chunks, so row ``i`` of its
            output must depend only on row ``i`` of its inputs. It may also take keyword arguments ``rows``
            (which examples of the inputs the chunk holds: index per-example targets with it, e.g.
            ``answers[rows]``) and ``clean`` (the clean run's logits for the same rows: declaring it makes every
            run also compute the clean run). Padded positions of a ragged batch hold
            :data:`~pytest_interp.core.batch.PAD` (-1) in ``tokens``.
        higher_is_better: whether a larger score means better behaviour (log-prob: yes; loss: no).
        name: how reports name the metric.
        cache_key: a string you change whenever ``fn`` changes; with it, runs scored by this metric are
            cached across sessions (without it they are recomputed every time).
        reads: the one position the metric reads (e.g. ``pi.last``; negative positions count from each
            example's end). ``fn`` then receives ``logits [batch, 1, vocab]``: each example's logits there (and
            ``clean`` likewise), and the model computes its output head only there, as the built-in
            ``logprob`` does. ``None`` (default): full-length logits.
    """

    needs_clean = False
    #: what the metric reads off a run: ``"logits"``, or ``"hidden"`` (the final hidden states)
    output = "logits"

    def __init__(self, fn: Callable[..., torch.Tensor] | None = None, higher_is_better: bool = True,
                 name: str | None = None, cache_key: str | None = None, reads: int | None = None) -> None:
        if reads is not None and (isinstance(reads, bool) or not isinstance(reads, int)):
            raise InterpError("Metric reads= is not a position", expected="one int position, e.g. pi.last (-1)",
                              seen=repr(reads)[:60], fix="pass reads=pi.last or reads=k, or leave it out")
        self.reads = reads
        self.fn = fn
        self.higher_is_better = higher_is_better
        self.name: str = name or str(getattr(fn, "__name__", "metric"))
        self.cache_key = cache_key
        self._takes = _keywords(fn) if fn is not None else set()
        if "clean" in self._takes:
            self.needs_clean = True

    def cache_spec(self) -> dict[str, Any] | None:
        """What identifies this metric's numbers in the run cache; None: never cached (a user function
        without ``cache_key=``, whose code and captured values cannot be fingerprinted safely)."""
        if self.cache_key is None:
            return None
        return {"kind": "user", "name": self.name, "key": self.cache_key, "hib": self.higher_is_better,
                "reads": self.reads}

    def __repr__(self) -> str:
        return f"<Metric {self.name} ({'higher' if self.higher_is_better else 'lower'} is better)>"

    def __str__(self) -> str:
        return self.name

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        """Check the metric against a batch; return ``score(logits, rows, clean_logits=None) -> Tensor[rows]``."""
        fn = self.fn
        if fn is None:
            raise InterpError("Metric has no function", expected="Metric(fn, higher_is_better=...)",
                              seen="fn=None", fix="pass fn(logits, tokens) -> Tensor[batch]")

        takes = self._takes
        t = tokens.shape[1]
        pos = None if self.reads is None else positions_of(self.reads, tokens, self.name)
        lo, hi = (0, t) if pos is None else (int(pos.min()), int(pos.max()) + 1)

        def at(x: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
            if pos is None or x is None:
                return x
            window = _window(x, lo, hi, t)
            return window[torch.arange(len(rows), device=window.device), (pos[rows] - lo).to(window.device)][:, None]

        def score(logits: torch.Tensor, rows: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
            extra: dict[str, Any] = {}
            if "rows" in takes:
                extra["rows"] = rows
            if "clean" in takes:
                extra["clean"] = at(clean_logits, rows)
            out = torch.as_tensor(fn(at(logits, rows), tokens[rows], **extra))
            if out.shape != (len(rows),):
                raise InterpError(f"metric {self.name} returned the wrong shape",
                                  expected=f"one score per example: ({len(rows)},)", seen=str(tuple(out.shape)),
                                  fix="reduce over positions inside the metric function")
            return out.float()

        if pos is not None:
            score.reads, score.seq = (lo, hi), t  # type: ignore[attr-defined]  # the LM head only there
        return score


def _keywords(fn: Callable[..., Any]) -> set[str]:
    """Which of the optional keywords ``rows`` and ``clean`` a metric function accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    return {k for k in ("rows", "clean") if k in params}


def _mask(mask: Any, tokens: torch.Tensor, what: str) -> torch.Tensor:
    """A prediction mask ``[batch, seq-1]``: True where the prediction at t (of token t+1) counts (never the
    prediction of padding)."""
    b, t = tokens.shape
    targets = real(tokens)[:, 1:]
    if mask is None:
        if t < 2:
            raise InterpError(f"{what} needs at least two tokens per example", expected=">= 2 tokens",
                              seen=f"{t} token(s)", fix="use longer inputs or metrics.logprob(answer)")
        short = ~targets.any(1)
        if bool(short.any()):
            raise InterpError(f"{what} needs at least two tokens per example", expected=">= 2 real tokens",
                              seen=f"example {int(short.nonzero()[0])} has 1", fix="drop one-token examples")
        return targets
    m = torch.as_tensor(getattr(mask, "mask", mask), device=tokens.device)
    if m.dtype != torch.bool:
        raise InterpError(f"{what} mask is not boolean", expected="a bool tensor [batch, seq]", seen=str(m.dtype),
                          fix="build the mask with comparisons, e.g. positions >= k")
    if m.dim() == 1:
        m = m[None].expand(b, -1)
    if m.shape == (b, t):
        if bool(m[:, -1].any()):
            raise InterpError(f"{what} mask counts the prediction at the last position",
                              expected="mask[:, -1] all False (the last position predicts no input token)",
                              seen=f"{int(m[:, -1].sum())} example(s) with mask[:, -1] True",
                              fix="mask[b, t] marks the prediction of token t+1 made at position t")
        m = m[:, :-1]
    if m.shape != (b, t - 1):
        raise InterpError(f"{what} mask has the wrong shape", expected=f"[batch, seq] = {[b, t]}",
                          seen=str(list(m.shape)), fix="build the mask for the same inputs the claim uses")
    if bool((m & ~targets).any()):
        ex = int((m & ~targets).any(1).nonzero()[0])
        raise InterpError(f"{what} mask counts the prediction of padding",
                          expected="mask[b, t] True only where token t+1 is a real token",
                          seen=f"example {ex}", fix="AND the mask with the real tokens: mask & pi.real(tokens)")
    empty = (~m).all(dim=1)
    if bool(empty.any()):
        raise InterpError(f"{what} mask counts no prediction for {int(empty.sum())} example(s)",
                          expected="at least one counted prediction per example",
                          seen=f"first empty example: {int(empty.nonzero()[0])}",
                          fix="drop those examples or widen the mask")
    return m


def _counted(m: torch.Tensor) -> tuple[int, int]:
    """The range [lo, hi) of columns of a mask in which some row counts."""
    cols = m.any(0).nonzero()[:, 0]
    return int(cols[0]), int(cols[-1]) + 1


def _window(logits: torch.Tensor, lo: int, hi: int, seq: int) -> torch.Tensor:
    """Positions [lo, hi) of ``logits``: full-length logits (``seq`` positions), or logits the LM head computed
    only there (see ``Subject.head_kwargs``)."""
    if logits.dim() != 3:
        raise InterpError("this metric reads per-token logits, but the model gives one score vector per example",
                          expected="logits [batch, seq, vocab] (a language-model head)",
                          seen=f"logits of shape {list(logits.shape)} (a classification head)",
                          fix="score the classification head with pi.metrics.label_logprob(label) or "
                              "label_diff(label, other)")
    if logits.shape[1] == seq:
        return logits[:, lo:hi]
    if logits.shape[1] != hi - lo:
        raise InterpError("logits cover other positions than the metric reads", expected=f"{seq} or {hi - lo}",
                          seen=f"{logits.shape[1]} positions", fix="score full-length logits")
    return logits


class _Loss(Metric):
    def __init__(self, mask: Any, accuracy: bool = False) -> None:
        super().__init__(None, higher_is_better=accuracy,
                         name=("accuracy" if accuracy else "loss") + ("" if mask is None else "[masked]"))
        self.mask = mask
        self.accuracy = accuracy

    def cache_spec(self) -> dict[str, Any] | None:
        mask = getattr(self.mask, "mask", self.mask)
        return {"kind": self.name, "mask": tensor_digest(mask)}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        if not getattr(subject, "causal", True):
            raise InterpError(f"{self.name} is a next-token metric and this model is not a causal LM",
                              expected="a left-to-right language model",
                              seen=f"an encoder ({getattr(subject, 'class_name', '?')}: a masked-LM or embedding "
                                   "model)",
                              fix="use metrics.masked_logprob(original) on inputs with masked tokens, "
                                  "metrics.logprob(answer, position=...) at a [MASK], or metrics.cosine()")
        m = _mask(self.mask, tokens, self.name)
        targets = tokens[:, 1:].clamp_min(0)  # padding is never counted
        t = tokens.shape[1]

        lo, hi = _counted(m)

        def score(logits: torch.Tensor, rows: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
            lg = _window(logits, lo, hi, t).float()
            tgt = targets[rows][:, lo:hi]
            if self.accuracy:
                per = (lg.argmax(-1) == tgt).float()
            else:
                per = -torch.log_softmax(lg, -1).gather(-1, tgt[..., None])[..., 0]
            mm = m[rows][:, lo:hi].float()
            return (per * mm).sum(1) / mm.sum(1)

        score.reads, score.seq = (lo, hi), t  # type: ignore[attr-defined]  # the LM head may skip the rest
        return score


def loss(mask: Any = None) -> Metric:
    """Next-token cross-entropy (nats). ``mask[b, t]`` True: the prediction made at t (of token t+1) counts;
    per example, the mean over its counted predictions. Lower is better."""
    return _Loss(mask)


def accuracy(mask: Any = None) -> Metric:
    """Fraction of counted next-token predictions whose argmax is right (mask as for :func:`loss`)."""
    return _Loss(mask, accuracy=True)


class _Answer(Metric):
    def __init__(self, answer: Any, wrong: Any = None, position: int = -1) -> None:
        name = "logprob(answer)" if wrong is None else "logit_diff(answer, wrong)"
        super().__init__(None, higher_is_better=True, name=name)
        self.answer, self.wrong, self.position = answer, wrong, position

    def cache_spec(self) -> dict[str, Any] | None:
        return {"kind": self.name, "answer": digest_any(self.answer), "wrong": digest_any(self.wrong),
                "position": self.position}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        b, t = tokens.shape
        pos = positions_of(self.position, tokens, self.name)
        ids = {}
        for label, value in (("answer", self.answer), ("wrong", self.wrong)):
            if value is None:
                continue
            got = subject.token_ids(value, name=label)
            if got.numel() == 1:
                got = got.expand(b)
            if got.numel() != b:
                raise InterpError(f"{label} has {got.numel()} ids for {b} examples",
                                  expected="one token id per example (or one for all)", seen=f"{got.numel()} ids",
                                  fix=f"pass {label} with the batch's length")
            ids[label] = got
        lo, hi = int(pos.min()), int(pos.max()) + 1

        def score(logits: torch.Tensor, rows: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
            window = _window(logits, lo, hi, t)
            at = (pos[rows] - lo).to(window.device)
            last = window[torch.arange(len(rows), device=window.device), at].float()
            a = ids["answer"][rows]
            if "wrong" in ids:
                return last.gather(-1, a[:, None])[:, 0] - last.gather(-1, ids["wrong"][rows][:, None])[:, 0]
            return torch.log_softmax(last, -1).gather(-1, a[:, None])[:, 0]

        score.reads, score.seq = (lo, hi), t  # type: ignore[attr-defined]  # the LM head may skip the rest
        return score


def positions_of(position: int, tokens: torch.Tensor, what: str) -> torch.Tensor:
    """Each example's position ``position`` counts (negative: from its own end; ``-1`` its last real token)."""
    n = lengths(tokens)
    pos = n + position if position < 0 else torch.full_like(n, position)
    bad = (pos < 0) | (pos >= n)
    if bool(bad.any()):
        ex = int(bad.nonzero()[0])
        raise InterpError(f"{what} reads position {position}, past the end of an example",
                          expected=f"a position in [-{int(n.min())}, {int(n.min())}) (the shortest example)",
                          seen=f"example {ex} has {int(n[ex])} tokens",
                          fix="pass position= within every example (pi.last is each example's last token)")
    return pos


def logprob(answer: Any, *, position: int = -1) -> Metric:
    """Log-probability of ``answer`` (token ids [batch], one id, or single-token strings) at ``position`` (per
    example: negative positions count from each example's end; the default is its last real token)."""
    return _Answer(answer, None, position)


def logit_diff(answer: Any, wrong: Any, *, position: int = -1) -> Metric:
    """Logit of ``answer`` minus logit of ``wrong`` at ``position`` (default: the last)."""
    return _Answer(answer, wrong, position)


class _KL(Metric):
    needs_clean = True

    def __init__(self, mask: Any) -> None:
        super().__init__(None, higher_is_better=False, name="kl")
        self.mask = mask

    def cache_spec(self) -> dict[str, Any] | None:
        return {"kind": "kl", "mask": tensor_digest(self.mask)}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        b, t = tokens.shape
        if self.mask is None:
            m = real(tokens)
        else:
            m = torch.as_tensor(self.mask, device=tokens.device, dtype=torch.bool)
            if m.shape != (b, t):
                raise InterpError("kl mask has the wrong shape", expected=f"[batch, seq] = {[b, t]}",
                                  seen=str(list(m.shape)), fix="mask[b, t] True: position t's distribution counts")

        if not bool(m.any(1).all()):
            raise InterpError("kl mask counts no position for some example", expected="at least one True per row",
                              seen=f"{int((~m.any(1)).sum())} empty row(s)", fix="widen the mask or drop those rows")
        lo, hi = _counted(m)

        def score(logits: torch.Tensor, rows: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
            assert clean_logits is not None
            p = torch.log_softmax(_window(clean_logits, lo, hi, t).float(), -1)
            q = torch.log_softmax(_window(logits, lo, hi, t).float(), -1)
            per = (p.exp() * (p - q)).sum(-1).clamp_min(0)
            mm = m[rows][:, lo:hi].float()
            return (per * mm).sum(1) / mm.sum(1)

        score.reads, score.seq = (lo, hi), t  # type: ignore[attr-defined]
        return score


def kl(mask: Any = None) -> Metric:
    """KL divergence of the run's next-token distributions from the clean run's (mean over positions).
    Zero on the clean run; lower is better."""
    return _KL(mask)


class _MaskedLM(Metric):
    def __init__(self, original: Any) -> None:
        super().__init__(None, higher_is_better=True, name="masked_logprob")
        self.original = original

    def cache_spec(self) -> dict[str, Any] | None:
        return {"kind": "masked_logprob", "original": digest_any(self.original)}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        if getattr(subject, "causal", False):
            raise InterpError("masked_logprob scores a masked-LM: the logits at a masked position predict its "
                              "own token", expected="an encoder with a masked-LM head", seen="a causal LM",
                              fix="use metrics.loss() or metrics.logprob(answer) on a causal model")
        to_tokens = getattr(subject, "tokens", None)
        orig = to_tokens(self.original, name="original") if to_tokens is not None else \
            torch.as_tensor(self.original)
        orig = orig.to(tokens.device)
        if orig.shape != tokens.shape or not torch.equal(real(orig), real(tokens)):
            raise InterpError("masked_logprob original has another shape than the inputs",
                              expected=f"the unmasked inputs, token for token: {list(tokens.shape)}",
                              seen=str(list(orig.shape)), fix="pass the inputs as they were before masking")
        scored = (orig != tokens) & real(tokens)
        empty = ~scored.any(1)
        if bool(empty.any()):
            raise InterpError("masked_logprob found no masked token in some example",
                              expected="at least one position where the inputs differ from the original",
                              seen=f"example {int(empty.nonzero()[0])}", fix="mask a token in every example")
        target = orig.clamp_min(0)

        def score(logits: torch.Tensor, rows: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
            lp = torch.log_softmax(_window(logits, 0, tokens.shape[1], tokens.shape[1]).float(), -1)
            per = lp.gather(-1, target[rows][..., None])[..., 0]
            m = scored[rows].float()
            return (per * m).sum(1) / m.sum(1)

        return score


def masked_logprob(original: Any) -> Metric:
    """For a masked-LM (``*ForMaskedLM``): the mean log-probability of the original token at each position where
    the inputs differ from ``original`` (the inputs before their tokens were replaced by [MASK]). Higher is
    better."""
    return _MaskedLM(original)


class _Label(Metric):
    def __init__(self, label: Any, other: Any) -> None:
        super().__init__(None, higher_is_better=True, name="label_logprob" if other is None else "label_diff")
        self.label, self.other = label, other

    def cache_spec(self) -> dict[str, Any] | None:
        return {"kind": self.name, "label": digest_any(self.label), "other": digest_any(self.other)}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        b = tokens.shape[0]
        config = getattr(subject, "config", None)
        n_labels = int(getattr(config, "num_labels", 0) or 0)
        names = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
        ids = {}
        for what, value in (("label", self.label), ("other", self.other)):
            if value is None:
                continue
            values = [value] if isinstance(value, (int, str)) else list(torch.as_tensor(value).tolist()) \
                if not isinstance(value, (list, tuple)) else list(value)
            got = []
            for v in values:
                if isinstance(v, str):
                    if v not in names:
                        raise InterpError(f"{what} {v!r} is not a label of this model",
                                          expected=f"one of {sorted(names)[:10]}", seen=repr(v),
                                          fix="use a name from config.label2id, or the label's index")
                    v = names[v]
                if not 0 <= int(v) < max(n_labels, 1):
                    raise InterpError(f"{what} {v} is out of range", expected=f"a label in 0..{n_labels - 1}",
                                      seen=str(v), fix="count labels from 0")
                got.append(int(v))
            t = torch.tensor(got, device=tokens.device)
            if t.numel() == 1:
                t = t.expand(b)
            if t.numel() != b:
                raise InterpError(f"{what} has {t.numel()} labels for {b} examples", expected="one per example "
                                  "(or one for all)", seen=str(t.numel()), fix=f"pass {what} with the batch's length")
            ids[what] = t

        def score(logits: torch.Tensor, rows: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
            if logits.dim() != 2:
                raise InterpError(f"{self.name} reads a classification head", expected="logits [batch, labels]",
                                  seen=f"logits of shape {list(logits.shape)}",
                                  fix="load a *ForSequenceClassification model, or use logprob/loss on an LM")
            lg = logits.float()
            a = ids["label"][rows]
            if "other" in ids:
                return lg.gather(-1, a[:, None])[:, 0] - lg.gather(-1, ids["other"][rows][:, None])[:, 0]
            return torch.log_softmax(lg, -1).gather(-1, a[:, None])[:, 0]

        score.pooled = True  # type: ignore[attr-defined]  # one output per example: no per-position shortcuts
        return score


def label_logprob(label: Any) -> Metric:
    """For a classification head (``*ForSequenceClassification``): the log-probability of ``label`` (an index or a
    name from ``config.label2id``; one for all examples or one per example). Higher is better."""
    return _Label(label, None)


def label_diff(label: Any, other: Any) -> Metric:
    """For a classification head: the logit of ``label`` minus the logit of ``other``."""
    return _Label(label, other)


POOLS = ("mean", "first", "last")


def pool(hidden: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per example from final hidden states ``[b, seq, d]`` over its real tokens (``valid``): their
    mean (sentence-transformers' pooling), the first token ([CLS]) or the last real token."""
    h = hidden.float()
    if how == "mean":
        v = valid.to(h.device, torch.float32)[..., None]
        return (h * v).sum(1) / v.sum(1)
    if how == "first":
        return h[:, 0]
    last = valid.sum(1).to(h.device) - 1
    return h[torch.arange(h.shape[0], device=h.device), last]


class _Cosine(Metric):
    output = "hidden"

    def __init__(self, reference: Any, pool: str) -> None:
        if pool not in POOLS:
            raise InterpError(f"cosine pool {pool!r} is not supported", expected=" / ".join(POOLS), seen=repr(pool),
                              fix="pool='mean' (sentence embeddings), 'first' ([CLS]) or 'last'")
        super().__init__(None, higher_is_better=True,
                         name=f"cosine({pool}-pooled, {'clean' if reference is None else 'reference'})")
        self.reference, self.pool = reference, pool
        self.needs_clean = reference is None

    def cache_spec(self) -> dict[str, Any] | None:
        return {"kind": "cosine", "pool": self.pool, "reference": tensor_digest(self.reference)}

    def bind(self, subject: TokenIds, tokens: torch.Tensor) -> Callable[..., torch.Tensor]:
        valid = real(tokens)
        ref = None
        if self.reference is not None:
            ref = torch.as_tensor(self.reference).float()
            if ref.dim() != 2 or ref.shape[0] != tokens.shape[0]:
                raise InterpError("cosine reference has the wrong shape", expected=f"one vector per example: "
                                  f"[{tokens.shape[0]}, d]", seen=str(list(ref.shape)),
                                  fix="build it with pi.embeddings(subject, texts) for the same number of texts")

        def score(hidden: torch.Tensor, rows: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
            mine = pool(hidden, valid[rows], self.pool)
            if ref is None:
                assert clean is not None
                other = pool(clean, valid[rows], self.pool)
            else:
                other = ref[rows.to(ref.device)].to(mine.device)
                if other.shape[1] != mine.shape[1]:
                    raise InterpError("cosine reference vectors have another width than the model's",
                                      expected=f"d = {mine.shape[1]}", seen=f"d = {other.shape[1]}",
                                      fix="embed the reference texts with the same model")
            return torch.nn.functional.cosine_similarity(mine, other, dim=-1)

        score.output = "hidden"  # type: ignore[attr-defined]  # the runner passes the final hidden states
        return score


def cosine(reference: Any = None, *, pool: str = "mean") -> Metric:
    """Cosine similarity of each example's pooled final representation (``pool``: ``"mean"`` over its real
    tokens, ``"first"`` token, or ``"last"`` real token) to a reference vector: by default its own on the clean
    run (an ablation's damage is then ``1 - cosine``: how far the representation moved), or row ``i`` of
    ``reference [n, d]`` (e.g. ``pi.embeddings(subject, paraphrases)``: paraphrase similarity). For models with or
    without an output head; higher is better."""
    return _Cosine(reference, pool)


__all__ = ["Metric", "accuracy", "cosine", "kl", "label_diff", "label_logprob", "logit_diff", "logprob", "loss",
           "masked_logprob", "pool"]
