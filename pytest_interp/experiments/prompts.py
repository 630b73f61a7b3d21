"""Prompts made of named segments (documents, question, tool calls and outputs): tokenising them once, selecting a
segment, editing a prompt (delete, mask, reorder, replace) and scoring the answer under each edit (run-cached)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from ..core.cache import current
from ..core.errors import InterpError
from ..core.settings import settings
from ..engine.runner import logits
from ..model.subject import Subject

KINDS = ("text", "document", "question", "tool_call", "tool_output", "tool_description", "request")
_ALIASES = {"doc": "document", "tool": "tool_output", "output": "tool_output", "call": "tool_call",
            "description": "tool_description"}
METHODS = ("delete", "mask")
SCORES = ("logprob", "prob", "accuracy", "choice", "choice_accuracy")
CHOICE_SCORES = ("choice", "choice_accuracy")


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

    def __init__(self, *segments: Any, answer: str | None = None, choices: Any = None, decoder: Any = None) -> None:
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
        if choices is not None:
            choices = list(choices)
            if not choices or not all(isinstance(c, str) and c.strip() for c in choices):
                raise InterpError("choices must be the answers the model may choose from", expected="a non-empty "
                                  "list of strings (e.g. the listed tools' names)", seen=repr(choices)[:60],
                                  fix="pass choices=['t1', 't3', 't5']")
            if answer is not None and answer not in choices:
                raise InterpError("the answer is not among the choices", expected=f"one of {choices}",
                                  seen=repr(answer), fix="add the answer to choices=")
        self.choices: list[str] | None = choices
        if decoder is None:
            self.decoder: tuple[Segment, ...] = ()
        elif isinstance(decoder, str):
            self.decoder = (Segment("text", decoder),)
        elif isinstance(decoder, (Segment, tuple)) and not (isinstance(decoder, tuple) and decoder and
                                                             isinstance(decoder[0], (Segment, list, tuple))):
            self.decoder = (_segment(decoder),)
        else:
            self.decoder = tuple(_segment(d) for d in decoder)
        self._decoder_ids: list[int] = []
        self._choice_ids: list[int] | None = None
        self._ids: list[int] | None = None
        self._spans: tuple[Span, ...] | None = None
        self._answer_ids: list[int] | None = None

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
        out.decoder, out._decoder_ids = (), []
        out._ids = ids_l
        out._spans = _number(raw)
        return out

    def encode(self, subject: Subject) -> tuple[list[int], tuple[Span, ...], list[int]]:
        """Token ids of the prompt, each segment's span, and the answer's ids (tokenised once, memoised)."""
        if self.decoder and not subject.encoder_decoder:
            raise InterpError("this prompt has a decoder side, and the model has one stack",
                              expected="decoder= only for an encoder-decoder model (T5, BART)",
                              seen=f"a {'decoder-only' if subject.causal else 'encoder-only'} "
                                   f"{subject.adapter_spec.name} model",
                              fix="put the text in the prompt's segments, before the answer")
        if self._ids is None or self._spans is None:
            if subject.encoder_decoder:  # the segments are the encoder's input; the answer the decoder's output
                self._ids, self._spans, _ = _encode(subject, self.segments, None)
                if self.answer is not None:
                    self._answer_ids = subject._tokenize([self.answer], "answer", special=False)[0]
                if self.decoder:
                    self._decoder_ids = _encode(subject, self.decoder, None)[0]
            else:
                self._ids, self._spans, self._answer_ids = _encode(subject, self.segments, self.answer)
        if not self._answer_ids:
            raise InterpError("this prompt has no answer", expected="Prompt(..., answer='...')", seen="answer=None",
                              fix="give the continuation the claim is about")
        return self._ids, self._spans, self._answer_ids

    def choice_ids(self, subject: Subject) -> list[int]:
        """One token id per choice (as the answer would be tokenised after the prompt); an InterpError for a
        prompt without choices, a choice of several tokens, or a choice that is not written in the prompt (a
        choice metric compares the options the prompt offers)."""
        if self._choice_ids is not None:
            return self._choice_ids
        if not self.choices:
            raise InterpError("a choice metric needs the prompt's choices", expected="Prompt(..., answer=..., "
                              "choices=[the options the prompt lists])", seen="choices=None",
                              fix="pass choices=, or use metric='logprob'")
        ids, _, _ = self.encode(subject)
        out = []
        for c in self.choices:
            got = (subject._tokenize([c], "choice", special=False)[0] if subject.encoder_decoder else
                   _encode(subject, self.segments, c)[2])
            if len(got) != 1:
                raise InterpError(f"choice {c!r} is {len(got)} tokens", expected="one-token choices",
                                  seen=f"{got}", fix="name options with one-token names, or use metric='logprob'")
            body = subject._tokenize([c], "choice", special=False)[0]
            if not any(ids[i:i + len(body)] == body for i in range(len(ids) - len(body) + 1)) and got[0] not in ids:
                raise InterpError(f"choice {c!r} is not in the prompt", expected="choices the prompt lists (e.g. the "
                                  "names of the tools it describes)", seen=f"no {c!r} in the prompt's tokens",
                                  fix="list that option in the prompt, or drop it from choices=")
            out.append(got[0])
        self._choice_ids = out
        return out

    @property
    def decoder_ids(self) -> list[int]:
        """The decoder's input after its start token (encoder-decoder models; empty unless ``decoder=``)."""
        return self._decoder_ids

    def on_encoder(self, which: Any, default_kind: str, where: str) -> None:
        """An InterpError when ``which`` names a segment of the decoder side: segment edits change the encoder's
        input, which the decoder reads through cross-attention."""
        if not self.decoder:
            return
        kind, key = default_kind, which
        if isinstance(which, tuple) and len(which) == 2:
            kind, key = str(_ALIASES.get(which[0], which[0])), which[1]
        named = isinstance(key, str) and any(d.name == key for d in self.decoder) and \
            not any(s.name == key for s in self.segments)
        kinded = not isinstance(key, str) and any(d.kind == kind for d in self.decoder) and \
            not any(s.kind == kind for s in self.segments)
        if named or kinded:
            raise InterpError(f"{where}: {kind if kinded else repr(key)} is a segment of the decoder side",
                              expected="a segment of the encoder's input (documents, question): segment edits "
                                       "change what the decoder reads through cross-attention",
                              seen=f"decoder segments {[d.kind + (' ' + d.name if d.name else '') for d in self.decoder]}",
                              fix="put passages the answer may rely on in the prompt's segments (the encoder side)")

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


def _encode(subject: Subject, segments: tuple[Segment, ...], answer: str | None
            ) -> tuple[list[int], tuple[Span, ...], list[int]]:
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

def as_prompts(prompts: Any) -> list[Prompt]:
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
        kind, key = str(_ALIASES.get(which[0], which[0])), which[1]
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


def per_prompt(which: Any, n: int) -> list[Any]:
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
    """One edited prompt: ids, which positions attention must skip, the answer ids, and (for choice metrics) the
    ids of the options the answer is chosen among."""

    ids: list[int]
    hidden: list[int]
    answer: list[int]
    choices: list[int] | None = None
    decoder: list[int] | None = None  # an encoder-decoder model's decoder input after its start token


def edit_prompt(ids: list[int], spans: tuple[Span, ...], answer: list[int], drop: list[Span], method: str,
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


def score_variants(subject: Subject, variants: list[Variant], metric: str = "logprob") -> np.ndarray:
    """The answer's score under each variant (teacher-forced over the answer's tokens); runs equal lengths
    together. ``logprob``: summed log-probability; ``prob``: its exp; ``accuracy``: 1 if every answer token is
    the argmax; ``choice``: the answer's log-probability renormalised over the prompt's choices (one token each);
    ``choice_accuracy``: 1 if the answer is the most likely choice."""
    if metric not in SCORES:
        raise InterpError(f"unknown answer metric {metric!r}", expected=f"one of {', '.join(SCORES)}",
                          seen=repr(metric), fix="e.g. metric='accuracy'")
    if metric in CHOICE_SCORES and any(v.choices is None for v in variants):
        raise InterpError(f"metric {metric!r} needs each prompt's choices", expected="prompts built with choices=",
                          seen="a prompt without choices", fix="pass choices= to pi.Prompt")

    def parts() -> dict[str, Any]:
        text = json.dumps([[v.ids, v.hidden, v.answer, v.choices] + ([v.decoder] if v.decoder else [])
                           for v in variants])
        return {"model": subject.fingerprint, "kind": "answer score", "metric": metric,
                "variants": hashlib.sha256(text.encode()).hexdigest(), "dtype": subject.dtype_key,
                "device": str(subject.device), "attn": subject.attn_implementation,
                "batch_size": settings().batch_size}

    got = current().scores(parts, lambda: torch.as_tensor(_run_variants(subject, variants, metric)),
                           rows=len(variants))
    return got.double().numpy()


def _run_variants(subject: Subject, variants: list[Variant], metric: str) -> np.ndarray:
    """Teacher-forced runs of every variant: a causal model reads prompt + answer in one sequence; an
    encoder-decoder model's encoder reads the prompt and its decoder ``start + decoder prefix + answer``."""
    out = np.zeros(len(variants))
    groups: dict[tuple[int, int], list[int]] = {}
    encdec = subject.encoder_decoder
    for i, v in enumerate(variants):
        key = (len(v.ids), len(v.decoder or []) + len(v.answer)) if encdec else (len(v.ids) + len(v.answer), 0)
        groups.setdefault(key, []).append(i)
    bs = settings().batch_size
    for (length, dec_len), members in groups.items():
        for j in range(0, len(members), bs):
            rows = members[j:j + bs]
            seqs = [variants[i].ids if encdec else variants[i].ids + variants[i].answer for i in rows]
            full = subject.tokens(seqs, name="prompt")
            mask = torch.ones_like(full)
            for r, i in enumerate(rows):
                if variants[i].hidden:
                    mask[r, variants[i].hidden] = 0
            if encdec:
                dec = subject.tokens([[subject.decoder_start_id] + (variants[i].decoder or []) + variants[i].answer
                                      for i in rows], name="decoder input")
                got = logits(subject, full, what="prompt run", attention_mask=mask, decoder_input_ids=dec)
                end, targets = dec_len + 1, dec
            else:
                pos = torch.arange(length, device=full.device)[None].expand(len(rows), -1)
                got = logits(subject, full, what="prompt run", attention_mask=mask, position_ids=pos)
                end, targets = length, full
            for r, i in enumerate(rows):
                a = len(variants[i].answer)
                lg = got[r, end - a - 1:end - 1].float()
                tgt = targets[r, end - a:]
                if metric in CHOICE_SCORES:
                    ch = torch.as_tensor(variants[i].choices, device=lg.device)
                    lp_c = torch.log_softmax(lg[0, ch], -1)  # over the options only
                    mine = int((ch == tgt[0]).nonzero()[0]) if a == 1 else -1
                    out[i] = float(lp_c.argmax() == mine) if metric == "choice_accuracy" else float(lp_c[mine])
                elif metric == "accuracy":
                    out[i] = float((lg.argmax(-1) == tgt).all())
                else:
                    lp = float(torch.log_softmax(lg, -1).gather(-1, tgt[:, None]).sum())
                    out[i] = lp if metric == "logprob" else float(np.exp(lp))
    return out
