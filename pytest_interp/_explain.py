"""Attribution methods over input tokens (attention, rollout, gradient x input, integrated gradients), and how
faithful each is to what interventions say matters (leave-one-token-out, comprehensiveness, sufficiency)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._errors import InterpError
from ._settings import settings


@dataclass
class Attribution:
    """Scores over input tokens: ``scores [batch, seq]`` for the prediction at ``position``.

    Attributes:
        method: how the scores were made (``attention``, ``rollout``, ``grad_x_input``, ``integrated_gradients``,
            ``leave_one_out`` or ``given``).
        tokens: the inputs ``[batch, seq]``.
        details: method facts, e.g. integrated gradients' completeness ``delta`` per example.
    """

    scores: np.ndarray
    method: str
    tokens: torch.Tensor
    position: int = -1
    details: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Attribution {self.method} {tuple(self.scores.shape)}>"


def _prepare(subject: Any, inputs: Any, answer: Any, position: int) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    from ._experiments import _subject

    subject = _subject(subject)
    tokens = subject.tokens(inputs)
    n, t = tokens.shape
    if isinstance(position, bool) or not isinstance(position, int) or not -t <= position < t:
        raise InterpError(f"position {position!r} is outside the inputs", expected=f"an int in [-{t}, {t})",
                          seen=f"inputs of {t} tokens", fix="attribute the prediction at a position of the inputs")
    if answer is None:
        return subject, tokens, None
    ans = subject.token_ids(answer)
    if ans.numel() == 1:
        ans = ans.expand(n)
    if ans.numel() != n:
        raise InterpError("one answer per example is needed", expected=f"{n} answers", seen=str(ans.numel()),
                          fix="pass one answer for all examples or one per example")
    return subject, tokens, ans


# --------------------------------------------------------------------------------------------------------------
# attention-based
# --------------------------------------------------------------------------------------------------------------

def _attentions(subject: Any, tokens: torch.Tensor) -> list[torch.Tensor]:
    subject.ensure_eager()
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(subject.n_layers)]
    bs = settings().batch_size
    for i in range(0, tokens.shape[0], bs):
        out = subject.forward(tokens[i:i + bs], output_attentions=True)
        att = getattr(out, "attentions", None)
        if not att:
            raise InterpError("the model returned no attention weights", expected="output_attentions=True to work",
                              seen=f"attn_implementation={subject.attn_implementation}",
                              fix="load with attn_implementation='eager'")
        for layer in range(subject.n_layers):
            per_layer[layer].append(att[layer].float().cpu())
    return [torch.cat(x) for x in per_layer]  # each [n, heads, q, k]


def attention(subject: Any, inputs: Any, *, layer: int | None = None, head: int | None = None,
              position: int = -1) -> Attribution:
    """Raw attention from ``position`` to every token: one head (``layer`` and ``head``), the mean over a
    layer's heads (``layer``), or the mean over all layers and heads (neither)."""
    from ._runner import check_layer

    subject, tokens, _ = _prepare(subject, inputs, None, position)
    if head is not None and layer is None:
        raise InterpError("head= needs layer=", expected="layer= and head= together", seen=f"head={head}",
                          fix="e.g. layer=1, head=0")
    if layer is not None:
        check_layer(subject, layer)
    if head is not None and not 0 <= head < subject.n_heads:
        raise InterpError(f"head {head} is out of range", expected=f"0..{subject.n_heads - 1}", seen=str(head),
                          fix="count heads from 0")
    att = _attentions(subject, tokens)
    rows = torch.stack([a[:, :, position] for a in att], 1)  # [n, layers, heads, k]
    if layer is not None:
        rows = rows[:, layer:layer + 1]
    if head is not None:
        rows = rows[:, :, head:head + 1]
    where = "all layers and heads" if layer is None else (f"layer {layer}" if head is None else f"head {layer}.{head}")
    return Attribution(rows.mean((1, 2)).double().numpy(), f"attention ({where})", tokens, position,
                       {"per_head": rows.double().numpy()})


def rollout(subject: Any, inputs: Any, *, position: int = -1, residual: float = 0.5) -> Attribution:
    """Attention rollout (Abnar & Zuidema, 2020): per layer ``residual * I + (1 - residual) * mean-head
    attention``, rows renormalised, multiplied through the layers; the row of ``position``."""
    subject, tokens, _ = _prepare(subject, inputs, None, position)
    if not 0 <= residual < 1:
        raise InterpError("residual must be in [0, 1)", expected="the identity's weight, e.g. 0.5",
                          seen=str(residual), fix="pass residual=0.5")
    att = _attentions(subject, tokens)
    t = tokens.shape[1]
    eye = torch.eye(t, dtype=torch.float64)
    roll = eye.expand(tokens.shape[0], t, t).clone()
    for a in att:
        m = residual * eye + (1 - residual) * a.double().mean(1)
        m = m / m.sum(-1, keepdim=True)
        roll = m @ roll
    return Attribution(roll[:, position].numpy(), "rollout", tokens, position, {"residual": residual})


# --------------------------------------------------------------------------------------------------------------
# gradient-based
# --------------------------------------------------------------------------------------------------------------

def _answer_logprob(subject: Any, embeds: torch.Tensor, answer: torch.Tensor, position: int) -> torch.Tensor:
    kwargs: dict[str, Any] = {"use_cache": False} if subject.adapter.causal else {}
    out = subject.model(inputs_embeds=embeds, **kwargs)
    logits = out.logits[:, position].float()
    return torch.log_softmax(logits, -1).gather(-1, answer[:, None])[:, 0]


def _embed(subject: Any, tokens: torch.Tensor) -> torch.Tensor:
    emb = subject.model.get_input_embeddings()
    with torch.no_grad():
        return emb(tokens).detach()


def _grads(subject: Any, embeds: torch.Tensor, answer: torch.Tensor,
           position: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = embeds.clone().requires_grad_(True)
        f = _answer_logprob(subject, x, answer, position)
        (g,) = torch.autograd.grad(f.sum(), x)
    return g.detach(), f.detach()


def grad_x_input(subject: Any, inputs: Any, answer: Any, *, position: int = -1) -> Attribution:
    """Gradient of the answer's log-probability at ``position`` with respect to each input embedding, dotted with
    that embedding."""
    subject, tokens, ans = _prepare(subject, inputs, answer, position)
    out = []
    bs = settings().batch_size
    for i in range(0, tokens.shape[0], bs):
        e = _embed(subject, tokens[i:i + bs])
        g, _ = _grads(subject, e, ans[i:i + bs], position)
        out.append((g * e).sum(-1).double().cpu())
    return Attribution(torch.cat(out).numpy(), "grad_x_input", tokens, position)


def integrated_gradients(subject: Any, inputs: Any, answer: Any, *, steps: int = 32, baseline: Any = None,
                         fixed: Any = None, position: int = -1) -> Attribution:
    """Integrated gradients (Sundararajan et al., 2017) of the answer's log-probability along the straight path
    from a baseline (zero embeddings, or the embedding of token id ``baseline`` at every position) to the inputs,
    midpoint Riemann sum with ``steps`` points (batched internally). ``fixed`` (positions, or a bool mask
    ``[batch, seq]``) keeps those tokens at their input embedding along the whole path (e.g. ``fixed=[0]`` for a
    BOS token): they get no attribution.

    Completeness: the attributions should sum to f(inputs) - f(baseline). The gap is ``details["delta"]`` per
    example (and ``details["max_abs_delta"]``); it shrinks as ``steps`` grows. An InterpWarning says when it is
    above 5% of |f(inputs) - f(baseline)|.
    """
    subject, tokens, ans = _prepare(subject, inputs, answer, position)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise InterpError("integrated gradients needs at least 2 steps", expected="steps >= 2 (typically 20-300)",
                          seen=repr(steps), fix="e.g. steps=32")
    n, t = tokens.shape
    keep = _fixed_mask(fixed, n, t).to(tokens.device)
    if baseline is not None:
        baseline = int(baseline)
        subject.token_ids([baseline], name="baseline")  # a bad id fails here, not inside a cached run

    def parts() -> dict[str, Any]:
        from ._cache import tensor_digest

        return {"model": subject.fingerprint, "kind": "integrated gradients", "tokens": tensor_digest(tokens),
                "answer": tensor_digest(ans), "fixed": tensor_digest(keep), "steps": steps, "baseline": baseline,
                "position": position, "dtype": subject.dtype_key, "device": str(subject.device),
                "attn": subject.attn_implementation, "batch_size": settings().batch_size}

    from ._cache import current

    # per example: t attributions, the completeness delta, and f(inputs) - f(baseline)
    got = current().scores(parts, lambda: _ig_run(subject, tokens, ans, steps, baseline, keep, position)).double()
    scores, deltas, gaps = got[:, :t], got[:, t].numpy(), got[:, t + 1].numpy()
    d = np.array(deltas)
    spread = np.abs(np.array(gaps))
    if bool((np.abs(d) > 0.05 * np.maximum(spread, 1e-3)).any()):
        import warnings

        from ._errors import InterpWarning

        warnings.warn(f"integrated gradients has not converged: the attributions miss f(inputs) - f(baseline) by up "
                      f"to {np.abs(d).max():.3g} (completeness delta) with {steps} steps; raise steps=, or use a token "
                      f"baseline (baseline=<token id>), and keep tokens whose embedding is zero (often BOS) fixed "
                      f"(fixed=[0]): a path to or from zero embeddings is degenerate for models that normalise their "
                      f"input without adding position embeddings first", InterpWarning, stacklevel=2)
    return Attribution(scores.numpy(), "integrated_gradients", tokens, position,
                       {"delta": d, "max_abs_delta": float(np.abs(d).max()), "steps": steps,
                        "baseline": "zeros" if baseline is None else f"token {int(baseline)}",
                        "fixed": keep.cpu().numpy()})


def _ig_run(subject: Any, tokens: torch.Tensor, ans: torch.Tensor, steps: int, baseline: int | None,
            keep: torch.Tensor, position: int) -> torch.Tensor:
    """Integrated gradients per example: ``[n, t + 2]`` float64 with the t attributions, the completeness delta
    and f(inputs) - f(baseline)."""
    n, t = tokens.shape
    bs = max(1, settings().batch_size)
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    per = max(1, bs // steps)  # examples per chunk
    scores, deltas, gaps = [], [], []
    for i in range(0, n, per):
        x = _embed(subject, tokens[i:i + per])  # [m, t, d]
        m = x.shape[0]
        if baseline is None:
            base = torch.zeros_like(x)
        else:
            b_ids = subject.token_ids([int(baseline)] * t, name="baseline")
            base = _embed(subject, b_ids[None]).expand(m, -1, -1)
        base = torch.where(keep[i:i + m, :, None], x, base)
        a_i = ans[i:i + m]
        total = torch.zeros_like(x, dtype=torch.float64)
        for j in range(0, steps, max(1, bs // m)):
            a = alphas[j:j + max(1, bs // m)].to(x.dtype).to(x.device)  # [s]
            path = base[None] + a[:, None, None, None] * (x - base)[None]  # [s, m, t, d]
            g, _ = _grads(subject, path.reshape(-1, t, x.shape[-1]), a_i.repeat(len(a)), position)
            total += g.double().reshape(len(a), m, t, -1).sum(0)
        attr = (total / steps) * (x - base).double()
        with torch.no_grad():
            f = _answer_logprob(subject, torch.cat([x, base]), a_i.repeat(2), position)
        scores.append(attr.sum(-1).cpu())
        deltas += (attr.sum((1, 2)) - (f[:m] - f[m:]).double()).cpu().tolist()
        gaps += (f[:m] - f[m:]).double().cpu().tolist()
    return torch.cat([torch.cat(scores), torch.tensor(deltas, dtype=torch.float64)[:, None],
                      torch.tensor(gaps, dtype=torch.float64)[:, None]], 1)


def _fixed_mask(fixed: Any, n: int, t: int) -> torch.Tensor:
    if fixed is None:
        return torch.zeros(n, t, dtype=torch.bool)
    if isinstance(fixed, (list, tuple)) and all(isinstance(p, int) and not isinstance(p, bool) for p in fixed):
        bad = [p for p in fixed if not -t <= p < t]
        if bad:
            raise InterpError(f"fixed position {bad[0]} is outside the inputs", expected=f"positions in -{t}..{t - 1}",
                              seen=f"inputs of {t} tokens", fix="give positions inside the inputs")
        m = torch.zeros(n, t, dtype=torch.bool)
        m[:, [p % t for p in fixed]] = True
        return m
    m = torch.as_tensor(fixed)
    if m.dtype != torch.bool or m.shape[-1] != t or m.dim() > 2:
        raise InterpError("fixed must be positions or a bool mask", expected=f"ints, or bool [batch, {t}]",
                          seen=f"{m.dtype} {list(m.shape)}", fix="e.g. fixed=[0] to keep the first token")
    return m.expand(n, t).clone()


# --------------------------------------------------------------------------------------------------------------
# interventions on tokens, and faithfulness
# --------------------------------------------------------------------------------------------------------------

def _masked_logprob(subject: Any, tokens: torch.Tensor, keep: torch.Tensor, answer: torch.Tensor,
                    position: int) -> np.ndarray:
    """Answer log-prob at ``position`` with the tokens where ``keep`` is False hidden from attention."""
    from ._runner import _finite, _logits

    out = []
    bs = settings().batch_size
    t = tokens.shape[1]
    pos_ids = torch.arange(t, device=tokens.device)
    for i in range(0, tokens.shape[0], bs):
        tk, kp = tokens[i:i + bs], keep[i:i + bs].to(tokens.device).long()
        logits = _finite(_logits(subject.forward(tk, attention_mask=kp, position_ids=pos_ids[None].expand(len(tk),
                                                                                                          -1))),
                         "token-removal run")
        lp = torch.log_softmax(logits[:, position].float(), -1).gather(-1, answer[i:i + bs][:, None])[:, 0]
        out.append(lp.double().cpu())
    return torch.cat(out).numpy()


def leave_one_token_out(subject: Any, inputs: Any, answer: Any, *, position: int = -1) -> Attribution:
    """Per token, the drop in the answer's log-probability at ``position`` when that token is hidden from
    attention (its key masked at every layer; position ids unchanged). The intervention-based reference that
    attributions are scored against."""
    subject, tokens, ans = _prepare(subject, inputs, answer, position)
    n, t = tokens.shape
    full = _masked_logprob(subject, tokens, torch.ones(n, t, dtype=torch.bool), ans, position)
    scores = np.zeros((n, t))
    for j in range(t):
        keep = torch.ones(n, t, dtype=torch.bool)
        keep[:, j] = False
        scores[:, j] = full - _masked_logprob(subject, tokens, keep, ans, position)
    return Attribution(scores, "leave_one_out", tokens, position, {"full_logprob": full})


def _scores_of(attribution: Any, tokens: torch.Tensor) -> np.ndarray:
    a = attribution.scores if isinstance(attribution, Attribution) else attribution
    try:
        arr = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    except (TypeError, ValueError):
        raise InterpError("the attribution is not numeric", expected="an Attribution or an array [batch, seq]",
                          seen=type(a).__name__, fix="pass pi.integrated_gradients(...) or a float array") from None
    if arr.shape != tuple(tokens.shape):
        raise InterpError("the attribution's shape does not match the inputs", expected=f"[batch, seq] = "
                          f"{list(tokens.shape)}", seen=str(list(arr.shape)),
                          fix="compute the attribution on the same inputs the faithfulness check uses")
    if not np.isfinite(arr).all():
        raise InterpError("the attribution has NaN/inf", expected="finite scores", seen="non-finite values",
                          fix="check how the attribution was computed")
    return arr


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, axis=1, kind="stable")
        r = np.empty_like(x)
        rows = np.arange(x.shape[0])[:, None]
        r[rows, order] = np.arange(x.shape[1])[None].astype(float)
        for i in range(x.shape[0]):  # average ranks of ties
            vals, inv, counts = np.unique(x[i], return_inverse=True, return_counts=True)
            if (counts > 1).any():
                sums = np.bincount(inv, weights=r[i])
                r[i] = (sums / counts)[inv]
        return r

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), 0.0)


@dataclass
class Faithfulness:
    """How well an attribution matches interventions on the same inputs.

    Attributes:
        rank: Effect of the per-example Spearman correlation between the attribution and the leave-one-token-out
            effects (mean and CI over examples).
        comprehensiveness: Effect of the answer log-prob drop when the top-``k`` attributed tokens are hidden.
        sufficiency: Effect of the drop when only the top-``k`` tokens are kept.
        k: how many tokens count as the top.
    """

    rank: Any
    comprehensiveness: Any
    sufficiency: Any
    k: int
    reference: Attribution

    def __str__(self) -> str:
        return (f"rank correlation with leave-one-token-out {self.rank.describe()}\n"
                f"comprehensiveness (drop without top-{self.k}) {self.comprehensiveness.describe()}\n"
                f"sufficiency (drop with only top-{self.k}) {self.sufficiency.describe()}")


def faithfulness(subject: Any, attribution: Any, *, inputs: Any, answer: Any, position: int = -1, k: int = 2,
                 keep: Any = None, reference: Attribution | None = None, alpha: float | None = None,
                 seed: int | None = None) -> Faithfulness:
    """Score ``attribution`` (an :class:`Attribution` or an array ``[batch, seq]``) against interventions on the
    same inputs: the rank correlation with leave-one-token-out effects, comprehensiveness and sufficiency of its
    top-``k`` tokens. ``keep`` (bool ``[batch, seq]``) marks tokens that are never removed (default: the first
    token, often a BOS that every head uses as a sink, and the predicting position itself)."""
    from ._experiments import _stat_args
    from ._stats import mean_effect

    subject, tokens, ans = _prepare(subject, inputs, answer, position)
    scores = _scores_of(attribution, tokens)
    n, t = tokens.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < t:
        raise InterpError("k must be a positive int below the sequence length", expected=f"1 <= k < {t}",
                          seen=repr(k), fix="e.g. k=2")
    fixed = torch.zeros(n, t, dtype=torch.bool)
    if keep is None:
        fixed[:, 0] = True
        fixed[:, position % t] = True
    else:
        fixed = torch.as_tensor(keep)
        if fixed.dtype != torch.bool or fixed.shape[-1:] != (t,) or fixed.dim() > 2:
            raise InterpError("keep must be a bool mask of the tokens never removed",
                              expected=f"bool [batch, {t}] or [{t}]", seen=f"{fixed.dtype} {list(fixed.shape)}",
                              fix="e.g. keep=tokens == bos_id")
        fixed = fixed.expand(n, t).clone()
    free = ~fixed
    if int(free.sum(1).min()) <= k:
        raise InterpError("too few removable tokens for top-k", expected=f"more than k={k} removable tokens",
                          seen=f"{int(free.sum(1).min())}", fix="lower k or keep fewer tokens fixed")
    ref = reference if reference is not None else leave_one_token_out(subject, tokens, ans, position=position)
    ref_scores = _scores_of(ref, tokens)
    fr = free.numpy()
    cols = [np.flatnonzero(fr[i]) for i in range(n)]
    rho = np.array([_spearman_rows(scores[i:i + 1, c], ref_scores[i:i + 1, c])[0] for i, c in enumerate(cols)])
    top = torch.zeros(n, t, dtype=torch.bool)
    for i, c in enumerate(cols):
        order = c[np.argsort(-scores[i, c], kind="stable")[:k]]
        top[i, torch.as_tensor(order)] = True
    full = _masked_logprob(subject, tokens, torch.ones(n, t, dtype=torch.bool), ans, position)
    without = _masked_logprob(subject, tokens, ~top, ans, position)
    only = _masked_logprob(subject, tokens, top | fixed, ans, position)
    st = _stat_args(alpha, seed)
    name = attribution.method if isinstance(attribution, Attribution) else "given attribution"
    common = dict(sites=(name,), higher_is_better=True, model=subject.identity(), **st)
    return Faithfulness(
        rank=mean_effect(rho, method="faithfulness", intervention="leave one token out (attention mask)",
                         metric="Spearman rank correlation", **common),
        comprehensiveness=mean_effect(full - without, method="comprehensiveness", intervention=f"hide top-{k}",
                                      metric="answer logprob drop", **common),
        sufficiency=mean_effect(full - only, method="sufficiency", intervention=f"keep only top-{k}",
                                metric="answer logprob drop", **common),
        k=k, reference=ref)


def assert_faithful(subject: Any, attribution: Any, *, inputs: Any, answer: Any, at_least: float,
                    position: int = -1, k: int = 2, alpha: float | None = None, seed: int | None = None) -> Any:
    """Claim: the attribution ranks tokens like leave-one-token-out does: mean Spearman correlation >=
    ``at_least`` (lower CI bound)."""
    __tracebackhide__ = True
    return _faithful_claim(subject, attribution, inputs, answer, at_least, True, position, k, alpha, seed)


def assert_not_faithful(subject: Any, attribution: Any, *, inputs: Any, answer: Any, below: float,
                        position: int = -1, k: int = 2, alpha: float | None = None, seed: int | None = None) -> Any:
    """Claim: the attribution does NOT rank tokens like leave-one-token-out: mean Spearman correlation <
    ``below`` (upper CI bound)."""
    __tracebackhide__ = True
    return _faithful_claim(subject, attribution, inputs, answer, below, False, position, k, alpha, seed)


def _faithful_claim(subject: Any, attribution: Any, inputs: Any, answer: Any, threshold: float, positive: bool,
                    position: int, k: int, alpha: float | None, seed: int | None) -> Any:
    __tracebackhide__ = True
    from ._claims import _decide, _threshold

    t = _threshold("at_least" if positive else "below", threshold)
    f = faithfulness(subject, attribution, inputs=inputs, answer=answer, position=position, k=k, alpha=alpha,
                     seed=seed)
    eff = f.rank
    eff.details.update(comprehensiveness=f.comprehensiveness.mean, sufficiency=f.sufficiency.mean,
                       **({"ig_max_abs_delta": attribution.details["max_abs_delta"]}
                          if isinstance(attribution, Attribution) and "max_abs_delta" in attribution.details else {}))
    extra = [f"  comprehensiveness (drop without top-{k}): {f.comprehensiveness.describe()}",
             f"  sufficiency (drop with only top-{k}):     {f.sufficiency.describe()}"]
    name = eff.sites[0]
    if positive:
        return _decide(f"{name} is a faithful explanation (rank correlation >= {t:g})", eff, eff.ci[0] >= t,
                       "lower CI bound >= threshold", f"rho >= {t:g}", extra, kind="faithful", bounds=(t,))
    return _decide(f"{name} is not a faithful explanation (rank correlation < {t:g})", eff, eff.ci[1] < t,
                   "upper CI bound < threshold", f"rho < {t:g}", extra, kind="not_faithful", bounds=(t,))
