"""Adapters: where each kind of site lives in an architecture's module tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pluggy

from ..core import hookspecs
from ..core.errors import InterpError

_active_hook: list[Any] = []  # the pytest session's hook caller, while a session runs

class _PluginManager(pluggy.PluginManager):
    """Accepts unmarked ``pytest_interp_*`` functions as hook implementations, as conftest files do."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("pytest_interp_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


_pm = _PluginManager("pytest")
_pm.add_hookspecs(hookspecs)


def register(plugin: object) -> None:
    """Register an object with a ``pytest_interp_adapter(model)`` hook for use outside pytest."""
    _pm.register(plugin)


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Adapter:
    """Where sites live in one architecture. Paths are dotted attribute paths (``"model.layers"``).

    Args:
        name: the architecture's name, as shown in reports.
        layers: path from the model to the list of transformer blocks. Several candidates may be
            given separated by ``|``; the first that exists is used (``"model.layers|layers"``).
        attn_out: path from a block to the attention out-projection: its input is the heads' outputs
            concatenated, its output is the attention block's contribution to the residual stream.
        mlp: path from a block to the module whose output is the MLP (or MoE block) contribution.
        router: path from a block to a MoE router (``None`` for dense models).
        experts: path from a block to the fused experts module (``None`` for dense models).
        final_norm: path from the model to the final norm, if any (the logits end of a path, ``pi.path``).
        attn_norm, mlp_norm: paths from a block to the norms that read the residual stream before the attention
            and before the MLP, in a pre-norm model whose residual stream is a plain sum of its components.
            Path patching (``pi.path``) needs them; ``None`` refuses it (post-norm models such as BERT).
        causal: whether the model is a causal (left-to-right) language model.
        decoder_layers, decoder_attn_out, decoder_mlp, cross_attn_out: for an encoder-decoder model (T5, BART), the
            decoder's blocks (from the model) and, from a decoder block, its self-attention out-projection, its MLP
            and its cross-attention out-projection (whose input holds the cross-attention heads' outputs). ``layers``,
            ``attn_out`` and ``mlp`` then name the encoder's.
        n_layers, n_heads, head_dim, n_experts, top_k: read from the config when not given.
    """

    name: str
    layers: str
    attn_out: str
    mlp: str
    router: str | None = None
    experts: str | None = None
    final_norm: str | None = None
    attn_norm: str | None = None
    mlp_norm: str | None = None
    causal: bool = True
    decoder_layers: str | None = None
    decoder_attn_out: str | None = None
    decoder_mlp: str | None = None
    cross_attn_out: str | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    head_dim: int | None = None
    n_experts: int | None = None
    top_k: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def bind(self, model: Any) -> BoundAdapter:
        """Resolve the paths on ``model`` and read its sizes."""
        return BoundAdapter(self, model)


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        if part.isdigit():
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def _resolve(root: Any, paths: str, what: str, arch: str) -> Any:
    for path in paths.split("|"):
        try:
            return _get_path(root, path)
        except (AttributeError, IndexError, TypeError):
            continue
    raise InterpError(f"the {arch} adapter cannot find the {what} at '{paths}'",
                      expected=f"a module at '{paths}' on {type(root).__name__}",
                      seen=f"top-level children: {[n for n, _ in root.named_children()][:8]}",
                      fix="register an adapter for this model with the pytest_interp_adapter hook")


class BoundAdapter:
    """An adapter resolved on one model: module look-ups and sizes."""

    def __init__(self, spec: Adapter, model: Any) -> None:
        self.spec = spec
        self.model = model
        config = getattr(model, "config", None)
        self.blocks = _resolve(model, spec.layers, "transformer blocks", spec.name)
        self.n_layers = spec.n_layers or len(self.blocks)
        self.n_heads = spec.n_heads or _first_attr(config, ("num_attention_heads", "n_head", "num_heads"))
        hidden = _first_attr(config, ("hidden_size", "n_embd", "d_model"))
        self.head_dim: int = spec.head_dim or _first_attr(config, ("head_dim", "d_kv")) or (
            hidden // self.n_heads if hidden and self.n_heads else 0)
        self.hidden_size = hidden
        self.n_experts = spec.n_experts or _first_attr(config, ("num_local_experts", "num_experts"))
        self.top_k = spec.top_k or _first_attr(config, ("num_experts_per_tok",))
        self.causal = spec.causal
        self.encoder_decoder = spec.decoder_layers is not None
        self.decoder_blocks = (_resolve(model, spec.decoder_layers, "decoder blocks", spec.name)
                               if spec.decoder_layers is not None else None)
        self.n_decoder_layers = len(self.decoder_blocks) if self.decoder_blocks is not None else 0
        if not self.n_heads or not self.head_dim:
            raise InterpError(f"cannot read the head count of this {spec.name} model",
                              expected="num_attention_heads (or n_head) in the config",
                              seen=f"config {type(config).__name__}",
                              fix="pass n_heads= and head_dim= to pi.Adapter")

    @property
    def name(self) -> str:
        return self.spec.name

    def _blocks(self, stack: str | None) -> Any:
        if stack == "decoder":
            if self.decoder_blocks is None:
                raise InterpError(f"this {self.spec.name} model has no decoder stack",
                                  expected="an encoder-decoder model (T5, BART) for a decoder site",
                                  seen=f"a {'causal' if self.causal else 'encoder'} {self.spec.name} model",
                                  fix="drop stack='decoder': this model's sites are pi.head(l, h), pi.mlp(l), ...")
            return self.decoder_blocks
        return self.blocks

    def block(self, layer: int, stack: str | None = None) -> Any:
        return self._blocks(stack)[layer]

    def layers_of(self, stack: str | None) -> int:
        """How many blocks ``stack`` has (the decoder's for ``"decoder"``, else the encoder's or the only one)."""
        return self.n_decoder_layers if stack == "decoder" else self.n_layers

    def attn_out(self, layer: int, stack: str | None = None) -> Any:
        path = self.spec.decoder_attn_out if stack == "decoder" else self.spec.attn_out
        return _resolve(self.block(layer, stack), str(path), "attention out-projection", self.spec.name)

    def cross_attn_out(self, layer: int) -> Any:
        """The out-projection of decoder block ``layer``'s cross-attention (its input: the heads' outputs)."""
        if self.spec.cross_attn_out is None:
            raise InterpError(f"this {self.spec.name} model has no cross-attention",
                              expected="an encoder-decoder model (T5, BART) for pi.cross_head / pi.cross_attn",
                              seen=f"a {'decoder-only' if self.causal else 'encoder-only'} {self.spec.name} model",
                              fix="use pi.head(l, h) / pi.attn(l) for its self-attention")
        return _resolve(self.block(layer, "decoder"), self.spec.cross_attn_out, "cross-attention out-projection",
                        self.spec.name)

    def mlp(self, layer: int, stack: str | None = None) -> Any:
        path = self.spec.decoder_mlp if stack == "decoder" else self.spec.mlp
        return _resolve(self.block(layer, stack), str(path), "MLP", self.spec.name)

    def attention(self, layer: int) -> Any:
        """The attention module: the parent of the out-projection."""
        parent = self.spec.attn_out.rsplit(".", 1)[0] if "." in self.spec.attn_out else ""
        if not parent:
            raise InterpError(f"the {self.spec.name} adapter names no attention module",
                              expected="attn_out as a dotted path inside the attention module (e.g. self_attn.o_proj)",
                              seen=repr(self.spec.attn_out), fix="register an adapter whose attn_out is nested")
        return _resolve(self.blocks[layer], parent, "attention module", self.spec.name)

    def norm(self, layer: int, where: str) -> Any:
        """The pre-norm reading the residual stream into block ``layer``'s attention (``where="attn"``) or MLP
        (``"mlp"``), or the final norm (``where="final"``); an InterpError for a model without one."""
        path = {"attn": self.spec.attn_norm, "mlp": self.spec.mlp_norm, "final": self.spec.final_norm}[where]
        if path is None:
            raise InterpError(f"path patching needs the {where} norm of this {self.spec.name} model",
                              expected="a pre-norm model whose residual stream is the sum of its components "
                                       "(Llama, Mistral, Qwen2, Mixtral, GPT-2)",
                              seen=f"the {self.spec.name} adapter names no {where} norm (a post-norm or "
                                   f"parallel-residual block)",
                              fix="path patching is defined for pre-norm models; for others use node-level claims "
                                  "(pi.ablate, pi.patch) or register an adapter with attn_norm/mlp_norm/final_norm")
        root = self.model if where == "final" else self.blocks[layer]
        return _resolve(root, path, f"{where} norm", self.spec.name)

    def router(self, layer: int) -> Any:
        if self.spec.router is None:
            raise InterpError(f"{self.spec.name} has no MoE router", expected="a mixture-of-experts model",
                              seen=f"a dense {self.spec.name} model", fix="use pi.mlp(layer) for dense MLPs")
        try:
            return _get_path(self.blocks[layer], self.spec.router)
        except AttributeError:
            raise InterpError(f"layer {layer} of this {self.spec.name} model has no router",
                              expected=f"a MoE block at '{self.spec.router}'", seen="a dense MLP layer",
                              fix="pick a layer whose MLP is a mixture of experts") from None

    def experts(self, layer: int) -> Any:
        if self.spec.experts is None:
            raise InterpError(f"{self.spec.name} has no experts", expected="a mixture-of-experts model",
                              seen=f"a dense {self.spec.name} model", fix="use pi.mlp(layer) for dense MLPs")
        self.router(layer)
        return _get_path(self.blocks[layer], self.spec.experts)


_LLAMA: dict[str, Any] = dict(layers="model.layers|layers", attn_out="self_attn.o_proj", mlp="mlp",
                              final_norm="model.norm|norm", attn_norm="input_layernorm",
                              mlp_norm="post_attention_layernorm")
_MOE: dict[str, Any] = dict(_LLAMA, router="mlp.gate", experts="mlp.experts")

BUILTIN: dict[str, Adapter] = {
    "gpt2": Adapter("gpt2", layers="transformer.h|h", attn_out="attn.c_proj", mlp="mlp",
                    final_norm="transformer.ln_f|ln_f", attn_norm="ln_1", mlp_norm="ln_2"),
    "llama": Adapter("llama", **_LLAMA),
    "mistral": Adapter("mistral", **_LLAMA),
    "qwen2": Adapter("qwen2", **_LLAMA),
    "mixtral": Adapter("mixtral", **_MOE),
    "qwen2_moe": Adapter("qwen2_moe", **_MOE),
    "olmoe": Adapter("olmoe", **_MOE),
    "gpt_neox": Adapter("gpt_neox", layers="gpt_neox.layers|layers", attn_out="attention.dense", mlp="mlp",
                        final_norm="gpt_neox.final_layer_norm|final_layer_norm"),
    "bert": Adapter("bert", layers="bert.encoder.layer|encoder.layer", attn_out="attention.output.dense",
                    mlp="output.dense", causal=False),
    "t5": Adapter("t5", layers="encoder.block", attn_out="layer.0.SelfAttention.o", mlp="layer.1.DenseReluDense",
                  decoder_layers="decoder.block", decoder_attn_out="layer.0.SelfAttention.o",
                  decoder_mlp="layer.2.DenseReluDense", cross_attn_out="layer.1.EncDecAttention.o", causal=False),
    "bart": Adapter("bart", layers="model.encoder.layers", attn_out="self_attn.out_proj", mlp="fc2",
                    decoder_layers="model.decoder.layers", decoder_attn_out="self_attn.out_proj", decoder_mlp="fc2",
                    cross_attn_out="encoder_attn.out_proj", causal=False),
}

_HOW_TO_REGISTER = (
    "register one from a conftest.py:\n"
    "              def pytest_interp_adapter(model):\n"
    "                  if model.config.model_type == 'mymodel':\n"
    "                      return pi.Adapter(name='mymodel', layers='model.blocks', attn_out='attn.out_proj', "
    "mlp='mlp')")


def spec_for_config(config: Any) -> Adapter | None:
    """The built-in adapter for a config without loading the model, or None when a user hook might decide
    (hooks see the model object) or the architecture is not built in."""
    callers: tuple[Any, ...] = (*_active_hook, _pm.hook.pytest_interp_adapter)
    for caller in callers:
        if caller.get_hookimpls():
            return None
    return BUILTIN.get(str(getattr(config, "model_type", "")))


def config_sizes(spec: Adapter, config: Any) -> dict[str, Any]:
    """Layer, head and expert counts from the config (as BoundAdapter reads them), None where unknown."""
    return {"n_layers": spec.n_layers or _first_attr(config, ("num_hidden_layers", "n_layer", "num_layers")),
            "n_heads": spec.n_heads or _first_attr(config, ("num_attention_heads", "n_head", "num_heads")),
            "n_experts": spec.n_experts or _first_attr(config, ("num_local_experts", "num_experts")),
            "top_k": spec.top_k or _first_attr(config, ("num_experts_per_tok",))}


def adapter_for(model: Any) -> BoundAdapter:
    """Find the adapter for ``model``: user hooks first (pytest's, then pi.adapters.register), then built-ins."""
    callers: tuple[Any, ...] = (*_active_hook, _pm.hook.pytest_interp_adapter)
    for caller in callers:
        found = caller(model=model)
        if found is not None:
            if not isinstance(found, Adapter):
                raise InterpError("a pytest_interp_adapter hook returned something that is not an Adapter",
                                  expected="pi.Adapter(...) or None", seen=type(found).__name__,
                                  fix="return pi.Adapter(name=..., layers=..., attn_out=..., mlp=...)")
            return found.bind(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in BUILTIN:
        return BUILTIN[model_type].bind(model)
    raise InterpError(f"no adapter for architecture '{model_type or type(model).__name__}'",
                      expected=f"one of: {', '.join(sorted(BUILTIN))}, or a registered adapter",
                      seen=f"{type(model).__name__} (model_type={model_type!r})", fix=_HOW_TO_REGISTER)
