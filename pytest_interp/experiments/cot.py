"""Chain-of-thought faithfulness (Lanham et al. 2023): does the answer depend on the written chain?

A :class:`Chain` is a question, the chain's steps and the cue after which the answer comes (``"="``,
``"Answer:"``). The answer is read greedily (the argmax) at the cue's last token; the full chain's answer is the
reference. Each test edits the chain and measures, per prompt, whether the answer changes (a rate, Wilson
interval) and how much log-probability the full chain's answer loses (a mean, bootstrap-t interval):

* ``early``: the chain cut after ``k`` steps (each k from 0 to its length - 1 unless ``k=`` is given), then the cue;
* ``mistake``: step ``step`` replaced (``corrupt(chain) -> steps``, by default another step value drawn from the
  other prompts' steps at that place, seeded), the rest kept;
* ``filler``: every token of the chain replaced by ``filler`` (the same number of tokens);
* ``patch``: the residual stream at the chain's positions (entering every layer, or ``layers=``) taken from a run
  of the same question with another chain (``source=``: chains of the same token length); ``follows`` is the rate
  at which the answer becomes the source run's own answer, over the prompts where that differs from the clean
  answer (None when fewer than two do). Patching the stream entering layer 0 is replacing the chain's tokens.

A model whose answer is computed from the chain changes its answer under these edits; a model whose chain is
decorative does not. The chains are given (teacher forcing); ``pi.cot_chains`` writes the model's own chains
greedily.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..core.batch import pad
from ..core.errors import InterpError
from ..core.sites import resid
from ..core.stats import Effect, mean_effect, wilson_interval
from ..engine.hooks import Edit
from ..engine.runner import check_edits, chunks, intervened_logits, logits
from ..model.checks import as_subject, one_stack
from ..model.subject import Subject
from .common import stat_args
from .editing import rate_p_value

TESTS = ("early", "mistake", "filler", "patch")


@dataclass(frozen=True)
class Chain:
    """A question, the chain's steps (each one or more tokens) and the cue after which the answer comes."""

    question: str
    steps: tuple[str, ...]
    cue: str

    def __init__(self, question: str, steps: Any, cue: str) -> None:
        steps_t = tuple(steps)
        for name, value in (("question", question), ("cue", cue)):
            if not isinstance(value, str) or not value.strip():
                raise InterpError(f"a chain's {name} is empty", expected="text", seen=repr(value)[:60],
                                  fix=f"give the {name} as it appears in the prompt")
        if not steps_t:
            raise InterpError("the chain is empty", expected="at least one step", seen="steps=()",
                              fix="give the chain the model wrote, one string per step")
        if not all(isinstance(s, str) and s.strip() for s in steps_t):
            raise InterpError("a chain step is empty or not text", expected="non-empty strings",
                              seen=repr(steps_t)[:80], fix="one string per step")
        object.__setattr__(self, "question", question)
        object.__setattr__(self, "steps", steps_t)
        object.__setattr__(self, "cue", cue)

    def with_steps(self, steps: Any) -> Chain:
        return Chain(self.question, steps, self.cue)


def _ids(subject: Subject, text: str, first: bool) -> list[int]:
    return subject._tokenize([text if first else " " + text], "chain text", special=False)[0]


def encode(subject: Subject, chain: Chain, steps: tuple[str, ...] | None = None,
           filler: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of question + steps + cue, and the positions of the chain's tokens."""
    ids = _ids(subject, chain.question, True)
    where: list[int] = []
    for s in chain.steps if steps is None else steps:
        got = _ids(subject, s, False)
        if filler is not None:
            got = _ids(subject, " ".join([filler] * len(got)), False)
        where += list(range(len(ids), len(ids) + len(got)))
        ids += got
    return ids + _ids(subject, chain.cue, False), where


@dataclass
class CoT:
    """One test's outcome: ``changed`` (rate of answers that differ from the full chain's), ``drop`` (log-prob
    of the full chain's answer lost), ``follows`` (patch: rate of answers equal to the source chain's answer);
    ``per_k`` (early answering: the change rate after each number of steps kept)."""

    test: str
    changed: Effect
    drop: Effect
    follows: Effect | None = None
    per_k: dict[int, Effect] = field(default_factory=dict)
    accuracy: float | None = None


def _read(last_logits: torch.Tensor, choices: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities over the vocabulary, or over ``choices`` only (renormalised; -inf elsewhere)."""
    if choices is None:
        return torch.log_softmax(last_logits.float(), -1)
    out = torch.full_like(last_logits, float("-inf"), dtype=torch.float32)
    c = choices.to(last_logits.device)
    out[:, c] = torch.log_softmax(last_logits[:, c].float(), -1)
    return out


def _answers_and_logp(subject: Subject, rows: list[list[int]], answers: torch.Tensor | None,
                      choices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy answer at each row's last token (among ``choices`` if given), and the log-prob there of
    ``answers`` (or of its own argmax)."""
    toks = pad(rows)
    lens = torch.tensor([len(r) for r in rows])
    lg = logits(subject, toks, what="chain-of-thought run")
    last = _read(lg[torch.arange(len(rows)), (lens - 1).to(lg.device)], choices)
    arg = last.argmax(-1)
    ref = arg if answers is None else answers.to(last.device)
    return arg.cpu(), last.gather(-1, ref[:, None])[:, 0].cpu(), last.cpu()


def _rate(values: np.ndarray, what: str, st: dict[str, Any], model: dict[str, Any], test: str) -> Effect:
    return Effect(mean=float(values.mean()), ci=wilson_interval(values, st["alpha"]), n=int(values.size),
                  p_value=rate_p_value(values, 0.5), values=values, method=f"chain of thought: {test}",
                  intervention=f"chain edit ({test})", metric=what, higher_is_better=True, seed=st["seed"],
                  alpha=st["alpha"], n_boot=0, model=model, ci_method="Wilson score interval",
                  details={"decoding": "greedy answer at the cue (chains given)"})


def cot(subject: Subject, chains: list[Chain], *, test: str, k: int | None = None, step: int = 0,
        corrupt: Callable[[Chain], Any] | None = None, filler: str | None = None, source: list[Chain] | None = None,
        layers: list[int] | None = None, choices: Any = None, alpha: float | None = None,
        seed: int | None = None) -> CoT:
    """Run one chain-of-thought test (``early``, ``mistake``, ``filler`` or ``patch``; see the module
    docstring) on ``chains`` and return how often, and how much, the answer moved.

    ``choices``: the answers the model may give (strings or ids); the answer is then the most likely of them and
    its log-probability is renormalised over them, as a multiple-choice reading of a forced answer. Without it
    the answer is the argmax over the vocabulary, so a model that, cut short, predicts more chain or the cue
    again counts as a changed answer."""
    subject = as_subject(subject)
    one_stack(subject, "chain-of-thought tests")
    st = stat_args(alpha, seed)
    if test not in TESTS:
        raise InterpError(f"unknown chain-of-thought test {test!r}", expected=f"one of {', '.join(TESTS)}",
                          seen=repr(test), fix="e.g. test='early'")
    chains = list(chains)
    if not chains or not all(isinstance(c, Chain) for c in chains):
        raise InterpError("chains must be pi.Chain objects", expected="a non-empty list of pi.Chain",
                          seen=type(chains[0]).__name__ if chains else "[]", fix="pi.Chain(question, steps, cue)")
    full = [encode(subject, c) for c in chains]
    ch = None if choices is None else subject.token_ids(list(choices), name="choices").reshape(-1)
    ans, ref_lp, _ = _answers_and_logp(subject, [ids for ids, _ in full], None, ch)
    model = subject.identity()
    changed: list[float] = []
    drops: list[float] = []
    follows: list[float] | None = None
    per_k: dict[int, Effect] = {}
    if test == "early":
        lens = {len(c.steps) for c in chains}
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < min(lens)):
            raise InterpError(f"truncation point k={k!r} is not inside every chain", expected=f"0 <= k < "
                              f"{min(lens)} (the shortest chain's steps; k = its length is the full chain)",
                              seen=repr(k), fix="truncate earlier")
        ks = [k] if k is not None else list(range(min(lens)))
        per_prompt_c = np.zeros((len(chains), len(ks)))
        per_prompt_d = np.zeros((len(chains), len(ks)))
        for j, kk in enumerate(ks):
            rows = [encode(subject, c, c.steps[:kk])[0] if kk else
                    _ids(subject, c.question, True) + _ids(subject, c.cue, False) for c in chains]
            got, lp, _ = _answers_and_logp(subject, rows, ans, ch)
            per_prompt_c[:, j] = (got != ans).float().numpy()
            per_prompt_d[:, j] = (ref_lp - lp).numpy()
            per_k[kk] = _rate(per_prompt_c[:, j], f"answer changed, chain cut after {kk} step(s)", st, model, test)
        changed, drops = list(per_prompt_c.mean(1)), list(per_prompt_d.mean(1))
    elif test in ("mistake", "filler"):
        if test == "filler":
            if not isinstance(filler, str) or not filler.strip():
                raise InterpError("the filler test needs a filler token", expected="filler='...' (one token the "
                                  "model knows, e.g. '...' or '_')", seen=repr(filler), fix="pass filler=")
            rows = [encode(subject, c, filler=filler)[0] for c in chains]
        else:
            bad = [i for i, c in enumerate(chains) if not 0 <= step < len(c.steps)]
            if bad:
                raise InterpError(f"step {step} is past the end of a chain", expected=f"0 <= step < the chain's "
                                  "length", seen=f"chain {bad[0]} has {len(chains[bad[0]].steps)} steps",
                                  fix="corrupt a step every chain has")
            rng = random.Random(st["seed"])
            rows = []
            for i, c in enumerate(chains):
                if corrupt is not None:
                    new = tuple(corrupt(c))
                else:
                    pool = sorted({o.steps[step] for o in chains if step < len(o.steps)} - {c.steps[step]})
                    if not pool:
                        raise InterpError("no other value to put in the step", expected="prompts whose chains "
                                          "differ at that step", seen="one value everywhere",
                                          fix="pass corrupt=fn(chain) -> steps")
                    new = c.steps[:step] + (rng.choice(pool),) + c.steps[step + 1:]
                if new == c.steps:
                    raise InterpError("the corrupted chain equals the original", expected="a changed step",
                                      seen=f"chain {i}", fix="make corrupt= change the chain")
                rows.append(encode(subject, c, new)[0])
        got, lp, _ = _answers_and_logp(subject, rows, ans, ch)
        changed, drops = list((got != ans).float().numpy()), list((ref_lp - lp).numpy())
    else:
        changed, drops, follows = _patch(subject, chains, source, layers, full, ans, ref_lp, ch)
    chg = np.asarray(changed, dtype=float)
    what = "answer changed" if test != "early" or len(per_k) == 1 else \
        f"answer changed (per prompt, the share of the {len(per_k)} truncation points)"
    changed_e = _rate(chg, what, st, model, test)
    drop_e = mean_effect(np.asarray(drops, dtype=float), method=f"chain of thought: {test}",
                         intervention=f"chain edit ({test})", metric="log p(full chain's answer) lost", model=model,
                         details={"decoding": "greedy answer at the cue (chains given)"}, **st)
    fol = None if follows is None or len(follows) < 2 else _rate(
        np.asarray(follows), "answer follows the source chain (prompts whose source answer differs)", st, model, test)
    return CoT(test, changed_e, drop_e, fol, per_k)


def _patch(subject: Subject, chains: list[Chain], source: list[Chain] | None, layers: list[int] | None,
           full: list[tuple[list[int], list[int]]], ans: torch.Tensor, ref_lp: torch.Tensor,
           choices: torch.Tensor | None) -> tuple[list[float], list[float], list[float]]:
    if source is None or len(source) != len(chains):
        raise InterpError("the patch test needs one source chain per prompt", expected=f"source= {len(chains)} "
                          "pi.Chain (same question, another chain)", seen="none" if source is None else
                          f"{len(source)}", fix="e.g. the chains with a mistake in step 0")
    src = [encode(subject, c) for c in source]
    for i, ((a, wa), (b, wb)) in enumerate(zip(full, src)):
        if len(a) != len(b) or wa != wb:
            raise InterpError("a source chain has another token layout", expected="the same question and chain "
                              "token positions", seen=f"prompt {i}: {len(a)} vs {len(b)} tokens",
                              fix="use source chains with steps of the same token length")
    layers_l = list(range(subject.n_layers)) if layers is None else list(layers)
    rows = [ids for ids, _ in full]
    toks, stoks = pad(rows), pad([ids for ids, _ in src])
    n, t = toks.shape
    mask = torch.zeros(n, t, dtype=torch.bool)
    for i, (_, where) in enumerate(full):
        mask[i, where] = True
    from ..engine.runner import capture

    sites = [resid(layer) for layer in layers_l]
    src_acts = capture(subject, stoks, sites)
    s_ans, _, _ = _answers_and_logp(subject, [ids for ids, _ in src], None, choices)
    lens = torch.tensor([len(r) for r in rows])
    got, lps = [], []
    def taken(site: Any) -> Callable[[Any, torch.Tensor], Any]:
        return lambda act, r: src_acts[site][r].to(act.dtype)
    for chunk in chunks(n):
        edits = [Edit(s.at(mask.numpy()), taken(s), False, "chain patch") for s in sites]
        lg = intervened_logits(subject, toks[chunk], chunk, edits, n, what="chain patch")
        check_edits(edits)
        last = _read(lg[torch.arange(len(chunk)), (lens[chunk] - 1).to(lg.device)], choices)
        got.append(last.argmax(-1).cpu())
        lps.append(last.gather(-1, ans[chunk][:, None].to(last.device))[:, 0].cpu())
    g, lp = torch.cat(got), torch.cat(lps)
    differ = s_ans != ans  # only where the source chain leads elsewhere can the answer follow it
    return list((g != ans).float().numpy()), list((ref_lp - lp).numpy()), list((g == s_ans)[differ].float().numpy())


def cot_chains(subject: Subject, questions: list[str], *, steps: int, cue: str, step_tokens: int = 1) -> list[Chain]:
    """The chains the model writes itself (greedy): ``steps`` steps of ``step_tokens`` tokens after each
    question, then ``cue``."""
    from ..core.decoding import Greedy
    from ..engine.runner import generate

    subject = as_subject(subject)
    one_stack(subject, "chain-of-thought generation")
    toks = subject.tokens(questions, name="questions")
    gen = generate(subject, toks, Greedy(max_new_tokens=steps * step_tokens), [], torch.arange(len(questions)))
    out = []
    tok = subject.tokenizer
    for q, g in zip(questions, gen[:, 0]):
        ids = g.tolist()
        parts = [tok.decode(ids[i * step_tokens:(i + 1) * step_tokens]).strip() for i in range(steps)]
        out.append(Chain(q, parts, cue))
    return out
