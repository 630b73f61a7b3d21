"""Prompts made of named segments (documents, question, tool calls and outputs), and what the answer relies on.

Attention to a passage shows provenance (what was read); whether the answer *relies* on it is decided here by
removing the passage, either by deleting its tokens or by masking them out of attention, and measuring the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ._errors import InterpError

KINDS = ("text", "document", "question", "tool_call", "tool_output")
_ALIASES = {"doc": "document", "tool": "tool_output", "output": "tool_output", "call": "tool_call"}
METHODS = ("delete", "mask")
SCORES = ("logprob", "prob", "accuracy")


@dataclass(frozen=True)
class Segment:
    """A named part of a prompt. ``kind`` is one of ``text``, ``document`` (alias ``doc``), ``question``,
    ``tool_call``, ``tool_output``; ``name`` lets claims address it (e.g. ``name="gold"``)."""

    kind: str
    text: str
    name: str | None = None

    def __post_init__(self) -> None:
        kind = _ALIASES.get(self.kind, self.kind)
        if kind not in KINDS:
            raise InterpError(f"unknown segment kind {self.kind!r}", expected=f"one of {', '.join(KINDS)}",
                              seen=repr(self.kind), fix="use 'text' for anything that is not a document, question, "
                              "tool call or tool output")
        if not isinstance(self.text, str) or not self.text.strip():
            raise InterpError(f"a {kind} segment has no text", expected="a non-empty string",
                              seen=repr(self.text)[:60], fix="drop the segment or give it text")
        object.__setattr__(self, "kind", kind)


@dataclass(frozen=True)
class Span:
    """A segment's token range ``[start, stop)`` in an encoded prompt."""

    kind: str
    index: int  # among the segments of the same kind
    name: str | None
    start: int
    stop: int

    @property
    def label(self) -> str:
        return f"{self.kind} {self.index}" + (f" ({self.name})" if self.name else "")


class Prompt:
    """A prompt of named segments and the answer it should produce, tokenised once (see :meth:`encode`).

    Build it from segments (``pi.Segment`` or ``(kind, text)`` / ``(kind, text, name)`` tuples), joined with a
    space, or from token ids and spans with :meth:`from_ids`::

        pi.Prompt(("text", "<bos>"), ("doc", "[DOC] k5 v3", "gold"), ("doc", "[DOC] k2 v7"),
                  ("question", "[Q] k5 [A]"), answer="v3")
    """

    def __init__(self, *segments: Any, answer: str | None = None) -> None:
        if len(segments) == 1 and isinstance(segments[0], (list, tuple)) and segments[0] and \
                all(isinstance(s, (Segment, list, tuple)) for s in segments[0]):
            segments = tuple(segments[0])
        self.segments = tuple(_segment(s) for s in segments)
        if not self.segments:
            raise InterpError("a Prompt needs segments", expected="at least one segment", seen="none",
                              fix="pass e.g. ('doc', '...'), ('question', '...')")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise InterpError("the answer must be a non-empty string", expected="e.g. answer='Paris'",
                              seen=repr(answer)[:60], fix="pass the expected continuation as text")
        self.answer = answer
        self._ids, self._spans, self._answer_ids = None, None, None

    @classmethod
    def from_ids(cls, ids: Iterable[int], spans: Iterable[tuple[Any, ...]], answer_ids: Iterable[int]) -> Prompt:
        """A prompt given as token ids with segment spans ``(kind, start, stop)`` or ``(kind, start, stop, name)``
        (token positions, ``stop`` exclusive; tokens outside every span are kept by every ablation)."""
        ids_l = [int(i) for i in ids]
        out = cls.__new__(cls)
        out.answer = None
        out._answer_ids = [int(i) for i in answer_ids]
        if not out._answer_ids:
            raise InterpError("answer_ids is empty", expected="the answer's token ids", seen="[]",
                              fix="pass the ids of the expected continuation")
        raw = []
        for sp in spans:
            if len(sp) not in (3, 4):
                raise InterpError("a span must be (kind, start, stop) or (kind, start, stop, name)",
                                  expected="3 or 4 items", seen=repr(sp)[:60], fix="e.g. ('doc', 1, 4, 'gold')")
            kind = Segment(sp[0], "x").kind
            start, stop = int(sp[1]), int(sp[2])
            if not 0 <= start < stop <= len(ids_l):
                raise InterpError(f"span {sp!r} is outside the prompt", expected=f"0 <= start < stop <= {len(ids_l)}",
                                  seen=f"start {start}, stop {stop}", fix="give token positions within the prompt")
            raw.append((kind, start, stop, sp[3] if len(sp) == 4 else None))
        raw.sort(key=lambda r: r[1])
        for a, b in zip(raw, raw[1:]):
            if b[1] < a[2]:
                raise InterpError("prompt segments overlap", expected="disjoint token spans",
                                  seen=f"{a[0]} [{a[1]}, {a[2]}) and {b[0]} [{b[1]}, {b[2]})",
                                  fix="split the tokens so that each belongs to at most one segment")
        out.segments = tuple(Segment(k, f"<tokens {s}:{e}>", n) for k, s, e, n in raw)
        out._ids = ids_l
        out._spans = _number(raw)
        return out

    def encode(self, subject: Any) -> tuple[list[int], tuple[Span, ...], list[int]]:
        """Token ids of the prompt, each segment's span, and the answer's ids (tokenised once, memoised)."""
        if self._ids is None or self._spans is None:
            self._ids, self._spans, self._answer_ids = _encode(subject, self.segments, self.answer)
        if not self._answer_ids:
            raise InterpError("this prompt has no answer", expected="Prompt(..., answer='...')", seen="answer=None",
                              fix="give the continuation the claim is about")
        return self._ids, self._spans, self._answer_ids

    def structure(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.segments)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.kind}{'=' + s.name if s.name else ''}" for s in self.segments)
        return f"<Prompt [{parts}] answer={self.answer!r}>"


def _segment(s: Any) -> Segment:
    if isinstance(s, Segment):
        return s
    if isinstance(s, (list, tuple)) and len(s) in (2, 3):
        return Segment(*s)
    raise InterpError("a prompt segment must be a pi.Segment or a (kind, text[, name]) tuple",
                      expected="e.g. ('doc', '[DOC] k5 v3')", seen=repr(s)[:60], fix="wrap the text with its kind")


def _number(raw: list[tuple[str, int, int, str | None]]) -> tuple[Span, ...]:
    counts: dict[str, int] = {}
    out = []
    for kind, start, stop, name in raw:
        out.append(Span(kind, counts.get(kind, 0), name, start, stop))
        counts[kind] = counts.get(kind, 0) + 1
    return tuple(out)


def _encode(subject: Any, segments: tuple[Segment, ...], answer: str | None):
    tok = subject.tokenizer
    if tok is None:
        raise InterpError("prompts of text segments need a tokenizer", expected="a subject with a tokenizer",
                          seen="tokenizer=None", fix="pass tokenizer= to pi.load, or use pi.Prompt.from_ids")
    pieces = [s.text for s in segments] + ([answer] if answer is not None else [])
    text, bounds, pos = "", [], 0
    for i, piece in enumerate(pieces):
        if i:
            text += " "
            pos += 1
        bounds.append((pos, pos + len(piece)))
        text += piece
        pos += len(piece)
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise InterpError("the tokenizer cannot report character offsets", expected="a fast (Rust) tokenizer",
                          seen=f"{type(tok).__name__}: {exc}", fix="load a fast tokenizer, or use Prompt.from_ids")
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    owner: list[int | None] = []
    for a, b in offsets:
        while a < b and text[a].isspace():
            a += 1
        if a >= b:
            owner.append(None)
            continue
        seg = next((j for j, (s, e) in enumerate(bounds) if s <= a < e), None)
        if seg is not None and b > bounds[seg][1]:
            nxt = pieces[seg + 1][:20] if seg + 1 < len(pieces) else ""
            raise InterpError("the tokenizer merges text across a segment boundary",
                              expected="every token inside one segment",
                              seen=f"token {text[a:b]!r} spans the end of {pieces[seg][-20:]!r} and the start of "
                                   f"{nxt!r}",
                              fix="end segments at a word boundary the tokenizer respects (e.g. add a space or "
                                  "delimiter token), or give spans with Prompt.from_ids")
        owner.append(seg)
    raw, answer_ids = [], []
    for j, s in enumerate(segments):
        where = [i for i, o in enumerate(owner) if o == j]
        if not where:
            raise InterpError(f"the {s.kind} segment {s.text[:30]!r} has no token", expected="at least one token",
                              seen="none", fix="check the text")
        raw.append((s.kind, where[0], where[-1] + 1, s.name))
    if answer is not None:
        where = [i for i, o in enumerate(owner) if o == len(segments)]
        if not where or where[-1] != len(ids) - 1:
            raise InterpError("the answer does not tokenise to the end of the prompt",
                              expected="answer tokens after the last segment", seen=f"{len(where)} answer token(s)",
                              fix="check the answer text")
        answer_ids = [ids[i] for i in where]
        ids = ids[:where[0]]
    return ids, _number(raw), answer_ids


# --------------------------------------------------------------------------------------------------------------
# selecting segments
# --------------------------------------------------------------------------------------------------------------

def _as_prompts(prompts: Any) -> list[Prompt]:
    if isinstance(prompts, Prompt):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, Prompt) for p in prompts):
        return list(prompts)
    raise InterpError("prompts must be pi.Prompt objects", expected="a pi.Prompt or a non-empty list of them",
                      seen=repr(prompts)[:80], fix="build prompts with pi.Prompt(('doc', ...), ..., answer=...)")


def select(spans: tuple[Span, ...], which: Any, default_kind: str, where: str) -> Span:
    """The span ``which`` names: an int (index among ``default_kind`` segments), a name, or ``(kind, index)``."""
    kind, key = default_kind, which
    if isinstance(which, tuple) and len(which) == 2:
        kind, key = _ALIASES.get(which[0], which[0]), which[1]
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise InterpError(f"cannot select a segment with {which!r}", expected=f"a {default_kind} index, a segment "
                          "name, or (kind, index)", seen=type(which).__name__, fix="e.g. doc=0 or doc='gold'")
    if isinstance(key, str):
        hits = [s for s in spans if s.name == key]
        if len(hits) != 1:
            names = sorted({s.name for s in spans if s.name})
            raise InterpError(f"{where} has {'no' if not hits else 'several'} segment(s) named {key!r}",
                              expected=f"exactly one; names present: {names or 'none'}", seen=f"{len(hits)}",
                              fix="name the segment when building the prompt, e.g. ('doc', text, 'gold')")
        return hits[0]
    of_kind = [s for s in spans if s.kind == kind]
    if not -len(of_kind) <= key < len(of_kind):
        raise InterpError(f"{where} has no {kind} {key}", expected=f"an index in 0..{len(of_kind) - 1}"
                          if of_kind else f"a prompt with a {kind} segment", seen=f"{len(of_kind)} {kind} segment(s)",
                          fix=f"count {kind} segments from 0")
    return of_kind[key]


def _per_prompt(which: Any, n: int) -> list[Any]:
    if isinstance(which, list):
        if len(which) != n:
            raise InterpError("a per-prompt segment list has the wrong length", expected=f"{n} entries",
                              seen=f"{len(which)}", fix="give one segment per prompt, or one for all")
        return which
    return [which] * n


# --------------------------------------------------------------------------------------------------------------
# running edited prompts
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One edited prompt: ids, which positions attention must skip, and the answer ids."""

    ids: list[int]
    hidden: list[int]
    answer: list[int]


def _edit(ids: list[int], spans: tuple[Span, ...], answer: list[int], drop: list[Span], method: str,
          insert: dict[int, list[int]] | None = None, order: list[Span] | None = None) -> Variant:
    if method not in METHODS:
        raise InterpError(f"unknown removal method {method!r}", expected="'delete' (drop the tokens) or 'mask' "
                          "(keep them, hide them from attention)", seen=repr(method), fix="pick one")
    if order is not None:  # reorder the given spans among their own slots
        slots = sorted(order, key=lambda s: s.start)
        out: list[int] = []
        pos = 0
        for slot, src in zip(slots, order):
            out += ids[pos:slot.start] + ids[src.start:src.stop]
            pos = slot.stop
        return Variant(out + ids[pos:], [], answer)
    if method == "mask" and not insert:
        hidden = sorted({i for s in drop for i in range(s.start, s.stop)})
        return Variant(list(ids), hidden, answer)
    out, pos = [], 0
    for s in sorted(drop, key=lambda s: s.start):
        out += ids[pos:s.start] + (insert or {}).get(s.start, [])
        pos = s.stop
    return Variant(out + ids[pos:], [], answer)


def score_variants(subject: Any, variants: list[Variant], metric: str = "logprob") -> np.ndarray:
    """The answer's score under each variant (teacher-forced over the answer's tokens); runs equal lengths
    together. ``logprob``: summed log-probability; ``prob``: its exp; ``accuracy``: 1 if every answer token is
    the argmax."""
    if metric not in SCORES:
        raise InterpError(f"unknown answer metric {metric!r}", expected=f"one of {', '.join(SCORES)}",
                          seen=repr(metric), fix="e.g. metric='accuracy'")
    import hashlib
    import json

    from ._cache import current
    from ._settings import settings

    def parts() -> dict[str, Any]:
        text = json.dumps([[v.ids, v.hidden, v.answer] for v in variants])
        return {"model": subject.fingerprint, "kind": "answer score", "metric": metric,
                "variants": hashlib.sha256(text.encode()).hexdigest(), "dtype": subject.dtype_key,
                "device": str(subject.device), "attn": subject.attn_implementation,
                "batch_size": settings().batch_size}

    got = current().scores(parts, lambda: torch.as_tensor(_run_variants(subject, variants, metric)))
    return got.double().numpy()


def _run_variants(subject: Any, variants: list[Variant], metric: str) -> np.ndarray:
    from ._runner import _finite, _logits
    from ._settings import settings

    out = np.zeros(len(variants))
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(variants):
        groups.setdefault(len(v.ids) + len(v.answer), []).append(i)
    bs = settings().batch_size
    for length, members in groups.items():
        for j in range(0, len(members), bs):
            rows = members[j:j + bs]
            full = subject.tokens([variants[i].ids + variants[i].answer for i in rows], name="prompt")
            mask = torch.ones_like(full)
            for r, i in enumerate(rows):
                if variants[i].hidden:
                    mask[r, variants[i].hidden] = 0
            pos = torch.arange(length, device=full.device)[None].expand(len(rows), -1)
            logits = _finite(_logits(subject.forward(full, attention_mask=mask, position_ids=pos)), "prompt run")
            for r, i in enumerate(rows):
                a = len(variants[i].answer)
                lg = logits[r, length - a - 1:length - 1].float()
                tgt = full[r, length - a:]
                if metric == "accuracy":
                    out[i] = float((lg.argmax(-1) == tgt).all())
                else:
                    lp = float(torch.log_softmax(lg, -1).gather(-1, tgt[:, None]).sum())
                    out[i] = lp if metric == "logprob" else float(np.exp(lp))
    return out


def _encoded(subject: Any, prompts: list[Prompt]) -> list[tuple[list[int], tuple[Span, ...], list[int]]]:
    return [p.encode(subject) for p in prompts]


def _context_effect(subject: Any, prompts: Any, edit: Any, *, what: str, metric: str, method: str,
                    alpha: float | None, seed: int | None) -> Any:
    """Damage to the answer (clean score - edited score per prompt) when each prompt is edited by ``edit``."""
    from ._experiments import _stat_args, _subject
    from ._stats import mean_effect

    subject = _subject(subject)
    ps = _as_prompts(prompts)
    enc = _encoded(subject, ps)
    clean = [Variant(ids, [], ans) for ids, _, ans in enc]
    edited = [edit(i, ids, spans, ans) for i, (ids, spans, ans) in enumerate(enc)]
    c = score_variants(subject, clean, metric)
    e = score_variants(subject, edited, metric)
    details = {"clean_mean": float(c.mean()), "ablated_mean": float(e.mean())}
    if metric != "accuracy":
        details["clean_accuracy"] = float(score_variants(subject, clean, "accuracy").mean())
        details["ablated_accuracy"] = float(score_variants(subject, edited, "accuracy").mean())
    return mean_effect(c - e, sites=(what,), method=f"context ablation ({method})", intervention=what,
                       metric=f"answer {metric}", higher_is_better=True, model=subject.identity(), details=details,
                       **_stat_args(alpha, seed))


def leave_out(subject: Any, prompts: Any, segment: Any, *, method: str = "delete", metric: str = "logprob",
              kind: str = "document", alpha: float | None = None, seed: int | None = None) -> Any:
    """Remove one segment from every prompt and measure the damage to the answer (clean - removed, per prompt).

    ``segment``: an index among the prompt's ``kind`` segments (default documents), a segment name, a
    ``(kind, index)`` pair, or a list with one of those per prompt. ``method="delete"`` drops the tokens (later
    tokens move up); ``"mask"`` keeps them in place but hides them from attention (position ids unchanged).
    """
    ps = _as_prompts(prompts)
    which = _per_prompt(segment, len(ps))
    labels: set[str] = set()

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        span = select(spans, which[i], kind, f"prompt {i}")
        labels.add(span.name or f"{span.kind} {span.index}")
        return _edit(ids, spans, ans, [span], method)

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method=method, alpha=alpha, seed=seed)
    return _relabel(eff, f"leave out {' / '.join(sorted(labels))} ({method})")


def _relabel(eff: Any, what: str) -> Any:
    import dataclasses

    return dataclasses.replace(eff, sites=(what,), intervention=what)


def keep_only(subject: Any, prompts: Any, segment: Any, *, method: str = "delete", metric: str = "logprob",
              kind: str = "document", alpha: float | None = None, seed: int | None = None) -> Any:
    """Remove every ``kind`` segment except ``segment`` (default: all documents but one)."""
    ps = _as_prompts(prompts)
    which = _per_prompt(segment, len(ps))

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        keep = select(spans, which[i], kind, f"prompt {i}")
        drop = [s for s in spans if s.kind == keep.kind and s != keep]
        if not drop:
            raise InterpError(f"prompt {i} has no other {keep.kind} to remove", expected=f">= 2 {keep.kind}s",
                              seen="1", fix="keep_only needs several segments of the kind")
        return _edit(ids, spans, ans, drop, method)

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method=method, alpha=alpha, seed=seed)
    return _relabel(eff, f"keep only {_name(segment, kind)} ({method})")


def shuffle_segments(subject: Any, prompts: Any, *, kind: str = "document", seed: int = 0, metric: str = "logprob",
            alpha: float | None = None) -> Any:
    """Permute the prompt's ``kind`` segments (seeded; never the identity when there are >= 2) and measure the
    damage to the answer: does the answer rely on the order?"""
    ps = _as_prompts(prompts)
    g = np.random.default_rng(seed)

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        of_kind = [s for s in spans if s.kind == kind]
        if len(of_kind) < 2:
            raise InterpError(f"prompt {i} has fewer than two {kind} segments to shuffle", expected=">= 2",
                              seen=str(len(of_kind)), fix="shuffle prompts with several documents")
        perm = list(range(len(of_kind)))
        while perm == sorted(perm):
            perm = list(g.permutation(len(of_kind)))
        return _edit(ids, spans, ans, [], "delete", order=[of_kind[j] for j in perm])

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method="reorder", alpha=alpha, seed=seed)
    return _relabel(eff, f"shuffle {kind} order (seed {seed})")


def replace_segment(subject: Any, prompts: Any, segment: Any, with_: Any, *, metric: str = "logprob",
            kind: str = "document", alpha: float | None = None, seed: int | None = None) -> Any:
    """Replace ``segment`` by a distractor (text, tokenised alone, or token ids; one for all prompts or a list)."""
    from ._experiments import _subject

    subject = _subject(subject)
    ps = _as_prompts(prompts)
    which = _per_prompt(segment, len(ps))
    per_prompt = isinstance(with_, list) and with_ and isinstance(with_[0], (str, list, tuple))
    repl = with_ if per_prompt else [with_] * len(ps)
    if len(repl) != len(ps):
        raise InterpError("one distractor per prompt is needed", expected=f"{len(ps)} distractors",
                          seen=str(len(repl)), fix="pass one distractor, or a list with one per prompt")
    new_ids = [subject._tokenize([r], "distractor")[0] if isinstance(r, str) else [int(x) for x in r] for r in repl]

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        span = select(spans, which[i], kind, f"prompt {i}")
        return _edit(ids, spans, ans, [span], "delete", insert={span.start: new_ids[i]})

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method="replace", alpha=alpha, seed=seed)
    return _relabel(eff, f"replace {kind} with a distractor")


def leave_one_out(subject: Any, prompts: Any, *, kind: str = "document", method: str = "delete",
                  metric: str = "logprob", alpha: float | None = None, seed: int | None = None) -> dict[str, Any]:
    """:func:`leave_out` for each ``kind`` segment in turn: ``{"document 0": Effect, ...}``."""
    from ._experiments import _subject

    subject = _subject(subject)
    ps = _as_prompts(prompts)
    n = len([s for s in ps[0].encode(subject)[1] if s.kind == kind])
    if n == 0:
        raise InterpError(f"the prompts have no {kind} segment", expected=f"at least one {kind}", seen="none",
                          fix="pick kind= among the prompt's segments")
    return {f"{kind} {j}": leave_out(subject, ps, j, method=method, metric=metric, kind=kind, alpha=alpha,
                                     seed=seed) for j in range(n)}


# --------------------------------------------------------------------------------------------------------------
# provenance (attention) next to reliance (removal)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class SegmentRow:
    label: str
    attention: float
    attention_by_layer: list[float]
    effect: Any

    def __str__(self) -> str:
        return f"{self.label}: attention {self.attention:.3f}, removal damage {self.effect.describe()}"


class Provenance(Iterable[SegmentRow]):
    """Per segment: the attention mass the answer position puts on it (provenance) next to the damage its
    removal does to the answer (reliance). The two can disagree; only the second says what the answer used."""

    def __init__(self, rows: list[SegmentRow]) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[SegmentRow]:
        return iter(self.rows)

    def __getitem__(self, label: str) -> SegmentRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"{label!r} (have: {[r.label for r in self.rows]})")

    def __str__(self) -> str:
        head = f"{'segment':<16} {'attention':>9}  removal damage"
        return "\n".join([head] + [f"{r.label:<16} {r.attention:>9.3f}  {r.effect.describe()}" for r in self.rows])


def provenance(subject: Any, prompts: Any, *, kinds: tuple[str, ...] = ("document", "tool_output"),
               method: str = "delete", metric: str = "logprob", layers: Any = None, alpha: float | None = None,
               seed: int | None = None) -> Provenance:
    """For every segment of ``kinds``: mean attention mass from the position that predicts the answer onto the
    segment (over heads, prompts and ``layers``, default all), and its :func:`leave_out` effect."""
    from . import _records
    from ._experiments import _subject
    from ._runner import check_layer

    subject = _subject(subject)
    ps = _as_prompts(prompts)
    enc = _encoded(subject, ps)
    layers_l = list(range(subject.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers_l:
        check_layer(subject, layer)
    structure = {p.structure() for p in ps}
    if len(structure) != 1:
        raise InterpError("the prompts have different segment structures", expected="the same kinds of segments in "
                          "the same order", seen=f"{len(structure)} structures", fix="group prompts by structure")
    subject.ensure_eager()
    labels = [f"{s.kind} {s.index}" for s in enc[0][1] if s.kind in kinds]
    mass = {lab: np.zeros((len(ps), len(layers_l))) for lab in labels}
    for i, (ids, spans, ans) in enumerate(enc):
        full = subject.tokens([ids], name="prompt")
        out = subject.forward(full, output_attentions=True)
        for li, layer in enumerate(layers_l):
            att = out.attentions[layer][0, :, -1].float().mean(0)  # [key]
            for s in spans:
                lab = f"{s.kind} {s.index}"
                if lab in mass:
                    mass[lab][i, li] = float(att[s.start:s.stop].sum())
    rows = []
    for lab in labels:
        kind, idx = lab.rsplit(" ", 1)
        eff = leave_out(subject, ps, (kind, int(idx)), method=method, metric=metric, alpha=alpha, seed=seed)
        by_layer = mass[lab].mean(0).tolist()
        rows.append(SegmentRow(lab, float(np.mean(by_layer)), by_layer, eff))
    _records.add_grid({"title": f"provenance vs reliance: attention mass (mean over layers) and removal damage "
                                f"({method}, answer {metric})", "rows": labels,
                       "cols": ["attention", "removal damage"],
                       "values": [[r.attention, r.effect.mean] for r in rows]})
    return Provenance(rows)


# --------------------------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------------------------

def _necessary(subject: Any, prompts: Any, which: Any, kind: str, at_least: float, method: str, metric: str,
               alpha: float | None, seed: int | None, claim_kind: str) -> Any:
    __tracebackhide__ = True
    from ._claims import _decide, _threshold

    t = _threshold("at_least", at_least)
    eff = leave_out(subject, prompts, which, method=method, metric=metric, kind=kind, alpha=alpha, seed=seed)
    return _decide(f"{_name(which, kind)} is necessary for the answer (damage >= {t:g})", eff, eff.ci[0] >= t,
                   "lower CI bound >= threshold", f"damage >= {t:g}", _acc(eff), kind=claim_kind, bounds=(t,))


def _name(which: Any, kind: str) -> str:
    if isinstance(which, list):
        return f"the given {kind} of each prompt"
    if isinstance(which, tuple):
        return f"{which[0]} {which[1]}"
    return f"{kind} {which!r}" if isinstance(which, str) else f"{kind} {which}"


def _acc(eff: Any) -> list[str]:
    d = eff.details
    if "clean_accuracy" not in d:
        return []
    return [f"  answer accuracy: {d['clean_accuracy']:.3f} with it, {d['ablated_accuracy']:.3f} without"]


def assert_document_necessary(subject: Any, prompts: Any, doc: Any, *, at_least: float, method: str = "delete",
                              metric: str = "logprob", alpha: float | None = None, seed: int | None = None) -> Any:
    """Claim: removing document ``doc`` (index, name, or one per prompt) damages the answer by at least
    ``at_least`` (lower CI bound; default metric: the answer's log-probability)."""
    __tracebackhide__ = True
    return _necessary(subject, prompts, doc, "document", at_least, method, metric, alpha, seed, "document_necessary")


def assert_tool_output_necessary(subject: Any, prompts: Any, output: Any = 0, *, at_least: float,
                                 method: str = "delete", metric: str = "logprob", alpha: float | None = None,
                                 seed: int | None = None) -> Any:
    """Claim: removing tool output ``output`` (default the first) damages the answer by at least ``at_least``."""
    __tracebackhide__ = True
    return _necessary(subject, prompts, output, "tool_output", at_least, method, metric, alpha, seed,
                      "tool_output_necessary")


def assert_document_unused(subject: Any, prompts: Any, doc: Any, *, within: float, method: str = "delete",
                           metric: str = "logprob", alpha: float | None = None, seed: int | None = None) -> Any:
    """Claim (equivalence): removing document ``doc`` changes the answer's score by less than ``within`` either
    way (the whole CI inside ``[-within, within]``)."""
    __tracebackhide__ = True
    from ._claims import _decide, _threshold

    w = _threshold("within", within, positive=True)
    eff = leave_out(subject, prompts, doc, method=method, metric=metric, alpha=alpha, seed=seed)
    return _decide(f"{_name(doc, 'document')} is unused by the answer (|damage| < {w:g})", eff,
                   -w <= eff.ci[0] and eff.ci[1] <= w, "whole CI inside [-within, within]", f"|damage| <= {w:g}",
                   _acc(eff), kind="document_unused", bounds=(-w, w))
