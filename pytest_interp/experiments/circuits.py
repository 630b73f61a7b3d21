"""Circuits: path patching (one component's contribution to one input of a later one) and attention-pattern
edits (one head's attention to chosen keys removed), each against the clean run, per example, with a CI."""

from __future__ import annotations

from typing import Any

import torch

from ..core import records as _records
from ..core.cache import current as current_cache, site_key, tensor_digest
from ..core.errors import InterpError
from ..core.metrics import Metric
from ..core.paths import Path, path as make_path
from ..core.sites import Site, head as head_site_of
from ..core.stats import Effect, mean_effect
from ..core.batch import real
from ..engine.hooks import Edit
from ..engine.interventions import Intervention, Patch
from ..engine.hooks import hooks, install
from ..engine.interventions import Mean, Zero, check_how
from ..engine.paths import (ReceiverInputs, blocked_attention, contribution, install_path, leaf_attention,
                            patched_pattern)
from ..engine.runner import (attention_edits, attentions, backward, bind_lengths, check_edits, chunks,
                             run_installed)
from ..model.checks import as_subject, check_site, one_stack, position_mask
from ..model.subject import Subject
from .common import as_metric, cached_run, combine_runs, resolve_how, run_parts, stat_args, to_np
from .sweeps import Sweep


def _check_path(subject: Subject, p: Any, tokens: torch.Tensor) -> Path:
    if not isinstance(p, Path):
        raise InterpError("expected a path", expected="pi.path(sender, receiver, via=...)", seen=repr(p)[:80],
                          fix="build it with pi.path(pi.head(0, 1), pi.head(1, 0), via='k')")
    check_site(subject, p.sender, tokens)
    if p.receiver_site is not None:
        check_site(subject, p.receiver_site, tokens)
    ad = subject.adapter
    if p.receiver_site is None:
        ad.norm(ad.n_layers, "final")
    else:
        ad.norm(p.receiver_site.layer, "attn" if p.via else "mlp")
    return p


def _path_scores(subject: Subject, p: Path, tokens: torch.Tensor, metric: Metric, score: Any,
                 how: Intervention) -> torch.Tensor:
    """Per-example scores of the runs in which only ``p`` carries the sender's replacement under ``how``."""
    batch = tokens.shape[0]

    def one(i: int) -> torch.Tensor:
        edit = Edit(p.sender, how.prepare_run(subject, p.sender, tokens, i), how.must_change, how.describe(),
                    how.pure)
        bind_lengths([edit], tokens)
        states: list[Any] = []

        def install(rows: torch.Tensor) -> tuple[list[Any], dict[Any, Any]]:
            handles, edits, state = install_path(subject, p, edit, rows, batch)
            states.append(state)
            return handles, edits

        got = run_installed(subject, tokens, install, score, needs_clean=metric.needs_clean)
        check_edits([edit])
        if not all(s.used for s in states):
            raise InterpError(f"the path {p} never reached its receiver",
                              expected="the receiver's input to be read in every pass",
                              seen="a pass in which the receiver's norm or attention did not run",
                              fix="check the adapter's attn_norm / mlp_norm / final_norm for this model")
        return got

    def parts() -> dict[str, Any] | None:
        base = run_parts(subject, tokens, metric, (p.sender,), how)()
        if base is None:
            return None
        recv = p.receiver if isinstance(p.receiver, str) else site_key(p.receiver)
        return {**base, "path": [site_key(p.sender), recv, p.via], "engine": "path-v1"}

    return current_cache().scores(parts, lambda: combine_runs(how, batch, one), rows=batch)


def ablate_path(subject: Subject, p: Path, *, inputs: Any, metric: Metric, how: Intervention | None = None,
                alpha: float | None = None, seed: int | None = None) -> Effect:
    """Path ablation: per example, the damage done when the sender's output is replaced (``how``, default the
    mean over the inputs) *only where it enters the receiver's input* (:func:`pi.path`); every other component,
    the sender's other readers included, sees the clean run. Positive = behaviour lost."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "path patching")
    tokens = subject.tokens(inputs)
    p = _check_path(subject, p, tokens)
    how = resolve_how((p.sender,), how).for_inputs(tokens)
    score = metric.bind(subject, subject.decoder_tokens(tokens))
    if p.via:
        subject.ensure_eager()  # attention is edited through the eager function: the clean run uses it too
    clean = cached_run(subject, tokens, metric, score)
    hit = _path_scores(subject, p, tokens, metric, score, how)
    return _path_effect(subject, p, metric, how.describe(), clean, hit, stat_args(alpha, seed))


def patch_path(subject: Subject, p: Path, *, clean: Any, corrupt: Any, metric: Metric,
               alpha: float | None = None, seed: int | None = None) -> Effect:
    """Path patching (Wang et al. 2022): the clean inputs run with the sender's activation from ``corrupt``
    reaching the receiver's input only. Per example, the damage in metric units (clean - patched for a
    higher-is-better metric); positive = the path carries what the corruption changes."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "path patching")
    tokens = subject.tokens(clean, name="clean")
    p = _check_path(subject, p, tokens)
    how = Patch(source=corrupt, label="patch from corrupt")
    score = metric.bind(subject, subject.decoder_tokens(tokens))
    if p.via:
        subject.ensure_eager()
    base = cached_run(subject, tokens, metric, score)
    hit = _path_scores(subject, p, tokens, metric, score, how)
    return _path_effect(subject, p, metric, how.describe(), base, hit, stat_args(alpha, seed))


def _path_effect(subject: Subject, p: Path, metric: Metric, how: str, clean: torch.Tensor, hit: torch.Tensor,
                 st: dict[str, Any]) -> Effect:
    values = clean - hit if metric.higher_is_better else hit - clean
    return mean_effect(to_np(values), sites=(p.sender,), method="path", intervention=how, metric=metric.name,
                       higher_is_better=metric.higher_is_better,
                       details={"path": str(p), "sender": str(p.sender), "receiver": str(p.receiver), "via": p.via,
                                "clean_mean": float(clean.mean()), "ablated_mean": float(hit.mean())},
                       model=subject.identity(), **st)


def composition(subject: Subject, senders: list[Site], receivers: list[Site], *, inputs: Any, metric: Metric,
                how: Intervention | None = None, via: tuple[str, ...] = ("q", "k", "v")) -> Sweep:
    """Path ablation of every sender into every later receiver head through each of ``via``: ``result[path]``
    is its Effect (the Q/K/V-composition table of a circuit)."""
    out: dict[Path, Effect] = {}
    for s in senders:
        for r in receivers:
            if r.layer <= s.layer:
                continue
            for v in via:
                p = make_path(s, r, v)
                out[p] = ablate_path(subject, p, inputs=inputs, metric=metric, how=how)
    title = f"path ablation ({next(iter(out.values())).intervention if out else 'mean'}), damage to {metric.name}"
    record_edges(title, out)
    return Sweep(out, title)  # type: ignore[arg-type]


def record_edges(title: str, effects: dict[Path, Effect]) -> None:
    """Add the paths' effects to the session report as a sender x (receiver, input) grid."""
    rows = list(dict.fromkeys(str(p.sender) for p in effects))
    cols = list(dict.fromkeys(f"{p.receiver} {p.via or ''}".strip() for p in effects))
    values: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    for p, e in effects.items():
        values[rows.index(str(p.sender))][cols.index(f"{p.receiver} {p.via or ''}".strip())] = float(e.mean)
    if effects:
        _records.add_grid({"title": title, "rows": rows, "cols": cols, "values": values})


# ------------------------------------------------------------------------------------------------ attention


def induction_keys(tokens: Any) -> torch.Tensor:
    """For each query position, the keys an induction head should read: the positions right after each earlier
    occurrence of the query's token (bool ``[batch, query, key]``; padding never)."""
    t = torch.as_tensor(tokens)
    if t.dim() != 2:
        raise InterpError("induction_keys needs token ids [batch, seq]", expected="a 2-d tensor",
                          seen=f"{t.dim()}-d", fix="pass the tokenized inputs (subject.tokens(...))")
    ok = real(t)
    same = (t[:, :, None] == t[:, None, :]) & ok[:, :, None] & ok[:, None, :]  # [b, query, earlier j]
    seq = t.shape[1]
    earlier = torch.ones(seq, seq, dtype=torch.bool).tril(-1)  # j < query
    prev = same & earlier
    keys = torch.zeros_like(prev)
    keys[:, :, 1:] = prev[:, :, :-1]  # key j + 1
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return keys & causal & ok[:, None, :]


def _as_pairs(keys: Any, tokens: torch.Tensor) -> torch.Tensor:
    pairs = keys(tokens) if callable(keys) else keys
    pairs = torch.as_tensor(pairs)
    b, seq = tokens.shape
    if pairs.dtype != torch.bool or pairs.shape != (b, seq, seq):
        raise InterpError("keys= must be a bool tensor [batch, query, key] (or a function of the tokens giving one)",
                          expected=f"bool {[b, seq, seq]}", seen=f"{pairs.dtype} {list(pairs.shape)}",
                          fix="e.g. keys=pi.induction_keys")
    if not bool(pairs.any()):
        raise InterpError("keys= selects no query -> key pair", expected="some True entries",
                          seen="an all-False tensor", fix="name the pairs whose attention the claim is about")
    return pairs


def matched_keys(pairs: torch.Tensor, tokens: torch.Tensor, causal: bool, seed: int) -> torch.Tensor:
    """The control for ``pairs``: for each query, as many other keys it can see, drawn at random (seeded), none
    of them named in ``pairs`` (fewer where too few are left)."""
    b, seq, _ = pairs.shape
    ok = real(tokens)
    visible = ok[:, None, :] & ok[:, :, None]
    if causal:
        visible = visible & torch.ones(seq, seq, dtype=torch.bool).tril()
    free = visible & ~pairs
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(b, seq, seq, generator=g)
    noise[~free] = 2.0
    order = noise.argsort(-1)
    count = pairs.sum(-1, keepdim=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(seq).expand(b, seq, seq).contiguous())
    return (rank < count) & free


def _head_edit(subject: Subject, head_site: Site, tokens: torch.Tensor, metric: Metric, score: Any,
               edit_for: Any, spec: dict[str, Any]) -> torch.Tensor:
    """Per-example scores of the runs in which ``head_site``'s attention module runs ``edit_for(rows, used)``
    (run-cached under ``spec``); an InterpError if the edit never ran."""
    attention = subject.adapter.attention(head_site.layer)
    used: dict[str, int] = {}

    def install(rows: torch.Tensor) -> tuple[list[Any], dict[Any, Any]]:
        return [], {attention: edit_for(rows, used)}

    def parts() -> dict[str, Any] | None:
        base = run_parts(subject, tokens, metric, (head_site,))()
        return None if base is None else {**base, **spec}

    def compute() -> torch.Tensor:
        got = run_installed(subject, tokens, install, score, needs_clean=metric.needs_clean)
        if not used.get("used"):
            raise InterpError(f"the attention of {head_site} was never edited",
                              expected="the head's attention module to run through the attention registry",
                              seen="no call", fix="this architecture's attention cannot be edited per head")
        return got

    return current_cache().scores(parts, compute, rows=tokens.shape[0])


def block_attention(subject: Subject, head_site: Site, *, keys: Any, inputs: Any, metric: Metric,
                    control: bool = False, alpha: float | None = None, seed: int | None = None) -> Effect:
    """Per example, the damage done when ``head_site``'s attention to the query -> key pairs ``keys`` is removed
    (the scores set to -inf before its softmax; its other weights renormalise). ``keys``: bool ``[batch, query,
    key]`` or a function of the tokens (e.g. :func:`induction_keys`). ``control=True`` blocks the matched
    control instead: as many other visible keys per query, drawn at random (seeded). ``details["blocked_attention"]``
    is the clean attention the blocked keys had (mean over the queries that lose any): the control matches the
    number of keys, not the attention removed (on induction-llama, head 1.0: 0.945 for the named keys against
    0.004 for the control)."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "attention-pattern edits")
    tokens = subject.tokens(inputs)
    check_site(subject, head_site, tokens)
    if head_site.kind != "head" or head_site.positions is not None:
        raise InterpError("attention edits act on one head", expected="pi.head(layer, h) without .at()",
                          seen=str(head_site), fix="name the head; the query positions are in keys=")
    st = stat_args(alpha, seed)
    pairs = _as_pairs(keys, tokens)
    if control:
        pairs = matched_keys(pairs, tokens, bool(subject.adapter.causal), st["seed"])
    score = metric.bind(subject, subject.decoder_tokens(tokens))
    subject.ensure_eager()
    clean = cached_run(subject, tokens, metric, score)
    hit = _head_edit(subject, head_site, tokens, metric, score,
                     lambda rows, used: blocked_attention(head_site.number, pairs[rows], used),
                     {"blocked": tensor_digest(pairs), "engine": "attention-block-v1"})
    values = clean - hit if metric.higher_is_better else hit - clean
    label = "matched control: as many random other keys blocked" if control else "named keys blocked"
    # the control matches the number of keys, not the attention they had: say how much each removed
    weights = attentions(subject, tokens, [head_site.layer])[0][:, head_site.number]
    queries = pairs.any(-1)
    mass = float((weights * pairs.to(weights.dtype)).sum(-1)[queries].mean()) if bool(queries.any()) else 0.0
    return mean_effect(to_np(values), sites=(head_site,), method="attention", intervention=label,
                       metric=metric.name, higher_is_better=metric.higher_is_better,
                       details={"blocked_pairs": int(pairs.sum()), "blocked_attention": mass,
                                "clean_mean": float(clean.mean()),
                                "ablated_mean": float(hit.mean())},
                       model=subject.identity(), **st)



def patch_pattern(subject: Subject, head_site: Site, *, clean: Any, corrupt: Any, metric: Metric,
                  alpha: float | None = None, seed: int | None = None) -> Effect:
    """Pattern patching: the clean inputs run with ``head_site``'s attention pattern taken from its run on
    ``corrupt`` (its values, and every other head, stay clean). Per example, the damage in metric units
    (positive = the head's *pattern*, where it looks, carries what the corruption changes)."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "attention-pattern edits")
    tokens = subject.tokens(clean, name="clean")
    source = subject.tokens(corrupt, name="corrupt")
    check_site(subject, head_site, tokens)
    if head_site.kind != "head" or head_site.positions is not None:
        raise InterpError("pattern patching acts on one head", expected="pi.head(layer, h) without .at()",
                          seen=str(head_site), fix="name the head")
    if source.shape != tokens.shape:
        raise InterpError("clean and corrupt inputs have different shapes", expected=str(list(tokens.shape)),
                          seen=str(list(source.shape)), fix="align clean and corrupt token for token")
    st = stat_args(alpha, seed)
    score = metric.bind(subject, subject.decoder_tokens(tokens))
    subject.ensure_eager()
    base = cached_run(subject, tokens, metric, score)
    pattern = attentions(subject, source, [head_site.layer])[0][:, head_site.number]
    hit = _head_edit(subject, head_site, tokens, metric, score,
                     lambda rows, used: patched_pattern(head_site.number, pattern[rows], used),
                     {"pattern_from": tensor_digest(source), "engine": "pattern-patch-v1"})
    values = base - hit if metric.higher_is_better else hit - base
    return mean_effect(to_np(values), sites=(head_site,), method="pattern patch",
                       intervention="attention pattern from corrupt", metric=metric.name,
                       higher_is_better=metric.higher_is_better,
                       details={"clean_mean": float(base.mean()), "patched_mean": float(hit.mean())},
                       model=subject.identity(), **st)


def edge_screen(subject: Subject, senders: list[Site] | None = None, receivers: list[Site] | None = None, *,
                inputs: Any, metric: Metric, how: Intervention | None = None, via: tuple[str, ...] = ("q", "k", "v"),
                steps: int = 1, alpha: float | None = None, seed: int | None = None) -> Sweep:
    """Estimate every path's ablation damage (as :func:`ablate_path` measures it) to first order in the
    receiver's input, from one forward and one backward pass per batch: ``damage ~ grad . (x' - x)``, where
    ``x`` is the receiver head's query, key or value and ``x'`` the same recomputed from ``norm(resid + delta)``
    with the sender's change ``delta`` (edge attribution patching, as the head screen does for nodes). Default
    senders: every head below the last layer; receivers: every head above the first. Ranks edges for the exact
    path ablation to confirm; never decides a claim (Student-t intervals). Keys of the result are
    :class:`Path` objects.

    ``steps > 1`` averages the gradient over that many points between the clean run and the run with every
    sender replaced (integrated gradients along the senders' replacement, as EAP-IG does along the input); each
    step costs one forward and one backward pass."""
    subject, metric = as_subject(subject), as_metric(metric)
    one_stack(subject, "the edge screen")
    how = check_how(Mean() if how is None else how)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InterpError("steps must be a positive int", expected="1 (plain gradients) or more (integrated)",
                          seen=repr(steps), fix="e.g. steps=5")
    if not isinstance(how, (Mean, Zero)):
        raise InterpError("the edge screen needs a deterministic replacement", expected="pi.Mean() or pi.Zero()",
                          seen=how.describe(), fix="screen with Mean or Zero, then confirm with pi.ablate_path")
    if metric.needs_clean:
        raise InterpError(f"metric {metric.name} has no useful gradient at the clean run", expected="loss, logprob "
                          "or logit_diff", seen=metric.name, fix="screen with pi.metrics.loss() or logprob(answer)")
    tokens = subject.tokens(inputs)
    n_layers, n_heads = subject.n_layers, subject.n_heads
    senders = senders if senders is not None else [head_site_of(lay, h) for lay in range(n_layers - 1)
                                                   for h in range(n_heads)]
    receivers = receivers if receivers is not None else [head_site_of(lay, h) for lay in range(1, n_layers)
                                                         for h in range(n_heads)]
    paths = [make_path(s, r, v) for s in senders for r in receivers if r.layer > s.layer for v in via]
    if not paths:
        raise InterpError("no path between the senders and receivers", expected="a receiver above a sender",
                          seen=f"{len(senders)} senders, {len(receivers)} receivers", fix="widen the layers")
    for p in paths:
        _check_path(subject, p, tokens)
    if any(v in ("k", "v") for v in via):
        ad = subject.adapter
        kv = getattr(subject.model.config, "num_key_value_heads", None) or ad.n_heads
        if kv != ad.n_heads:
            raise InterpError("the edge screen cannot separate one head's keys or values under grouped-query "
                              "attention", expected="via=('q',) on this model, or the exact pi.ablate_path",
                              seen=f"{ad.n_heads} query heads share {kv} key/value heads",
                              fix="screen via=('q',) and measure k/v paths exactly")
    how = how.for_inputs(tokens)
    subject.ensure_eager()
    weights = how.weights(tokens.shape[0])
    replace = {s: [how.prepare_run(subject, s, tokens, i) for i in range(len(weights))] for s in senders}
    score = metric.bind(subject, subject.decoder_tokens(tokens))
    sign = -1.0 if metric.higher_is_better else 1.0
    layers = sorted({r.layer for r in receivers})
    est: dict[Path, list[torch.Tensor]] = {p: [] for p in paths}
    alphas = [0.0] if steps == 1 else [(i + 0.5) / steps for i in range(steps)]
    for rows in chunks(tokens.shape[0]):
        chunk = tokens[rows.to(tokens.device)]
        dev_rows = rows.to(tokens.device)
        inputs_at = {lay: ReceiverInputs(subject, lay) for lay in layers}
        acts: dict[Site, torch.Tensor] = {}
        handles: list[Any] = []
        for lay in layers:
            handles += inputs_at[lay].hooks()
        for s in senders:
            def read(act: torch.Tensor, s: Site = s) -> None:
                acts[s] = act.detach()
            handles.append(install(subject, s, read))
        with hooks(handles):
            run_installed(subject, chunk, lambda r: ([], {}), lambda logits, r, c: logits[:, :0, 0])
        deltas: dict[Site, torch.Tensor] = {}
        for s in senders:
            a = acts[s]
            delta = sum(w * (fn(a, rows) - a) for w, fn in zip(weights, replace[s]))
            mask = position_mask(s, rows, tokens.shape[0], a.shape[1], a.device)
            deltas[s] = delta if mask is None else delta * mask[..., None]
        grads: dict[int, dict[str, torch.Tensor]] = {}
        clean_x: dict[int, dict[str, torch.Tensor]] = {}
        for k, alpha_i in enumerate(alphas):  # gradients at the clean run, or along the way to the replacements
            stores: dict[int, dict[str, torch.Tensor]] = {lay: {} for lay in layers}
            moved = []
            if alpha_i:
                for s in senders:
                    def move(act: torch.Tensor, s: Site = s, a: float = alpha_i) -> torch.Tensor:
                        return acts[s].to(act.dtype) + a * deltas[s].to(act.dtype)
                    moved.append(install(subject, s, move))
            edits = {inputs_at[lay].attention: leaf_attention(stores[lay]) for lay in layers}
            with attention_edits(subject, edits):
                backward(subject, chunk, moved, lambda logits: score(logits, dev_rows).sum())
            for lay in layers:
                for name in ("q", "k", "v"):
                    g = stores[lay][name].grad
                    if g is None:
                        raise InterpError(f"no gradient reached the {name} of layer {lay}",
                                          expected="a receiver upstream of the metric", seen="grad None",
                                          fix="check the adapter for this model")
                    grads.setdefault(lay, {})[name] = g / len(alphas) + grads.get(lay, {}).get(name, 0)
                    if k == 0 and not alpha_i:
                        clean_x.setdefault(lay, {})[name] = stores[lay][name].detach()
        for s in senders:
            resid_delta = contribution(subject, s, deltas[s])
            for lay in layers:
                if lay <= s.layer:
                    continue
                new = inputs_at[lay].qkv(resid_delta)
                base = clean_x.get(lay) or inputs_at[lay].qkv(torch.zeros_like(resid_delta))
                for p in paths:
                    r = p.receiver_site
                    if p.sender != s or r is None or r.layer != lay:
                        continue
                    h, v = r.number, str(p.via)
                    est[p].append(sign * ((new[v][:, h] - base[v][:, h]) * grads[lay][v][:, h]).sum((1, 2)))
    st = stat_args(alpha, seed)
    effects = {p: mean_effect(to_np(torch.cat(v)), sites=(p.sender,), method="edge attribution", estimate=True,
                              intervention=f"first-order estimate of {how.describe()} along {p}",
                              metric=metric.name, higher_is_better=metric.higher_is_better,
                              details={"path": str(p)}, model=subject.identity(), **st)
               for p, v in est.items()}
    title = f"edge screen: {how.describe()}, estimated path damage to {metric.name}"
    record_edges(title, effects)
    return Sweep(effects, title)  # type: ignore[arg-type]


def record_pattern(subject: Subject, head_site: Site, tokens: torch.Tensor, *, limit: int = 40) -> None:
    """Add ``head_site``'s attention pattern on the first example (at most ``limit`` tokens) to the session
    report, beside the claim that intervened on it: what the head looks at, shown next to what decided."""
    subject = as_subject(subject)
    t = subject.tokens(tokens)[:1]
    n = int(real(t)[0].sum())
    att = attentions(subject, t, [head_site.layer])[0][0, head_site.number, :n, :n]
    n = min(n, limit)
    _records.add_grid({"title": f"attention of {head_site} on example 0, first {n} tokens (rows: queries, columns: "
                                "keys): what the head sees, shown beside the effect of intervening on it",
                       "rows": [f"q{i}" for i in range(n)], "cols": [f"k{j}" for j in range(n)],
                       "values": [[float(att[i, j]) if j <= i or not subject.causal else None for j in range(n)]
                                  for i in range(n)]})
