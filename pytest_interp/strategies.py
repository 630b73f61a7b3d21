"""Hypothesis strategies for claim inputs: repeated-segment token batches and templated prompts.

Each example hypothesis draws is one batch, and each batch costs the claim's model runs (a clean run plus
one per intervention). Keep ``max_examples`` small (``@settings(max_examples=5, deadline=None)``) and the
batches large enough for a confidence interval: a claim is decided on the batch, not on one sequence.
A failing example shrinks towards shorter segments, earlier offsets and smaller token ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from .core.data import RepeatedTokens, from_segments


@st.composite
def repeated_sequence(draw: Any, vocab_size: int, *, length: int, segment: tuple[int, int] = (4, 20),
                      bos: int | None = 0, low: int = 1) -> tuple[list[int], int, int, int]:
    """One sequence with a segment repeated at a random offset: ``(tokens, p, q, S)``.

    Tokens are drawn from ``low .. vocab_size-1``; position 0 holds ``bos`` unless it is None.
    """
    head = 0 if bos is None else 1
    lo, hi = segment
    hi = min(hi, (length - head) // 2)
    s = draw(st.integers(min(lo, hi), hi))
    p = draw(st.integers(head, length - 2 * s))
    q = draw(st.integers(p + s, length - s))
    toks = draw(st.lists(st.integers(low, vocab_size - 1), min_size=length, max_size=length))
    if bos is not None:
        toks[0] = bos
    toks[q:q + s] = toks[p:p + s]
    return toks, p, q, s


def repeated_batches(vocab_size: int, *, length: int, n: int = 32, segment: tuple[int, int] = (4, 20),
                     bos: int | None = 0, low: int = 1) -> st.SearchStrategy[RepeatedTokens]:
    """Batches of ``n`` repeated-segment sequences (a :class:`pytest_interp.RepeatedTokens`), for ``@given``.

    Hypothesis draws each sequence's segment length and placement, and one seed for the random tokens, so an
    example stays small and a failing one shrinks towards short segments at early offsets.
    """
    head = 0 if bos is None else 1
    lo, hi = segment
    hi = min(hi, (length - head) // 2)

    @st.composite
    def placement(draw: Any) -> tuple[int, int, int]:
        s = draw(st.integers(min(lo, hi), hi))
        p = draw(st.integers(head, length - 2 * s))
        q = draw(st.integers(p + s, length - s))
        return p, q, s

    def build(args: tuple[int, list[tuple[int, int, int]]]) -> RepeatedTokens:
        seed, places = args
        rng = np.random.default_rng(seed)
        seqs = []
        for p, q, s in places:
            toks = rng.integers(low, vocab_size, size=length).tolist()
            if bos is not None:
                toks[0] = bos
            toks[q:q + s] = toks[p:p + s]
            seqs.append(toks)
        return from_segments(seqs, [p for p, _, _ in places], [q for _, q, _ in places], [s for *_, s in places])

    return st.tuples(st.integers(0, 2**32 - 1), st.lists(placement(), min_size=n, max_size=n)).map(build)


def templated_prompts(template: str, **fillers: list[str]) -> st.SearchStrategy[str]:
    """Prompts made by filling ``template`` (``str.format`` fields) with values drawn from ``fillers``.

    >>> s = templated_prompts("When {a} and {b} went to the store, {b} gave a drink to", a=["Mary"], b=["John"])
    >>> s.example()
    'When Mary and John went to the store, John gave a drink to'
    """
    return st.fixed_dictionaries({k: st.sampled_from(v) for k, v in fillers.items()}).map(
        lambda d: template.format(**d))


def prompt_batches(template: str, *, n: int, **fillers: list[str]) -> st.SearchStrategy[list[str]]:
    """Batches of ``n`` templated prompts (fill values drawn per prompt)."""
    return st.lists(templated_prompts(template, **fillers), min_size=n, max_size=n)




# ----------------------------------------------------------------------------------------------------------------
# input families (pi.assert_stable, pi.stability): each example hypothesis draws is one Family, a whole batch
# ----------------------------------------------------------------------------------------------------------------

def _seed(*parts: Any) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def induction_families(vocab_size: int, *, n: int = 64, k: int = 3, segment: tuple[int, int] = (6, 16),
                       prefix: tuple[int, int] = (0, 12), gap: tuple[int, int] = (0, 24), max_len: int = 64,
                       seed: int = 0, bos: int | None = 0, low: int = 1) -> st.SearchStrategy[Any]:
    """Families of induction prompts ``[bos] R1 A R2 A[:k]`` whose answer is ``A[k]``: one family is one layout
    (segment length ``S``, ``P`` random tokens before the segment, ``G`` between its two copies), with fresh
    random filler per layout. Example ``i`` has the same segment ``A_i`` (drawn from ``seed``) in every family,
    so families can be compared token by token (``align``: bos -> 0, first copy ``A[j]`` -> ``1 + j``, second
    copy ``A[j]`` -> ``1 + max S + j``, filler -> -1). Shrinks towards short segments, no prefix and no gap."""
    from .core.family import Family

    s_lo, s_hi = max(segment[0], k + 1), segment[1]
    head = 0 if bos is None else 1
    if s_lo > s_hi or head + s_lo + k > max_len:
        from .core.errors import InterpError
        raise InterpError("no induction layout fits", expected=f"segments of more than k = {k} tokens within "
                          f"{max_len} positions", seen=f"segment={segment}, max_len={max_len}",
                          fix="widen segment= or lower k")
    base = np.random.default_rng(seed).integers(low, vocab_size, size=(n, s_hi))

    @st.composite
    def layout(draw: Any) -> tuple[int, int, int]:
        s = draw(st.integers(s_lo, s_hi))
        room = max_len - head - s - k
        p = draw(st.integers(prefix[0], max(prefix[0], min(prefix[1], room))))
        g = draw(st.integers(gap[0], max(gap[0], min(gap[1], room - p))))
        return s, p, g

    def build(lay: tuple[int, int, int]) -> Family:
        import torch

        s, p, g = lay
        if head + p + s + g + k > max_len:
            from .core.errors import InterpError
            raise InterpError("the induction layout does not fit", expected=f"at most {max_len} tokens",
                              seen=f"S={s}, P={p}, G={g}, k={k}", fix="narrow prefix= or gap=")
        rng = np.random.default_rng(_seed("induction", seed, s, p, g))
        r1, r2 = rng.integers(low, vocab_size, size=(n, p)), rng.integers(low, vocab_size, size=(n, g))
        parts = ([np.full((n, 1), bos)] if bos is not None else []) + [r1, base[:, :s], r2, base[:, :k]]
        toks = np.concatenate(parts, 1)
        row = ([0] if bos is not None else []) + [-1] * p + [1 + j for j in range(s)] + [-1] * g + \
            [1 + s_hi + j for j in range(k)]
        answers = tuple(int(a) for a in base[:, k])
        return Family(torch.as_tensor(toks, dtype=torch.long), f"S={s}, P={p}, G={g}", answers, answers,
                      tuple(tuple(row) for _ in range(n)), (("S", s), ("P", p), ("G", g), ("k", k)))

    return layout().map(build)


def template_families(templates: list[str], *, answer: Any = None, n: int | None = None,
                      filler: tuple[list[str], int, int] | None = None, **fields: list[str]) -> st.SearchStrategy[Any]:
    """Families of templated prompts: one family is one phrasing (``templates[i]``, ``str.format`` fields) applied
    to the same fill-ins (the first ``n`` of every combination of ``fields``, in order), and, if the templates
    have a ``{filler}`` field, one filler length ``m`` in ``filler = (words, lo, hi)`` (the first ``m`` words,
    cycled). ``answer``: the field whose value is the answer, or ``fn(fill_dict) -> answer``. Shrinks towards
    the first template and the shortest filler."""
    import itertools

    from .core.errors import InterpError
    from .core.family import Family

    if not templates or not all(isinstance(t, str) for t in templates):
        raise InterpError("template_families needs templates", expected="a non-empty list of format strings",
                          seen=repr(templates)[:60], fix='e.g. ["{s} lives in", "{s} resides in"]')
    names = sorted(fields)
    combos = [dict(zip(names, vals)) for vals in itertools.product(*(fields[k] for k in names))]
    combos = combos[:n] if n is not None else combos
    if not combos:
        raise InterpError("template_families has no fill-ins", expected="non-empty lists for every field",
                          seen=", ".join(f"{k}: {len(v)}" for k, v in fields.items()) or "no fields",
                          fix="give each field at least one value")
    if isinstance(answer, str) and answer not in fields:
        raise InterpError(f"answer field {answer!r} is not a field", expected=f"one of {names}", seen=repr(answer),
                          fix="name the field whose value is the answer, or pass a function")
    words, lo, hi = filler if filler is not None else ([], 0, 0)

    def build(args: tuple[int, int]) -> Family:
        i, m = args
        fill = " ".join(words[j % len(words)] for j in range(m)) if words else ""
        texts = [" ".join(templates[i].format(**c, filler=fill).split()) for c in combos]
        if answer is None:
            ans = None
        else:
            ans = tuple(c[answer] if isinstance(answer, str) else answer(c) for c in combos)
        label = f"template {i}" + (f", filler {m}" if filler is not None else "")
        return Family(texts, label, ans, None, None, (("template", i), ("filler", m)))

    return st.tuples(st.integers(0, len(templates) - 1), st.integers(lo, hi)).map(build)


def document_families(prompts: list[Any], *, kind: str = "document", reorder: bool = True,
                      distractors: Any = None, max_added: int = 1, choices: int = 4) -> st.SearchStrategy[Any]:
    """Families of segmented prompts (``pi.Prompt``): one family is one order of each prompt's ``kind`` segments
    (the same permutation for every prompt) and, with ``distractors``, up to ``max_added`` distractor segments
    of that kind inserted at a drawn place. ``distractors``: a list of segment texts, or ``fn(prompt, j) ->
    text`` for a distractor made for each prompt (``j`` in ``range(choices)``; make it unable to answer the
    question, e.g. a key the prompt does not ask about). Segment names and answers are kept. Shrinks towards
    the original order and no distractor."""
    from .core.errors import InterpError
    from .core.family import Family
    from .experiments.prompts import Prompt, Segment, as_prompts

    base = as_prompts(prompts)
    kind = Segment(kind, "x").kind
    counts = {sum(s.kind == kind for s in p.segments) for p in base}
    if len(counts) != 1 or 0 in counts:
        raise InterpError(f"document_families needs the same number of {kind} segments in every prompt",
                          expected=f"every prompt with k >= 1 {kind} segments", seen=f"counts {sorted(counts)}",
                          fix="group the prompts by structure")
    m = counts.pop()
    make = distractors if callable(distractors) else None
    pool = [] if make is not None else list(distractors or [])
    n_pool = choices if make is not None else len(pool)
    top = max_added if n_pool else 0

    @st.composite
    def variant(draw: Any) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
        order = tuple(draw(st.permutations(range(m)))) if reorder else tuple(range(m))
        added = draw(st.lists(st.tuples(st.integers(0, n_pool - 1), st.integers(0, m)), max_size=top)) \
            if top else []
        return order, tuple(added)

    def build(v: tuple[tuple[int, ...], tuple[tuple[int, int], ...]]) -> Family:
        order, added = v
        out = []
        for p in base:
            docs = [s for s in p.segments if s.kind == kind]
            new_docs: list[Segment] = [docs[j] for j in order]
            for d, at in added:
                new_docs.insert(min(at, len(new_docs)), Segment(kind, make(p, d) if make is not None else pool[d]))
            it = iter(new_docs)
            segs: list[Segment] = []
            for s in p.segments:
                if s.kind == kind:
                    segs.append(next(it))
                else:
                    segs.append(s)
            rest = list(it)
            if rest:  # extra distractors go after the last document
                last = max(i for i, s in enumerate(segs) if s.kind == kind)
                segs[last + 1:last + 1] = rest
            out.append(Prompt(*segs, answer=p.answer))
        answers = tuple(p.answer for p in base)
        label = f"order {list(order)}" + (f", +{len(added)} distractor(s) at {[a for _, a in added]}" if added else "")
        return Family(out, label, answers, answers, None, (("order", order), ("added", added)))

    return variant().map(build)


def token_families(tokens: Any, answers: Any, *, vocab: Any, keep: Any = None, rate: tuple[float, float] = (0.0, 0.3),
                   answer_of: Any = None, seed: int = 0) -> st.SearchStrategy[Any]:
    """Families of token-level perturbations of ``tokens [n, seq]``: one family replaces a drawn fraction (in
    ``rate``) of every prompt's replaceable tokens (``keep[b, t]`` True: never replaced; position 0 is always
    kept) by tokens drawn from ``vocab`` (ids). ``answer_of(tokens) -> answers`` recomputes the answers of
    perturbed prompts when the task defines them (a family whose answers change is refused by
    :func:`~pytest_interp.assert_stable`); without it the answers are assumed kept. Shrinks towards rate 0."""
    import torch

    from .core.errors import InterpError
    from .core.family import Family

    toks = torch.as_tensor(tokens).long()
    n, t = toks.shape
    keep_m = torch.zeros(n, t, dtype=torch.bool) if keep is None else torch.as_tensor(keep, dtype=torch.bool).clone()
    if keep_m.shape != (n, t):
        raise InterpError("keep has the wrong shape", expected=f"[{n}, {t}]", seen=str(list(keep_m.shape)),
                          fix="one bool per token: True where the token must stay")
    keep_m[:, 0] = True
    ids = torch.as_tensor(list(vocab)).long()
    if ids.numel() == 0:
        raise InterpError("vocab is empty", expected="token ids to substitute", seen="[]", fix="pass vocab=range(1, V)")
    expected = tuple(int(a) if not isinstance(a, str) else a for a in
                     (answers.tolist() if isinstance(answers, torch.Tensor) else list(answers)))
    steps = 20
    lo, hi = (int(round(r * steps)) for r in rate)

    def build(args: tuple[int, int]) -> Family:
        level, s = args
        g = torch.Generator().manual_seed(_seed("tokens", seed, level, s))
        hit = (torch.rand(n, t, generator=g) < level / steps) & ~keep_m
        sub = ids[torch.randint(0, len(ids), (n, t), generator=g)]
        new = torch.where(hit, sub, toks)
        got = expected if answer_of is None else tuple(
            int(a) if not isinstance(a, str) else a for a in
            (lambda r: r.tolist() if isinstance(r, torch.Tensor) else list(r))(answer_of(new)))
        align = tuple(tuple(-1 if bool(hit[b, j]) else j for j in range(t)) for b in range(n))
        return Family(new, f"replace {level / steps:.0%} of tokens (draw {s})", got, expected, align,
                      (("rate", level / steps), ("draw", s)))

    return st.tuples(st.integers(lo, hi), st.integers(0, 3)).map(build)


def rewrite_families(texts: list[str], rewrites: dict[str, Any], *, answers: Any = None) -> st.SearchStrategy[Any]:
    """Families of real text: one family applies one named rewrite (``fn(text) -> text``: a paraphrase, a
    prefix, a change of punctuation or case) to every text. ``answers`` (if the task has them) are kept by every
    rewrite. Shrinks towards the first rewrite (put the identity first)."""
    from .core.errors import InterpError
    from .core.family import Family

    names = list(rewrites)
    if not names or not texts:
        raise InterpError("rewrite_families needs texts and rewrites", expected="non-empty texts and a dict "
                          "name -> fn(text) -> text", seen=f"{len(texts)} texts, {len(names)} rewrites",
                          fix='e.g. {"as written": lambda s: s, "lower case": str.lower}')
    ans = None if answers is None else tuple(answers)

    def build(i: int) -> Family:
        fn = rewrites[names[i]]
        out = [fn(t) for t in texts]
        bad = [j for j, x in enumerate(out) if not isinstance(x, str) or not x.strip()]
        if bad:
            raise InterpError(f"rewrite {names[i]!r} produced an empty or non-text prompt",
                              expected="a non-empty string per text", seen=f"text {bad[0]}: {out[bad[0]]!r}",
                              fix="make the rewrite return the changed text")
        return Family(out, names[i], ans, ans, None, (("rewrite", names[i]),))

    return st.integers(0, len(names) - 1).map(build)


__all__ = ["document_families", "induction_families", "prompt_batches", "repeated_batches", "repeated_sequence",
           "rewrite_families", "template_families", "templated_prompts", "token_families"]
