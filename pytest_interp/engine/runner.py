"""The runner: the one place the model is called. Batched forward (and backward) passes with hooks that read or
replace site activations, the finite-logits check, attention weights and input embeddings. Knows nothing of
claims.

Rules every pass keeps: gradients are off unless a pass asks for them; a causal model runs without a key/value
cache unless the caller passes one; logits are checked for NaN/inf before anything scores them; every hook is
removed when its pass ends; an edit that did not fire, or did not change what it targets, is an error; freed
buffers go back to the system (``memory``). Edits inside attention run through transformers' attention-function
registry for the length of one pass (:func:`attention_edits`); a module without an edit then runs its own eager
attention function unchanged.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..core.errors import InterpError, InterventionNoOpError
from ..core.settings import settings
from ..core.sites import Site
from ..core.batch import PAD, ragged, real
from ..model.checks import batch_lengths, check_layer
from ..model.subject import Subject
from .hooks import Edit, Replacement, hooks, install, install_edits, install_router
from .memory import release_freed_buffers

ScoreFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def finite(logits: torch.Tensor, what: str) -> torch.Tensor:
    """``logits``, or an InterpError naming the run (``what``) if any is NaN or inf."""
    # One float32 reduction (~40x cheaper than an elementwise pass or a float64 sum on a [64, 16, 50257] tensor):
    # a NaN or inf anywhere makes the sum non-finite. A non-finite sum of finite values (overflow) is ruled out
    # by the exact check, so only the rare suspicious case pays for it.
    if not bool(torch.isfinite(logits.sum(dtype=torch.float32))) and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(-1).sum())
        raise InterpError(f"the model produced NaN/inf logits in the {what}",
                          expected="finite logits", seen=f"{bad} position(s) with NaN/inf",
                          fix="check the weights and dtype (fp16 overflow?) or lower the noise scale")
    return logits


def logits_of(out: Any, kind: str = "logits") -> torch.Tensor:
    """What a metric scores in a model output: the logits (``kind="logits"``), or the final hidden states
    ``[batch, seq, d]`` (``kind="hidden"``: the last layer's output, after any final norm). An InterpError for
    logits from a model without an output head."""
    if kind == "hidden":
        states = getattr(out, "hidden_states", None)
        hidden = states[-1] if states else getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise InterpError("the model output has no hidden states", expected="last_hidden_state or "
                              "hidden_states", seen=type(out).__name__, fix="use a transformers model")
        return hidden
    logits = getattr(out, "logits", None)
    if logits is None:
        raise InterpError("the model output has no logits: this model has no language-model or classification "
                          "head", expected="a metric this model can score",
                          seen=f"{type(out).__name__} (final hidden states only)",
                          fix="score its representations with a hidden-state metric, e.g. "
                              "pi.metrics.cosine() (the change in each example's pooled embedding) or "
                              "pi.metrics.cosine(reference=pi.embeddings(subject, other_texts))")
    return logits


def output_kwargs(subject: Subject, kind: str) -> dict[str, Any]:
    """Forward arguments a metric reading ``kind`` needs: hidden states of a model that also computes logits."""
    if kind == "hidden" and subject.has_head:
        return {"output_hidden_states": True}
    return {}


def chunks(n: int) -> Iterator[torch.Tensor]:
    """Row indices of ``n`` examples in batches of the configured batch size."""
    bs = settings().batch_size
    for i in range(0, n, bs):
        yield torch.arange(i, min(i + bs, n))


def forward(subject: Subject, tokens: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
            grad: bool = False, **kwargs: Any) -> Any:
    """One forward pass of ``tokens`` (or input ``embeds``); returns the model output. This is the only call of
    the model in the package."""
    release_freed_buffers()
    if subject.adapter.causal or subject.encoder_decoder:
        kwargs.setdefault("use_cache", False)
    if subject.encoder_decoder:
        # T5 and BART take no position ids: T5's positions are relative, BART's count the encoder's tokens, and a
        # token hidden by the attention mask keeps its place either way
        kwargs.pop("position_ids", None)
    if subject.encoder_decoder and "decoder_input_ids" not in kwargs and "decoder_inputs_embeds" not in kwargs:
        # the encoder reads the inputs; the decoder starts from its start token, so logits are its first prediction
        n = (tokens if tokens is not None else embeds).shape[0]  # type: ignore[union-attr]
        kwargs["decoder_input_ids"] = torch.full((n, 1), subject.decoder_start_id, dtype=torch.long,
                                                 device=subject.device)
    if tokens is not None and ragged(tokens):
        # padding: any real id goes in (a causal model's real tokens never attend to the padding after them;
        # an encoder's attention masks it out), so every real position computes what it does alone
        if not subject.adapter.causal:
            kwargs.setdefault("attention_mask", real(tokens).long())
        tokens = tokens.masked_fill(~real(tokens), subject.filler_id)
    inputs = {"input_ids": tokens} if embeds is None else {"inputs_embeds": embeds}
    with torch.set_grad_enabled(grad):
        return subject.model(**inputs, **kwargs)


def logits(subject: Subject, tokens: torch.Tensor | None = None, *, what: str, kind: str = "logits",
           **kwargs: Any) -> torch.Tensor:
    """The finite logits (or ``kind="hidden"``: final hidden states) of one forward pass (``what`` names the run
    in the error if they are not)."""
    return finite(logits_of(forward(subject, tokens, **output_kwargs(subject, kind), **kwargs), kind), what)


def head_logits(head: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output head applied to final hidden states (a sweep's per-slot logits), no gradient."""
    with torch.no_grad():
        return head(hidden)


def bind_lengths(edits: list[Edit], tokens: torch.Tensor) -> None:
    """Tell ``edits`` each example's real length when ``tokens`` is a ragged batch (positions count from each
    example's own end)."""
    lens = batch_lengths(tokens)
    for e in edits:
        e.lengths = None if e.site.decoder_side else lens  # decoder positions are the same in every example


def run(subject: Subject, tokens: torch.Tensor, edits: list[Edit], score: ScoreFn, *,
        needs_clean: bool = False) -> torch.Tensor:
    """Run ``tokens`` with ``edits`` applied; return ``score(logits, rows, clean_logits)`` for every example.
    A generation metric (``score.output == "generation"``) is scored on the text generated with the edits
    installed (:func:`generate`)."""
    batch = tokens.shape[0]
    if getattr(score, "output", "logits") == "generation":
        decoding = getattr(score, "decoding")
        out_g = [score(generate(subject, tokens, decoding, edits, rows), rows.to(tokens.device), None).detach()
                 for rows in chunks(batch)]
        check_edits(edits)
        return torch.cat(out_g)
    out = []
    head = subject.head_kwargs(score)
    kind = getattr(score, "output", "logits")
    bind_lengths(edits, tokens)
    for rows in chunks(batch):
        chunk = tokens[rows.to(tokens.device)]
        clean = logits(subject, chunk, what="clean run", kind=kind, **head) if needs_clean or not edits else None
        if clean is not None and not edits:
            got = clean
        else:
            with hooks(install_edits(subject, edits, rows, batch)):
                got = logits(subject, chunk, what="intervened run", kind=kind, **head)
        out.append(score(got, rows.to(tokens.device), clean).detach())
    check_edits(edits)
    return torch.cat(out)


def _prompt_part(e: Edit, width: int) -> Replacement:
    """``e``'s replacement function for a pass over a prompt batch ``width`` tokens wide plus generated tokens:
    a site restricted to positions is edited only on the prompt (the replacement computed on the prompt's
    columns, as in a single pass over the prompts); a site without positions everywhere, which needs a
    replacement that does not depend on the position."""
    fn = e.fn

    def edit(act: Any, rows: torch.Tensor) -> Any:
        if act.shape[1] <= width:
            return fn(act, rows)
        if e.site.positions is not None:
            return torch.cat([fn(act[:, :width], rows), act[:, width:]], 1)
        new = fn(act, rows)
        if tuple(new.shape) != tuple(act.shape):
            raise InterpError(f"{e.label} at {e.site} replaces activations position by position, and generated "
                              "positions have no counterpart", expected="an intervention that does not depend on "
                              "the position (pi.Zero(), pi.Mean(per_position=False), a direction or feature edit), "
                              "or a site restricted to prompt positions", seen=f"a replacement for "
                              f"{new.shape[1]} positions in a pass over {act.shape[1]}",
                              fix=f"use {e.site}.at(...) to edit the prompt only, or pi.Zero() / "
                                  "pi.Mean(per_position=False)")
        return new
    return edit


@torch.no_grad()
def generate(subject: Subject, tokens: torch.Tensor, decoding: Any, edits: list[Edit],
             rows: torch.Tensor) -> torch.Tensor:
    """Decode ``decoding.max_new_tokens`` tokens after each prompt of ``tokens[rows]`` (``decoding.n`` per
    prompt) with ``edits`` installed at every step; returns ``[len(rows), n, new]`` (-1 after a stop token).

    No key/value cache: each step runs the prompt and the tokens generated so far in one pass, so every edit
    sees every position, as it would in one forward pass over the finished text. Prompts of different lengths
    are right-padded; each reads its next token at its own last position."""
    from ..core.decoding import cut_at_stop

    if not subject.adapter.causal:
        seen = "an encoder-decoder model" if subject.encoder_decoder else "an encoder"
        raise InterpError("generation needs a causal LM", expected="a left-to-right language model",
                          seen=f"{subject.class_name} ({seen})",
                          fix="score it with a single-pass metric (an encoder-decoder model's is its decoder's "
                              "first prediction)")
    batch, width = tokens.shape
    n, new = decoding.n, decoding.max_new_tokens
    prompts = tokens[rows.to(tokens.device)].repeat_interleave(n, 0)
    lens = batch_lengths(tokens)
    plen = (torch.full((batch,), width) if lens is None else lens.cpu())
    if subject.max_positions is not None and int(plen.max()) + new - 1 > subject.max_positions:
        raise InterpError("the prompt and the generated tokens do not fit the model's positions",
                          expected=f"prompt + max_new_tokens - 1 <= {subject.max_positions} (the last token "
                                   "generated is never read)",
                          seen=f"{int(plen.max())} + {new} - 1", fix="shorten the prompts or lower max_new_tokens")
    sample_rows = rows.cpu().repeat_interleave(n)
    own = plen[sample_rows]
    for e in edits:
        e.lengths = plen  # a site's positions are the prompt's, whatever has been generated after it
    saved = [e.fn for e in edits]
    gens = decoding.generators(rows.cpu())
    out = torch.full((len(sample_rows), new), PAD, dtype=torch.long, device=tokens.device)
    try:
        for e in edits:
            e.fn = _prompt_part(e, width)
        with hooks(install_edits(subject, edits, sample_rows.to(tokens.device), batch)):
            for step in range(new):
                seq = torch.cat([prompts, torch.full((len(prompts), step), PAD, dtype=torch.long,
                                                     device=tokens.device)], 1)
                at = (own + step).to(tokens.device)
                if step:
                    cols = own[:, None] + torch.arange(step)[None]
                    seq[torch.arange(len(seq))[:, None], cols.to(tokens.device)] = out[:, :step]
                lg = logits(subject, seq, what="generation step")
                out[:, step] = decoding.pick(lg[torch.arange(len(seq), device=lg.device), at - 1], gens).to(out.device)
    finally:
        for e, fn in zip(edits, saved):
            e.fn = fn
    return cut_at_stop(out, decoding.stop).reshape(len(rows), n, new)


NAME = "pytest_interp_eager"
_EDITS: dict[Any, Callable[..., Any]] = {}  # attention module -> its edit, for the current pass
_registered: list[bool] = []


def _base(module: Any) -> Callable[..., Any]:
    """The eager attention function of ``module``'s own modeling file (the one its forward would call: read from
    the forward's globals, so a modeling module re-imported or dropped from ``sys.modules`` does not matter)."""
    forward_fn = getattr(type(module), "forward", None)
    fn = getattr(forward_fn, "__globals__", {}).get("eager_attention_forward")
    if fn is None:
        raise InterpError(f"{type(module).__name__} has no eager attention function to edit",
                          expected="a transformers model whose modeling file defines eager_attention_forward",
                          seen=type(module).__module__, fix="use a model of a built-in architecture")
    return fn


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
               **kwargs: Any) -> Any:
    edit = _EDITS.get(module)
    if edit is None:
        return _base(module)(module, query, key, value, mask, **kwargs)
    return edit(_base(module), module, query, key, value, mask, **kwargs)


def _register() -> None:
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    _registered.append(True)


@contextmanager
def attention_edits(subject: Subject, edits: dict[Any, Callable[..., Any]]) -> Iterator[None]:
    """Within: the attention modules in ``edits`` run their edit; every other module its own eager attention.
    The model must be in eager attention (the implementation is swapped for the pass and restored)."""
    if not edits:
        yield
        return
    subject.ensure_eager()
    _register()
    configs = {id(m.config): m.config for m in edits if getattr(m, "config", None) is not None}
    configs[id(subject.model.config)] = subject.model.config
    saved = {k: c._attn_implementation for k, c in configs.items()}
    _EDITS.update(edits)
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
        for m in edits:
            _EDITS.pop(m, None)


def submodule(module: Any, *args: Any, **kwargs: Any) -> Any:
    """One of the model's modules run on its own inside a pass, without its hooks: a path edit recomputing a norm,
    an out-projection or an attention module on an edited input."""
    return module.forward(*args, **kwargs)


def run_installed(subject: Subject, tokens: torch.Tensor, install_chunk: Callable[[torch.Tensor], Any],
                  score: ScoreFn, *, needs_clean: bool = False) -> torch.Tensor:
    """Run ``tokens`` chunk by chunk with what ``install_chunk(rows)`` returns, ``(hooks, attention edits)``
    (:mod:`.paths`), in place; return ``score(logits, rows, clean_logits)`` for every example."""
    out = []
    head = subject.head_kwargs(score)
    kind = getattr(score, "output", "logits")
    for rows in chunks(tokens.shape[0]):
        chunk = tokens[rows.to(tokens.device)]
        clean = logits(subject, chunk, what="clean run", kind=kind, **head) if needs_clean else None
        handles, edits = install_chunk(rows)
        with hooks(handles), attention_edits(subject, edits):
            got = logits(subject, chunk, what="intervened run", kind=kind, **head)
        out.append(score(got, rows.to(tokens.device), clean).detach())
    return torch.cat(out)


def check_edits(edits: list[Edit]) -> None:
    """The silent no-op guard: every edit fired, and those that must change their activation did."""
    for e in edits:
        if not e.fired:
            raise InterventionNoOpError(f"the {e.label} on {e.site} did not fire",
                                        expected=f"the hook at {e.site} to run during the forward pass",
                                        seen="the hooked module was never called",
                                        fix="check the adapter maps this site to a module the model uses")
        if e.must_change and not e.changed:
            raise no_change(e)


def no_change(e: Edit) -> InterventionNoOpError:
    """The error for an edit that left the activation it targets unchanged."""
    return InterventionNoOpError(
        f"the {e.label} on {e.site} did not change the activation it targets",
        expected="an activation that differs after the intervention",
        seen="identical values before and after (e.g. a mean ablation of an activation that is constant "
             "across the batch, or zero-ablating an activation that is already zero)",
        fix="choose another intervention (pi.Zero(), pi.Resample(source=...)) or another site/positions")


_MEMO_LIMIT = 1024


def _key(tokens: torch.Tensor) -> str:
    t = tokens.detach().to("cpu").contiguous()
    return hashlib.sha1(t.numpy().tobytes() + str(tuple(t.shape)).encode()).hexdigest()


def remember(subject: Subject, tokens: torch.Tensor, site: Site, act: torch.Tensor) -> None:
    """Record ``act`` as the clean activation of ``site`` (all positions) on ``tokens``, read by a pass
    that ran anyway, so :func:`capture` need not run another."""
    memo = subject.clean_memo
    if len(memo) > _MEMO_LIMIT:
        memo.clear()
    memo[(_key(tokens), site)] = act.detach().clone()


def capture(subject: Subject, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Clean activations of ``sites`` (all positions) on ``tokens``: ``{site: [batch, seq, d]}``. Memoised."""
    memo = subject.clean_memo
    key = _key(tokens)
    missing = [s for s in sites if (key, s) not in memo]
    if missing and len(memo) + len(missing) > _MEMO_LIMIT:
        memo.clear()  # before reading: clearing after would drop the sites that were already memoised
        missing = list(sites)
    if missing:
        got: dict[Site, list[Any]] = {s: [] for s in missing}
        for rows in chunks(tokens.shape[0]):
            handles = []
            for s in missing:
                def read(act: Any, s: Site = s) -> None:
                    got[s].append(act.detach().clone())
                    return None
                handles.append(install(subject, s, read))
            with hooks(handles):
                forward(subject, tokens[rows.to(tokens.device)])
        for s in missing:
            if not got[s]:
                raise InterventionNoOpError(f"reading {s} captured nothing", expected="the hook to fire",
                                            seen="no call", fix="check the adapter for this model")
            memo[(key, s)] = torch.cat(got[s])
    return {s: memo[(key, s)] for s in sites}


ATTENTIONS = {"self": "attentions", "encoder": "encoder_attentions", "decoder": "decoder_attentions",
              "cross": "cross_attentions"}


def attentions(subject: Subject, tokens: torch.Tensor, layers: list[int] | None = None, *,
               switch: bool = True, which: str = "self", decoder: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Attention weights per layer (all layers, or ``layers``): each ``[batch, heads, query, key]`` float32 on the
    CPU. Switches SDPA/flash attention to eager (with a warning) or, with ``switch=False``, refuses.

    ``which``: ``"self"`` for a model with one stack; for an encoder-decoder model ``"encoder"`` (encoder
    self-attention), ``"decoder"`` (decoder self-attention) or ``"cross"`` (the decoder's queries over the encoder's
    tokens: ``[batch, heads, decoder position, encoder token]``), as ``output_attentions=True`` returns them. The
    decoder reads ``decoder`` ``[batch, t]`` (default: its start token)."""
    if which not in ATTENTIONS:
        raise InterpError(f"unknown attention {which!r}", expected=f"one of {', '.join(ATTENTIONS)}",
                          seen=repr(which), fix="e.g. which='cross'")
    if subject.encoder_decoder and which == "self":
        raise InterpError("an encoder-decoder model has several attentions", expected="which='encoder', 'decoder' "
                          "or 'cross'", seen="which='self'", fix="say which attention to read")
    if not subject.encoder_decoder and which != "self":
        raise InterpError(f"{which} attention needs an encoder-decoder model",
                          expected="a model with an encoder and a decoder (T5, BART)",
                          seen=f"a {'decoder-only' if subject.causal else 'encoder-only'} model with self-attention "
                               "only", fix="read its self-attention (the default)")
    stack = "decoder" if which in ("decoder", "cross") else None
    n = subject.n_decoder_layers if stack else subject.n_layers
    layers_l = list(range(n)) if layers is None else list(layers)
    for layer in layers_l:
        check_layer(subject, layer, stack=stack)
    subject.ensure_eager(switch=switch)
    parts: list[list[torch.Tensor]] = [[] for _ in layers_l]
    for rows in chunks(tokens.shape[0]):
        extra: dict[str, Any] = {} if decoder is None else {"decoder_input_ids": decoder[rows.to(decoder.device)]}
        out = forward(subject, tokens[rows.to(tokens.device)], output_attentions=True, **extra)
        att = getattr(out, ATTENTIONS[which], None)
        if not att or any(att[layer] is None for layer in layers_l):
            raise InterpError("the model returned no attention weights",
                              expected="attentions from output_attentions=True",
                              seen=f"attentions={type(att).__name__}, attn_implementation="
                                   f"{subject.attn_implementation}",
                              fix="load with attn_implementation='eager'")
        for i, layer in enumerate(layers_l):
            parts[i].append(att[layer].float().cpu())
    return [torch.cat(p) for p in parts]


def embed(subject: Subject, tokens: torch.Tensor) -> torch.Tensor:
    """The input embeddings of ``tokens`` (no gradient)."""
    with torch.no_grad():
        return embedding(subject)(tokens).detach()


def embedding(subject: Subject) -> Any:
    """The model's input embedding module (an encoder-decoder model's encoder's), or an InterpError if it has
    none."""
    model = subject.model
    emb = model.get_encoder().get_input_embeddings() if subject.encoder_decoder else model.get_input_embeddings()
    if emb is None:
        raise InterpError("the model has no input embedding module", expected="get_input_embeddings()",
                          seen="None", fix="use a model whose input embeddings transformers can locate")
    return emb


def gradient(subject: Subject, embeds: torch.Tensor,
             objective: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example ``f = objective(logits)`` of a pass from input ``embeds`` and its gradient with respect to
    them: ``(grad [batch, seq, d], f [batch])``."""
    with torch.enable_grad():
        x = embeds.clone().requires_grad_(True)
        f = objective(finite(logits_of(forward(subject, embeds=x, grad=True)), "gradient run"))
        (g,) = torch.autograd.grad(f.sum(), x)
    return g.detach(), f.detach()


def backward(subject: Subject, tokens: torch.Tensor, handles: list[Any],
             objective: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """One forward pass of ``tokens`` with ``handles`` installed (hooks that retain the gradients they need) and a
    backward pass of ``objective(logits)``; the input embeddings are a leaf, so gradients reach every site even
    when the weights are frozen."""
    emb = embedding(subject)
    leaf = emb.register_forward_hook(lambda m, a, o: o.detach().requires_grad_())
    with torch.enable_grad(), hooks([leaf, *handles]):
        objective(finite(logits_of(forward(subject, tokens, grad=True)), "gradient run")).backward()


def routes(subject: Subject, tokens: torch.Tensor, layers: list[int]) -> dict[int, list[Any]]:
    """The router's choices (:class:`~.hooks.Route`, one per batch chunk) at each MoE layer in ``layers``."""
    for layer in layers:
        subject.adapter.router(layer)  # a dense model or a missing router fails here
    got: dict[int, list[Any]] = {layer: [] for layer in layers}
    for rows in chunks(tokens.shape[0]):
        handles = []
        for layer in layers:
            def read(route: Any, layer: int = layer) -> None:
                got[layer].append(route.clone())
                return None
            handles.append(install_router(subject, layer, read))
        with hooks(handles):
            forward(subject, tokens[rows.to(tokens.device)])
    return got


def intervened_logits(subject: Subject, tokens: torch.Tensor, rows: torch.Tensor, edits: list[Edit], batch: int, *,
                      embed_delta: torch.Tensor | None = None, what: str = "intervened run") -> torch.Tensor:
    """The finite logits of one pass of ``tokens`` (the examples ``rows`` of a ``batch``) with ``edits`` applied
    and, if given, ``embed_delta`` added to the input embeddings (as causal tracing's noise is)."""
    handles = install_edits(subject, edits, rows, batch)
    if embed_delta is not None:
        handles.append(embedding(subject).register_forward_hook(
            lambda m, a, out: out + embed_delta.to(device=out.device, dtype=out.dtype)))
    with hooks(handles):
        return logits(subject, tokens, what=what)


def module_inputs(subject: Subject, tokens: torch.Tensor, module: Any) -> torch.Tensor:
    """The input of ``module`` (its first positional argument) on ``tokens``: ``[batch, seq, d_in]``, no gradient."""
    got: list[torch.Tensor] = []

    def read(mod: Any, args: tuple[Any, ...]) -> None:
        got.append(args[0].detach().clone())
        return None
    for rows in chunks(tokens.shape[0]):
        with hooks([module.register_forward_pre_hook(read)]):
            forward(subject, tokens[rows.to(tokens.device)])
    if not got:
        raise InterventionNoOpError("reading a module's input captured nothing", expected="the hook to fire",
                                    seen="no call", fix="check the adapter for this model")
    return torch.cat(got)


def fit_delta(subject: Subject, tokens: torch.Tensor, module: Any, where: torch.Tensor,
              objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dim: int, *, steps: int,
              lr: float, stop_below: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """One vector ``delta [dim]`` added to ``module``'s output at the positions ``where [batch, seq]``, fitted by
    Adam to minimise ``objective(logits, delta)`` over the whole batch (at most ``steps`` steps; it stops once the
    loss is below ``stop_below``); returns it and the loss per step. Only ``delta`` is optimised: the weights get
    no gradient and are never changed."""
    delta = torch.zeros(dim, device=tokens.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    mask = where.to(tokens.device)[..., None]

    def add(mod: Any, args: Any, out: Any) -> Any:
        hidden = out[0] if isinstance(out, tuple) else out
        new = hidden + mask.to(hidden.dtype) * delta.to(hidden.dtype)
        return (new, *out[1:]) if isinstance(out, tuple) else new
    losses = []
    for _ in range(steps):
        with hooks([module.register_forward_hook(add)]):
            out = forward(subject, tokens, grad=True)
        loss = objective(finite(logits_of(out), "edit optimisation"), delta)
        losses.append(float(loss.detach()))
        if losses[-1] < stop_below:
            break
        (g,) = torch.autograd.grad(loss, [delta])
        delta.grad = g
        opt.step()
    return delta.detach(), losses
