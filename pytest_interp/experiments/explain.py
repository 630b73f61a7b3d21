"""Attribution methods over input tokens: attention, rollout, gradient x input, integrated gradients (run-cached),
and leave-one-token-out, the intervention every other method is scored against (see :mod:`.faithfulness`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import warnings

from ..core.cache import current, tensor_digest
from ..core.batch import require_equal_lengths
from ..core.errors import InterpError, InterpWarning
from ..core.settings import settings
from ..engine.runner import attentions, chunks, embed, gradient, logits
from ..model.checks import as_subject, check_layer
from ..model.subject import Subject


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


def _prepare(subject: Subject, inputs: Any, answer: Any, position: int) -> tuple[Subject, torch.Tensor, torch.Tensor]:
    """The subject, validated inputs and one answer id per example (empty when ``answer`` is None)."""
    subject = as_subject(subject)
    tokens = subject.tokens(inputs)
    require_equal_lengths(tokens, "token attribution")
    n, t = tokens.shape
    if isinstance(position, bool) or not isinstance(position, int) or not -t <= position < t:
        raise InterpError(f"position {position!r} is outside the inputs", expected=f"an int in [-{t}, {t})",
                          seen=f"inputs of {t} tokens", fix="attribute the prediction at a position of the inputs")
    if answer is None:
        return subject, tokens, torch.empty(0, dtype=torch.long)
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

def _which(subject: Subject, which: str | None) -> str:
    """The attention to read: ``which``, or by default self-attention (one stack) or cross-attention (an
    encoder-decoder model's decoder reading the encoder)."""
    return which if which is not None else ("cross" if subject.encoder_decoder else "self")


def attention_weights(subject: Subject, inputs: Any, layer: int, *, switch: bool = True,
                      which: str | None = None) -> torch.Tensor:
    """Attention weights of every head of ``layer``: ``[batch, heads, query, key]``. A model on SDPA or flash
    attention is switched to eager (with an InterpWarning), or with ``switch=False`` refused: those kernels return
    no weights. Weights show what was visible, not what mattered.

    For an encoder-decoder model ``which`` is ``"cross"`` (default: decoder queries over the encoder's tokens,
    ``layer`` a decoder layer), ``"encoder"`` or ``"decoder"`` (self-attention of that stack)."""
    subject = as_subject(subject)
    return attentions(subject, subject.tokens(inputs), [layer], switch=switch, which=_which(subject, which))[0]


def attention(subject: Subject, inputs: Any, *, layer: int | None = None, head: int | None = None,
              position: int = -1, which: str | None = None) -> Attribution:
    """Raw attention from ``position`` to every token: one head (``layer`` and ``head``), the mean over a
    layer's heads (``layer``), or the mean over all layers and heads (neither).

    For an encoder-decoder model the default is cross-attention: from decoder position ``position`` (its start
    token: ``-1`` or ``0``) to every encoder token, over decoder layers; ``which="encoder"`` reads the encoder's
    self-attention instead."""
    subject = as_subject(subject)
    which = _which(subject, which)
    reads_decoder = which in ("cross", "decoder")
    subject, tokens, _ = _prepare(subject, inputs, None, -1 if reads_decoder else position)
    if reads_decoder and position not in (-1, 0):
        raise InterpError(f"decoder position {position!r} does not exist", expected="-1 or 0: the decoder reads its "
                          "start token", seen=f"position={position!r}", fix="pass position=-1")
    if head is not None and layer is None:
        raise InterpError("head= needs layer=", expected="layer= and head= together", seen=f"head={head}",
                          fix="e.g. layer=1, head=0")
    if layer is not None:
        check_layer(subject, layer, stack="decoder" if reads_decoder else None)
    if head is not None and not 0 <= head < subject.n_heads:
        raise InterpError(f"head {head} is out of range", expected=f"0..{subject.n_heads - 1}", seen=str(head),
                          fix="count heads from 0")
    att = attentions(subject, tokens, which=which)
    rows = torch.stack([a[:, :, position] for a in att], 1)  # [n, layers, heads, k]
    if layer is not None:
        rows = rows[:, layer:layer + 1]
    if head is not None:
        rows = rows[:, :, head:head + 1]
    where = "all layers and heads" if layer is None else (f"layer {layer}" if head is None else f"head {layer}.{head}")
    if which != "self":
        where = f"{which}, {where}"
    return Attribution(rows.mean((1, 2)).double().numpy(), f"attention ({where})", tokens, position,
                       {"per_head": rows.double().numpy()})


def rollout(subject: Subject, inputs: Any, *, position: int = -1, residual: float = 0.5) -> Attribution:
    """Attention rollout (Abnar & Zuidema, 2020): per layer ``residual * I + (1 - residual) * mean-head
    attention``, rows renormalised, multiplied through the layers; the row of ``position``."""
    subject, tokens, _ = _prepare(subject, inputs, None, position)
    if subject.encoder_decoder:
        raise InterpError("attention rollout is defined for a model with one stack", expected="a decoder-only or "
                          "encoder-only model", seen=f"an encoder-decoder model ({subject.class_name})",
                          fix="use pi.explain.attention (the decoder's cross-attention) or "
                              "pi.explain.leave_one_token_out")
    if not 0 <= residual < 1:
        raise InterpError("residual must be in [0, 1)", expected="the identity's weight, e.g. 0.5",
                          seen=str(residual), fix="pass residual=0.5")
    att = attentions(subject, tokens)
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

def _answer_logprob(answer: torch.Tensor, position: int) -> Any:
    """The objective ``logits -> log p(answer)`` at ``position``, per example."""
    def objective(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[:, position].float(), -1).gather(-1, answer[:, None])[:, 0]
    return objective


def grad_x_input(subject: Subject, inputs: Any, answer: Any, *, position: int = -1) -> Attribution:
    """Gradient of the answer's log-probability at ``position`` with respect to each input embedding, dotted with
    that embedding."""
    subject, tokens, ans = _prepare(subject, inputs, answer, position)
    out = []
    for rows in chunks(tokens.shape[0]):
        e = embed(subject, tokens[rows.to(tokens.device)])
        g, _ = gradient(subject, e, _answer_logprob(ans[rows.to(ans.device)], position))
        out.append((g * e).sum(-1).double().cpu())
    return Attribution(torch.cat(out).numpy(), "grad_x_input", tokens, position)


def integrated_gradients(subject: Subject, inputs: Any, answer: Any, *, steps: int = 32, baseline: Any = None,
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
        return {"model": subject.fingerprint, "kind": "integrated gradients", "tokens": tensor_digest(tokens),
                "answer": tensor_digest(ans), "fixed": tensor_digest(keep), "steps": steps, "baseline": baseline,
                "position": position, "dtype": subject.dtype_key, "device": str(subject.device),
                "attn": subject.attn_implementation, "batch_size": settings().batch_size}

    # per example: t attributions, the completeness delta, and f(inputs) - f(baseline)
    got = current().scores(parts, lambda: _ig_run(subject, tokens, ans, steps, baseline, keep, position),
                           rows=n).double()
    scores, deltas, gaps = got[:, :t], got[:, t].numpy(), got[:, t + 1].numpy()
    d = np.array(deltas)
    spread = np.abs(np.array(gaps))
    if bool((np.abs(d) > 0.05 * np.maximum(spread, 1e-3)).any()):
        warnings.warn(f"integrated gradients has not converged: the attributions miss f(inputs) - f(baseline) by up "
                      f"to {np.abs(d).max():.3g} (completeness delta) with {steps} steps; raise steps=, or use a token "
                      f"baseline (baseline=<token id>), and keep tokens whose embedding is zero (often BOS) fixed "
                      f"(fixed=[0]): a path to or from zero embeddings is degenerate for models that normalise their "
                      f"input without adding position embeddings first", InterpWarning, stacklevel=2)
    return Attribution(scores.numpy(), "integrated_gradients", tokens, position,
                       {"delta": d, "max_abs_delta": float(np.abs(d).max()), "steps": steps,
                        "baseline": "zeros" if baseline is None else f"token {int(baseline)}",
                        "fixed": keep.cpu().numpy()})


def _ig_run(subject: Subject, tokens: torch.Tensor, ans: torch.Tensor, steps: int, baseline: int | None,
            keep: torch.Tensor, position: int) -> torch.Tensor:
    """Integrated gradients per example: ``[n, t + 2]`` float64 with the t attributions, the completeness delta
    and f(inputs) - f(baseline)."""
    n, t = tokens.shape
    bs = max(1, settings().batch_size)
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    per = max(1, bs // steps)  # examples per chunk
    scores, deltas, gaps = [], [], []
    for i in range(0, n, per):
        x = embed(subject, tokens[i:i + per])  # [m, t, d]
        m = x.shape[0]
        if baseline is None:
            base = torch.zeros_like(x)
        else:
            b_ids = subject.token_ids([int(baseline)] * t, name="baseline")
            base = embed(subject, b_ids[None]).expand(m, -1, -1)
        base = torch.where(keep[i:i + m, :, None], x, base)
        a_i = ans[i:i + m]
        total = torch.zeros_like(x, dtype=torch.float64)
        for j in range(0, steps, max(1, bs // m)):
            a = alphas[j:j + max(1, bs // m)].to(x.dtype).to(x.device)  # [s]
            path = base[None] + a[:, None, None, None] * (x - base)[None]  # [s, m, t, d]
            g, _ = gradient(subject, path.reshape(-1, t, x.shape[-1]), _answer_logprob(a_i.repeat(len(a)), position))
            total += g.double().reshape(len(a), m, t, -1).sum(0)
        attr = (total / steps) * (x - base).double()
        f = _answer_logprob(a_i.repeat(2), position)(logits(subject, embeds=torch.cat([x, base]),
                                                             what="integrated-gradients run"))
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

def _masked_logprob(subject: Subject, tokens: torch.Tensor, keep: torch.Tensor, answer: torch.Tensor,
                    position: int) -> np.ndarray:
    """Answer log-prob at ``position`` with the tokens where ``keep`` is False hidden from attention."""
    out = []
    t = tokens.shape[1]
    pos_ids = torch.arange(t, device=tokens.device)
    for rows in chunks(tokens.shape[0]):
        r = rows.to(tokens.device)
        tk, kp = tokens[r], keep.to(tokens.device)[r].long()
        got = logits(subject, tk, what="token-removal run", attention_mask=kp,
                     position_ids=pos_ids[None].expand(len(tk), -1))
        out.append(_answer_logprob(answer[r], position)(got).double().cpu())
    return torch.cat(out).numpy()


def leave_one_token_out(subject: Subject, inputs: Any, answer: Any, *, position: int = -1) -> Attribution:
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
