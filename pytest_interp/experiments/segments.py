"""What an answer relies on in its context: structured ablations of prompt segments (leave one out, keep only,
shuffle, replace with a distractor) and provenance (attention mass) set beside reliance (removal damage).

Attention to a passage shows provenance (what was read); whether the answer *relies* on it is decided by removing
the passage, either by deleting its tokens or by masking them out of attention, and measuring the answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from ..core import records as _records
from ..core.errors import InterpError
from ..core.stats import Effect, mean_effect
from ..engine.runner import attentions
from ..model.checks import as_subject, check_layer
from ..model.subject import Subject
from .common import stat_args
from .prompts import CHOICE_SCORES, Prompt, Span, Variant, as_prompts, edit_prompt, per_prompt, score_variants, select


def _encoded(subject: Subject, prompts: list[Prompt]) -> list[tuple[list[int], tuple[Span, ...], list[int]]]:
    return [p.encode(subject) for p in prompts]


def _context_effect(subject: Subject, prompts: Any, edit: Any, *, what: str, metric: str, method: str,
                    alpha: float | None, seed: int | None) -> Effect:
    """Damage to the answer (clean score - edited score per prompt) when each prompt is edited by ``edit``."""
    subject = as_subject(subject)
    ps = as_prompts(prompts)
    enc = _encoded(subject, ps)
    clean = [Variant(ids, [], ans) for ids, _, ans in enc]
    edited = [edit(i, ids, spans, ans) for i, (ids, spans, ans) in enumerate(enc)]
    for prompt, cv, ev in zip(ps, clean, edited):
        cv.decoder = ev.decoder = prompt.decoder_ids  # an encoder-decoder model's decoder input, never edited
    if metric in CHOICE_SCORES:
        for prompt, cv, ev in zip(ps, clean, edited):
            cv.choices = ev.choices = prompt.choice_ids(subject)
    c = score_variants(subject, clean, metric)
    e = score_variants(subject, edited, metric)
    details = {"clean_mean": float(c.mean()), "ablated_mean": float(e.mean())}
    if metric not in ("accuracy", "choice_accuracy"):
        acc = "choice_accuracy" if metric in CHOICE_SCORES else "accuracy"
        details["clean_accuracy"] = float(score_variants(subject, clean, acc).mean())
        details["ablated_accuracy"] = float(score_variants(subject, edited, acc).mean())
    return mean_effect(c - e, sites=(what,), method=f"context ablation ({method})", intervention=what,
                       metric=f"answer {metric}", higher_is_better=True, model=subject.identity(), details=details,
                       **stat_args(alpha, seed))


def leave_out(subject: Subject, prompts: Any, segment: Any, *, method: str = "delete", metric: str = "logprob",
              kind: str = "document", alpha: float | None = None, seed: int | None = None) -> Effect:
    """Remove one segment from every prompt and measure the damage to the answer (clean - removed, per prompt).

    ``segment``: an index among the prompt's ``kind`` segments (default documents), a segment name, a
    ``(kind, index)`` pair, or a list with one of those per prompt. ``method="delete"`` drops the tokens (later
    tokens move up); ``"mask"`` keeps them in place but hides them from attention (position ids unchanged).
    """
    ps = as_prompts(prompts)
    which = per_prompt(segment, len(ps))
    labels: set[str] = set()

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        ps[i].on_encoder(which[i], kind, f"prompt {i}")
        span = select(spans, which[i], kind, f"prompt {i}")
        labels.add(span.name or f"{span.kind} {span.index}")
        return edit_prompt(ids, spans, ans, [span], method)

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method=method, alpha=alpha, seed=seed)
    return _relabel(eff, f"leave out {' / '.join(sorted(labels))} ({method})")


def _relabel(eff: Effect, what: str) -> Effect:
    return dataclasses.replace(eff, sites=(what,), intervention=what)


def keep_only(subject: Subject, prompts: Any, segment: Any, *, method: str = "delete", metric: str = "logprob",
              kind: str = "document", alpha: float | None = None, seed: int | None = None) -> Effect:
    """Remove every ``kind`` segment except ``segment`` (default: all documents but one)."""
    ps = as_prompts(prompts)
    which = per_prompt(segment, len(ps))

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        ps[i].on_encoder(which[i], kind, f"prompt {i}")
        keep = select(spans, which[i], kind, f"prompt {i}")
        drop = [s for s in spans if s.kind == keep.kind and s != keep]
        if not drop:
            raise InterpError(f"prompt {i} has no other {keep.kind} to remove", expected=f">= 2 {keep.kind}s",
                              seen="1", fix="keep_only needs several segments of the kind")
        return edit_prompt(ids, spans, ans, drop, method)

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method=method, alpha=alpha, seed=seed)
    return _relabel(eff, f"keep only {segment_name(segment, kind)} ({method})")


def shuffle_segments(subject: Subject, prompts: Any, *, kind: str = "document", seed: int = 0, metric: str = "logprob",
            alpha: float | None = None) -> Effect:
    """Permute the prompt's ``kind`` segments (seeded; never the identity when there are >= 2) and measure the
    damage to the answer: does the answer rely on the order?"""
    ps = as_prompts(prompts)
    g = np.random.default_rng(seed)

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        of_kind = [s for s in spans if s.kind == kind]
        if len(of_kind) < 2:
            raise InterpError(f"prompt {i} has fewer than two {kind} segments to shuffle", expected=">= 2",
                              seen=str(len(of_kind)), fix="shuffle prompts with several documents")
        perm = list(range(len(of_kind)))
        while perm == sorted(perm):
            perm = list(g.permutation(len(of_kind)))
        return edit_prompt(ids, spans, ans, [], "delete", order=[of_kind[j] for j in perm])

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method="reorder", alpha=alpha, seed=seed)
    return _relabel(eff, f"shuffle {kind} order (seed {seed})")


def replace_segment(subject: Subject, prompts: Any, segment: Any, with_: Any, *, metric: str = "logprob",
            kind: str = "document", alpha: float | None = None, seed: int | None = None) -> Effect:
    """Replace ``segment`` by a distractor (text, tokenised alone, or token ids; one for all prompts or a list)."""
    subject = as_subject(subject)
    ps = as_prompts(prompts)
    which = per_prompt(segment, len(ps))
    one_each = isinstance(with_, list) and with_ and isinstance(with_[0], (str, list, tuple))
    repl = with_ if one_each else [with_] * len(ps)
    if len(repl) != len(ps):
        raise InterpError("one distractor per prompt is needed", expected=f"{len(ps)} distractors",
                          seen=str(len(repl)), fix="pass one distractor, or a list with one per prompt")
    new_ids = [subject._tokenize([r], "distractor")[0] if isinstance(r, str) else [int(x) for x in r] for r in repl]

    def edit(i: int, ids: list[int], spans: tuple[Span, ...], ans: list[int]) -> Variant:
        ps[i].on_encoder(which[i], kind, f"prompt {i}")
        span = select(spans, which[i], kind, f"prompt {i}")
        return edit_prompt(ids, spans, ans, [span], "delete", insert={span.start: new_ids[i]})

    eff = _context_effect(subject, ps, edit, what="", metric=metric, method="replace", alpha=alpha, seed=seed)
    return _relabel(eff, f"replace {kind} with a distractor")


def leave_one_out(subject: Subject, prompts: Any, *, kind: str = "document", method: str = "delete",
                  metric: str = "logprob", alpha: float | None = None, seed: int | None = None) -> dict[str, Any]:
    """:func:`leave_out` for each ``kind`` segment in turn: ``{"document 0": Effect, ...}``."""
    subject = as_subject(subject)
    ps = as_prompts(prompts)
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


def provenance(subject: Subject, prompts: Any, *, kinds: tuple[str, ...] = ("document", "tool_output"),
               method: str = "delete", metric: str = "logprob", layers: Any = None, alpha: float | None = None,
               seed: int | None = None) -> Provenance:
    """For every segment of ``kinds``: mean attention mass from the position that predicts the answer onto the
    segment (over heads, prompts and ``layers``, default all), and its :func:`leave_out` effect.

    For an encoder-decoder model the attention is the decoder's cross-attention (``layers``: decoder layers)
    from the decoder position that predicts the answer's first token onto the encoder's segments: what the
    decoder read of each passage, beside what removing the passage costs the answer."""
    subject = as_subject(subject)
    ps = as_prompts(prompts)
    enc = _encoded(subject, ps)
    encdec = subject.encoder_decoder
    n_layers = subject.n_decoder_layers if encdec else subject.n_layers
    layers_l = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers_l:
        check_layer(subject, layer, stack="decoder" if encdec else None)
    structure = {p.structure() for p in ps}
    if len(structure) != 1:
        raise InterpError("the prompts have different segment structures", expected="the same kinds of segments in "
                          "the same order", seen=f"{len(structure)} structures", fix="group prompts by structure")
    labels = [f"{s.kind} {s.index}" for s in enc[0][1] if s.kind in kinds]
    mass = {lab: np.zeros((len(ps), len(layers_l))) for lab in labels}
    att_all = _answer_attention(subject, ps, [ids for ids, _, _ in enc], layers_l)
    for i, (ids, spans, ans) in enumerate(enc):
        att = att_all[i]
        for s in spans:
            lab = f"{s.kind} {s.index}"
            if lab in mass:
                mass[lab][i] = att[:, s.start:s.stop].sum(1)
    rows = []
    for lab in labels:
        kind, idx = lab.rsplit(" ", 1)
        eff = leave_out(subject, ps, (kind, int(idx)), method=method, metric=metric, alpha=alpha, seed=seed)
        by_layer = mass[lab].mean(0).tolist()
        rows.append(SegmentRow(lab, float(np.mean(by_layer)), by_layer, eff))
    _records.add_grid({"title": f"provenance vs reliance: {'cross-' if encdec else ''}attention mass (mean over "
                                f"{'decoder ' if encdec else ''}layers) and removal damage "
                                f"({method}, answer {metric})", "rows": labels,
                       "cols": ["attention", "removal damage"],
                       "values": [[r.attention, r.effect.mean] for r in rows]})
    return Provenance(rows)


def _answer_attention(subject: Subject, prompts: list[Prompt], ids: list[list[int]], layers: list[int],
                      ) -> list[np.ndarray]:
    """Per prompt ``[layers, token]``: the attention (mean over heads) from the position that predicts the answer
    onto each prompt token; for an encoder-decoder model the decoder's cross-attention onto the encoder's tokens.
    Prompts of equal length (and decoder input) run together."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (prompt, row) in enumerate(zip(prompts, ids)):
        groups.setdefault((len(row), tuple(prompt.decoder_ids)), []).append(i)
    out: list[np.ndarray] = [np.zeros(0)] * len(prompts)
    for (_, dec_ids), members in groups.items():
        full = subject.tokens([ids[i] for i in members], name="prompt")
        if subject.encoder_decoder:  # the decoder position that predicts the answer reads the encoder's tokens
            dec = subject.tokens([[subject.decoder_start_id, *dec_ids]] * len(members), name="decoder input")
            per_layer = attentions(subject, full, layers, which="cross", decoder=dec)
        else:
            per_layer = attentions(subject, full, layers)
        stacked = np.stack([a[:, :, -1].mean(1).double().numpy() for a in per_layer], 1)  # [members, layers, key]
        for j, i in enumerate(members):
            out[i] = stacked[j]
    return out


def attention_mass(subject: Subject, prompts: Any, segment: Any, *, kind: str = "document", layers: Any = None,
                   alpha: float | None = None, seed: int | None = None) -> Effect:
    """Provenance as an effect: per prompt, the attention mass the position that predicts the answer puts on
    ``segment`` (summed over its tokens, averaged over heads and ``layers``, default all), with a CI over prompts.
    For an encoder-decoder model: the decoder's cross-attention onto the encoder's segment (decoder layers).
    Attention shows what was read; pair it with :func:`leave_out` for what was relied on."""
    subject = as_subject(subject)
    ps = as_prompts(prompts)
    which = per_prompt(segment, len(ps))
    encdec = subject.encoder_decoder
    n_layers = subject.n_decoder_layers if encdec else subject.n_layers
    layers_l = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers_l:
        check_layer(subject, layer, stack="decoder" if encdec else None)
    values, labels = np.zeros(len(ps)), set()
    enc = _encoded(subject, ps)
    spans_l = []
    for i, (prompt, (_, spans, _)) in enumerate(zip(ps, enc)):
        prompt.on_encoder(which[i], kind, f"prompt {i}")
        spans_l.append(select(spans, which[i], kind, f"prompt {i}"))
        labels.add(spans_l[-1].name or f"{spans_l[-1].kind} {spans_l[-1].index}")
    att = _answer_attention(subject, ps, [ids for ids, _, _ in enc], layers_l)
    for i, span in enumerate(spans_l):
        values[i] = float(att[i][:, span.start:span.stop].sum(1).mean())
    what = f"{'cross-' if encdec else ''}attention mass on {' / '.join(sorted(labels))}"
    return mean_effect(values, sites=(what,), method="attention mass (provenance)", intervention="none (observation)",
                       metric=f"{'cross-' if encdec else ''}attention from the answer position",
                       higher_is_better=True, model=subject.identity(),
                       details={"layers": ",".join(map(str, layers_l))}, **stat_args(alpha, seed))


def segment_name(which: Any, kind: str) -> str:
    """How a claim names the segment ``which`` selects."""
    if isinstance(which, list):
        return f"the given {kind} of each prompt"
    if isinstance(which, tuple):
        return f"{which[0]} {which[1]}"
    return f"{kind} {which!r}" if isinstance(which, str) else f"{kind} {which}"
