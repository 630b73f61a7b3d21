"""Subjects: a loaded model with its tokenizer and adapter, its fingerprint, and validation of the inputs it is
given. A subject describes the model; running it is the engine's job (:mod:`pytest_interp.engine.runner`)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..core.batch import PAD, pad, real
from ..core.cache import current
from ..core.errors import InterpError, InterpWarning
from ..core.settings import settings
from .adapters import BoundAdapter, _first_attr, adapter_for, config_sizes, spec_for_config

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


class Subject:
    """A model under test: the torch model, its tokenizer (optional) and the adapter that locates its sites.

    Build one with :func:`pytest_interp.load`.
    """

    #: strings are tokenised with the tokenizer's special tokens ([CLS]/[SEP], BOS), as the model saw in training
    add_special_tokens: bool = True

    def __init__(self, model: Any = None, tokenizer: Any = None, *, path: str | None = None,
                 loader: Any = None, config: Any = None, device: str | None = None, dtype_key: str | None = None,
                 attn_implementation: str = "eager", weights_key: str | None = None,
                 class_name: str | None = None) -> None:
        self._model = model
        self._loader = loader
        self.tokenizer = tokenizer
        self.path = path
        self.config = model.config if model is not None else config
        self._adapter: BoundAdapter | None = adapter_for(model) if model is not None else None
        self._spec = spec_for_config(config) if model is None else None
        self._sizes = config_sizes(self._spec, config) if self._spec is not None else {}
        self._device = device
        self._dtype_key = dtype_key
        self._attn = attn_implementation
        self._loaded_state: tuple[Any, ...] | None = None
        self._fingerprint: str | None = None
        self._fingerprint_state: tuple[Any, ...] = ()
        self._steady: str | None = None  # the fingerprint while the library itself runs many experiments
        self._file_fingerprint: str | None = None
        self._weights_key = weights_key  # how a checkpoint loads (class, dtype): with its files, fixes its weights
        self._class_name = class_name  # the class a checkpoint will load as, when known before loading
        self._identity: dict[str, Any] | None = None
        self.clean_memo: dict[tuple[Any, ...], Any] = {}
        self._keeps_logits: bool | None = None
        if model is None and (self._spec is None or not self._sizes.get("n_layers") or not self._sizes.get("n_heads")):
            self.model  # noqa: B018 - sizes or adapter need the model itself: load it now

    # loading -----------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The torch model; a subject loaded from a directory reads its weights on first use, so runs served
        entirely from the run cache never load them."""
        if self._model is None:
            model = self._loader()
            model.eval()
            if self._device is not None and not hasattr(model, "hf_device_map"):  # accelerate placed it
                model.to(self._device)
            self._model, self.config = model, model.config
            self._adapter = adapter_for(model)
            self._loaded_state = self._weights_state()
        return self._model

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    @property
    def adapter(self) -> BoundAdapter:
        self.model  # noqa: B018
        assert self._adapter is not None
        return self._adapter

    @property
    def adapter_spec(self) -> Any:
        return self._adapter.spec if self._adapter is not None else self._spec

    def _weights_state(self) -> tuple[Any, ...]:
        return (self._config_json(), tuple((t.data_ptr(), t._version) for t in self._model.state_dict().values()))

    def _config_json(self) -> str:
        return json.dumps({k: v for k, v in self.config.to_dict().items()
                           if not k.startswith("_") and k not in ("name_or_path", "transformers_version", "dtype",
                                                                   "torch_dtype", "attn_implementation",
                                                                   "architectures")}, sort_keys=True, default=str)

    # sizes -------------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self._adapter.n_layers if self._adapter is not None else int(self._sizes["n_layers"])

    @property
    def encoder_decoder(self) -> bool:
        """Whether the model has an encoder and a decoder that reads it through cross-attention (T5, BART)."""
        return bool(getattr(self.config, "is_encoder_decoder", False))

    @property
    def n_decoder_layers(self) -> int:
        """The decoder's block count of an encoder-decoder model (0 for others)."""
        if not self.encoder_decoder:
            return 0
        if self._adapter is not None:
            return self._adapter.n_decoder_layers
        return int(_first_attr(self.config, ("num_decoder_layers", "decoder_layers")) or self.n_layers)

    @property
    def decoder_start_id(self) -> int:
        """The token an encoder-decoder model's decoder starts from (the config's decoder_start_token_id)."""
        start = getattr(self.config, "decoder_start_token_id", None)
        if not isinstance(start, int):
            raise InterpError("this encoder-decoder model's config has no decoder_start_token_id",
                              expected="config.decoder_start_token_id (T5: the pad id; BART: </s>)",
                              seen=repr(start), fix="set model.config.decoder_start_token_id before pi.load")
        return start

    def decoder_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's input for a batch of encoder ``tokens`` of an encoder-decoder model: its start token, so
        metrics read the decoder's first prediction; for other models ``tokens`` themselves (what metrics score)."""
        if not self.encoder_decoder:
            return tokens
        return torch.full((tokens.shape[0], 1), self.decoder_start_id, dtype=torch.long, device=tokens.device)

    @property
    def n_heads(self) -> int:
        return self._adapter.n_heads if self._adapter is not None else int(self._sizes["n_heads"])

    @property
    def n_experts(self) -> int | None:
        return self._adapter.n_experts if self._adapter is not None else self._sizes.get("n_experts")

    @property
    def top_k(self) -> int | None:
        return self._adapter.top_k if self._adapter is not None else self._sizes.get("top_k")

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def causal(self) -> bool:
        """Whether the model reads left to right (a causal LM) rather than both ways (an encoder)."""
        return bool(self.adapter_spec.causal)

    @property
    def has_head(self) -> bool:
        """Whether the model computes logits (an LM or classification head), rather than hidden states only."""
        base = getattr(self.model, "base_model", self.model)
        return base is not self.model

    @property
    def filler_id(self) -> int:
        """The id fed to the model at padded positions (the config's pad id, else 0); never scored."""
        pad = getattr(self.config, "pad_token_id", None)
        return int(pad) if isinstance(pad, int) and 0 <= pad < self.vocab_size else 0

    @property
    def max_positions(self) -> int | None:
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, name, None)
            if value:
                return int(value)
        return None

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the input embeddings run on (for a model dispatched by accelerate, their
        execution device: offloaded weights sit on the meta device between uses)."""
        if self._model is None:
            return torch.device(self._device or "cpu")
        try:
            embed = self._model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            embed = None
        placed = getattr(getattr(embed, "_hf_hook", None), "execution_device", None)
        if placed is not None:
            return torch.device(placed)
        return next((p.device for p in self._model.parameters() if p.device.type != "meta"), torch.device("cpu"))

    @property
    def dtype_key(self) -> str:
        """The weights' dtype as reports and the run cache record it: for a checkpoint, the dtype requested of
        the loader or stored in its config (the same request on the same files loads the same dtype), else the
        tensors' dtype."""
        if self._dtype_key is not None:
            return self._dtype_key
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    @property
    def class_name(self) -> str:
        if self._model is not None:
            return type(self._model).__name__
        if self._class_name is not None:
            return self._class_name
        return str((getattr(self.config, "architectures", None) or ["?"])[0])

    @property
    def name(self) -> str:
        return self.path or getattr(self.config, "_name_or_path", "") or self.class_name

    @property
    def attn_implementation(self) -> str:
        if self._model is None:
            return self._attn
        return str(getattr(self.config, "_attn_implementation", None) or "eager")

    @property
    def fingerprint(self) -> str:
        """sha256 over the config and every tensor of the state dict (name, dtype, shape, bytes): identifies the
        weights, not their path or how they were loaded, so a checkpoint loaded from its directory and the same
        weights passed as a model object share cache entries and baselines.

        For a checkpoint whose weights are as loaded, the result is memoised in the run cache under the hashes
        of its files (config.json and the weight files) and how it loads (class, dtype), so a warm run need not
        load the weights. Once a weight tensor is replaced or modified in place (tracked by torch's version
        counters), it is recomputed from the tensors, so an edited model never matches its old cache entries."""
        if self._steady is not None:
            return self._steady
        if self._weights_key is not None and (self._model is None or self._weights_state() == self._loaded_state):
            if self._file_fingerprint is None:
                key = f"weights|{_files_fingerprint(Path(str(self.path)))}|{self._weights_key}"
                memo = current().file_hashes()
                if key not in memo:
                    memo[key] = _weights_fingerprint(self.model, self._config_json())
                    current().save_file_hashes(memo)
                self._file_fingerprint = memo[key]
            return self._file_fingerprint
        cfg = self._config_json()
        state = (cfg, tuple((t.data_ptr(), t._version) for t in self.model.state_dict().values()))
        if state != self._fingerprint_state:
            self._fingerprint, self._fingerprint_state = None, state
        if self._fingerprint is None:
            self._fingerprint = _weights_fingerprint(self.model, cfg)
        return self._fingerprint

    @contextmanager
    def steady(self) -> Iterator[None]:
        """Within: the weights are not edited (only the library's own code runs, as in a sweep), so the
        fingerprint is taken once instead of re-checking every tensor for every site."""
        if self._steady is not None:
            yield
            return
        self._steady = self.fingerprint
        try:
            yield
        finally:
            self._steady = None

    def identity(self) -> dict[str, Any]:
        """What identifies the model and how it was run: the controls every report records."""
        fingerprint = self.fingerprint
        current = (fingerprint, self.attn_implementation, str(self.device))
        if self._identity is not None and (self._identity["fingerprint"], self._identity["attn_implementation"],
                                           self._identity["device"]) == current:
            return dict(self._identity)
        import transformers

        self._identity = {"name": self.name, "fingerprint": fingerprint, "architecture": self.adapter_spec.name,
                "class": self.class_name, "layers": self.n_layers, "heads": self.n_heads,
                "experts": self.n_experts, "top_k": self.top_k, "vocab_size": self.vocab_size,
                "max_positions": self.max_positions, "dtype": self.dtype_key.replace("torch.", ""),
                "device": str(self.device), "attn_implementation": self.attn_implementation,
                "torch": torch.__version__, "transformers": transformers.__version__}
        if self.encoder_decoder:  # "layers" counts the encoder's blocks
            self._identity["decoder_layers"] = self.n_decoder_layers
        return dict(self._identity)

    def __repr__(self) -> str:
        layers = (f"{self.n_layers} encoder + {self.n_decoder_layers} decoder layers" if self.encoder_decoder else
                  f"{self.n_layers} layers")
        return (f"<Subject {self.name}: {self.adapter_spec.name}, {layers} x {self.n_heads} heads, "
                f"vocab {self.vocab_size}, attention {self.attn_implementation}>")

    # inputs ------------------------------------------------------------------------------------------
    def tokens(self, inputs: Any, *, name: str = "inputs", add_special_tokens: bool | None = None) -> torch.Tensor:
        """Validate ``inputs`` and return token ids ``[batch, seq]`` on the model's device.

        ``inputs``: a tensor of token ids, lists of ids (of different lengths: right-padded with
        :data:`~pytest_interp.core.batch.PAD`), or strings, tokenised as the model's own tokenizer call does
        (special tokens such as [CLS]/[SEP] or BOS included, unless ``add_special_tokens=False`` here or in
        :func:`load`)."""
        if hasattr(inputs, "tokens") and not isinstance(inputs, (str, torch.Tensor)):
            inputs = inputs.tokens
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs):
            special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
            inputs = self._tokenize(list(inputs), name, special)
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise InterpError(f"{name} is an empty batch", expected="at least one example",
                                  seen="0 examples", fix=f"pass a non-empty batch as {name}")
            if any(not hasattr(x, "__len__") for x in inputs):
                raise InterpError(f"{name} is not a batch of token sequences", expected="lists of token ids",
                                  seen=f"items of type {sorted({type(x).__name__ for x in inputs})}",
                                  fix="pass [[ids of example 1], [ids of example 2], ...] or strings")
            rows = [list(x.tolist() if hasattr(x, "tolist") else x) for x in inputs]
            empty = [i for i, r in enumerate(rows) if not r]
            if empty:
                raise InterpError(f"{name} has an empty example", expected="at least one token per example",
                                  seen=f"example {empty[0]} has no tokens", fix="drop empty examples")
            inputs = pad(rows)
        if hasattr(inputs, "__array__") and not isinstance(inputs, torch.Tensor):
            inputs = torch.as_tensor(inputs)
        if not isinstance(inputs, torch.Tensor):
            raise InterpError(f"{name} has an unsupported type", expected="token ids [batch, seq] or a list of "
                              "strings", seen=type(inputs).__name__, fix="pass a LongTensor of token ids")
        if inputs.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
            raise InterpError(f"{name} are not token ids", expected="an integer tensor",
                              seen=f"dtype {inputs.dtype}", fix="pass token ids (torch.long)")
        if inputs.dim() == 1:
            inputs = inputs[None]
        if inputs.dim() != 2:
            raise InterpError(f"{name} has the wrong shape", expected="[batch, seq]", seen=str(tuple(inputs.shape)),
                              fix="pass a 2-d tensor of token ids")
        if inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise InterpError(f"{name} is an empty batch", expected="at least one example of at least one token",
                              seen=f"shape {tuple(inputs.shape)}", fix=f"pass a non-empty batch as {name}")
        self._check_padding(inputs, name)
        ids = inputs[real(inputs)]
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise InterpError(f"{name} has token ids outside the vocabulary",
                              expected=f"ids in [0, {self.vocab_size - 1}] ({PAD} only as right padding)",
                              seen=f"ids in [{lo}, {hi}]", fix="check the tokenizer matches the model")
        if self.max_positions is not None and inputs.shape[1] > self.max_positions:
            raise InterpError(f"{name} are longer than the model's context",
                              expected=f"at most {self.max_positions} tokens",
                              seen=f"{inputs.shape[1]} tokens", fix="shorten the inputs")
        return inputs.to(device=self.device, dtype=torch.long)

    @staticmethod
    def _check_padding(inputs: torch.Tensor, name: str) -> None:
        """Padding (:data:`PAD`) may only close an example (right padding), and no example is all padding."""
        is_pad = ~real(inputs)
        if not bool(is_pad.any()):
            return
        if bool(is_pad[:, 0].any()):
            ex = int(is_pad[:, 0].nonzero()[0])
            raise InterpError(f"{name} has an example that starts with padding" + (
                              " (it is all padding)" if bool(is_pad[ex].all()) else ""),
                              expected=f"real tokens first, padding ({PAD}) only at the end of an example",
                              seen=f"example {ex}", fix="drop empty examples; pad on the right (pass lists of "
                              "different lengths and they are padded for you)")
        inner = is_pad[:, :-1] & ~is_pad[:, 1:]
        if bool(inner.any()):
            ex = int(inner.any(1).nonzero()[0])
            raise InterpError(f"{name} has padding inside an example", expected=f"padding ({PAD}) only at the end",
                              seen=f"example {ex} has real tokens after padding",
                              fix="pad on the right (pass lists of different lengths and they are padded for you)")

    def _tokenize(self, texts: list[str], name: str, special: bool = True) -> list[list[int]]:
        if self.tokenizer is None:
            raise InterpError(f"{name} are strings but this subject has no tokenizer",
                              expected="a tokenizer, or token ids", seen=f"{len(texts)} strings",
                              fix="pass tokenizer= to pi.load, ship tokenizer.json with the model, or pass ids")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise InterpError(f"{name} has an empty string", expected="some text in every example",
                              seen=f"example {empty[0]}: {texts[empty[0]]!r}", fix="drop empty examples")
        out = []
        for t in texts:
            try:
                out.append(list(self.tokenizer(t, add_special_tokens=special)["input_ids"]))
            except Exception as exc:  # noqa: BLE001 - a tokenizer's own errors are re-raised with context
                raise InterpError(f"the tokenizer cannot encode an example of {name}",
                                  expected="text the tokenizer's vocabulary covers", seen=f"{t[:60]!r}: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                                  fix="use words in the model's vocabulary, or pass token ids") from None
        return out

    def token_ids(self, answers: Any, *, name: str = "answer") -> torch.Tensor:
        """One token id per example, from ids or single-token strings."""
        if isinstance(answers, str):
            answers = [answers]
        if isinstance(answers, (list, tuple)) and answers and all(isinstance(a, str) for a in answers):
            if self.tokenizer is None:
                raise InterpError(f"{name} is given as strings but this subject has no tokenizer",
                                  expected="token ids, or a tokenizer", seen=repr(answers[:3]),
                                  fix="pass tokenizer= to pi.load or give token ids")
            ids = []
            for a in answers:
                try:
                    got = self.tokenizer(a, add_special_tokens=False)["input_ids"]
                except Exception as exc:  # noqa: BLE001 - a tokenizer's own errors are re-raised with context
                    raise InterpError(f"{name} {a!r} cannot be tokenised", expected="a word in the model's "
                                      "vocabulary", seen=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                                      fix="use a word the tokenizer knows, or pass its token id") from None
                unk = getattr(self.tokenizer, "unk_token_id", None)
                if not got or (unk is not None and unk in got):
                    raise InterpError(f"{name} {a!r} is not in the vocabulary", expected="a known word",
                                      seen=f"token ids {got} (unknown: {unk})",
                                      fix="use a word the tokenizer knows, or pass its token id")
                if len(got) != 1:
                    raise InterpError(f"{name} {a!r} is not a single token", expected="one token per answer",
                                      seen=f"{len(got)} tokens {got}", fix="use a single-token answer")
                ids.append(got[0])
            answers = ids
        t = torch.as_tensor(answers, dtype=torch.long).reshape(-1).to(self.device)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.vocab_size):
            raise InterpError(f"{name} has token ids outside the vocabulary",
                              expected=f"ids in [0, {self.vocab_size - 1}]",
                              seen=f"ids in [{int(t.min())}, {int(t.max())}]", fix="check the answer ids")
        return t

    # running -----------------------------------------------------------------------------------------
    def head_kwargs(self, score: Any, start: int = 0) -> dict[str, Any]:
        """Forward arguments that run the LM head only at the positions ``score`` reads (``score.reads``, a range
        ``[lo, hi)`` of a ``score.seq``-token input), for a pass over positions ``[start, seq)`` that covers some
        of them. The logits then cover ``[max(lo, start), hi)``; ``{}`` (every position) when the metric reads
        them all or the model cannot skip its head."""
        reads = getattr(score, "reads", None)
        if reads is None or not self.adapter.causal:
            return {}
        if self._keeps_logits is None:
            try:
                self._keeps_logits = "logits_to_keep" in inspect.signature(type(self.model).forward).parameters
            except (TypeError, ValueError):
                self._keeps_logits = False
        if not self._keeps_logits:
            return {}
        lo, hi = reads
        if hi <= start:
            return {"logits_to_keep": 1}  # the pass changes no logit the metric reads: compute as few as possible
        first = max(lo, start)
        if hi == score.seq:
            return {"logits_to_keep": hi - first}  # the last positions
        return {"logits_to_keep": torch.arange(first - start, hi - start, device=self.device)}

    def ensure_eager(self, *, switch: bool = True) -> None:
        """Make attention weights available: switch SDPA/flash attention to eager, saying so, or refuse."""
        impl = self.attn_implementation
        if impl == "eager":
            return
        if not switch:
            raise InterpError(f"attention patterns requested from a model using '{impl}' attention",
                              expected="eager attention (SDPA and flash kernels return no attention weights)",
                              seen=f"attn_implementation={impl!r}",
                              fix="load with pi.load(..., attn_implementation='eager') or allow the switch")
        try:
            self.model.set_attn_implementation("eager")
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise InterpError("cannot switch this model to eager attention", expected="a transformers model "
                              "that supports attn_implementation='eager'", seen=f"{type(exc).__name__}: {exc}",
                              fix="load the model with attn_implementation='eager'") from exc
        warnings.warn(f"switched {self.name} from '{impl}' to eager attention to read attention weights "
                      f"(SDPA returns none); numbers are unchanged up to float rounding", InterpWarning,
                      stacklevel=3)


def load(path_or_model: Any, tokenizer: Any = None, *, attn_implementation: str = "eager",
         device: str | None = None, dtype: Any = None, model_class: Any = None, allow_random_heads: bool = False,
         device_map: Any = None, offload_folder: str | os.PathLike[str] | None = None) -> Subject:
    """Load a local Hugging Face checkpoint (through ``from_pretrained``), or wrap an in-memory model.

    A checkpoint loads as the class its config names (``architectures``), else as a causal LM, else as a masked
    LM: the first of these whose every weight is in the checkpoint. A class with weights the checkpoint lacks
    (a head it was not saved with, which ``from_pretrained`` would initialise at random) is refused with an
    :class:`InterpError`, for safetensors checkpoints here from the file headers, otherwise when the weights
    load. The weights themselves are read on first use.

    Args:
        path_or_model: a local model directory, or a ``transformers`` model object.
        tokenizer: a tokenizer object or a local tokenizer directory; by default the checkpoint's own, if it
            ships one.
        attn_implementation: attention kernel for checkpoints loaded from disk; ``"eager"`` (the default)
            keeps attention weights readable.
        device: torch device (default: the ``--interp-device`` setting).
        dtype: torch dtype to load weights in (default: as stored).
        model_class: the ``transformers`` class (or its name, e.g. ``"BertForMaskedLM"``) to load the
            checkpoint as, to choose its head.
        allow_random_heads: accept a class whose weights the checkpoint lacks, with those weights untrained
            (randomly initialised, with an :class:`InterpWarning`); effects through them measure noise.
        device_map: accelerate's placement of the modules (``{"model.layers.1": "disk", ...}``, ``"auto"``),
            passed to ``from_pretrained``; inputs go to the device the input embeddings run on.
        offload_folder: where modules mapped to ``"disk"`` are stored (default: a temporary directory, removed
            with the model; safetensors weights that need no conversion are read in place and not copied).
    """
    if isinstance(path_or_model, Subject):
        return path_or_model
    if device_map is not None and device is not None:
        raise InterpError("pi.load got both device= and device_map=", expected="one of them",
                          seen=f"device={device!r}, device_map={device_map!r}",
                          fix="drop device=: the device map places every module, and inputs go to the device "
                              "of the input embeddings")
    device = device or (None if device_map is not None else settings().device)
    if isinstance(path_or_model, (str, os.PathLike)):
        path = Path(path_or_model)
        if not (path / "config.json").is_file():
            raise InterpError(f"no model checkpoint at {str(path)!r}",
                              expected="a local directory with config.json and model weights",
                              seen="missing directory" if not path.exists() else
                              f"directory with {sorted(p.name for p in path.iterdir())[:8]}",
                              fix="pass the path of a local Hugging Face model directory (no hub downloads)")
        from transformers import AutoConfig

        if tokenizer is None and any((path / f).exists() for f in _TOKENIZER_FILES):
            tokenizer = path
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _tokenizer(tokenizer)
        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except (ValueError, OSError) as exc:
            raise InterpError(f"cannot read the config at {str(path)!r}", expected="a transformers config.json",
                              seen=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                              fix="check the checkpoint directory") from None
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype_key = str(dtype if dtype is not None else stored or "as stored").replace("torch.", "")
        classes, missing = _classes(path, config, model_class, allow_random_heads)
        # the memo of the fingerprint needs weights fixed by the files: never untrained ones, which are random
        fixed = not missing if missing is not None else not allow_random_heads
        import transformers

        names = ",".join(c.__name__ for c in classes)
        recipe = f"{names}|{dtype_key}|transformers {transformers.__version__}"
        options = {"attn_implementation": attn_implementation, "dtype": dtype, "device_map": device_map,
                   "offload_folder": offload_folder}
        subject = Subject(None, tokenizer, path=str(path), config=config, dtype_key=dtype_key,
                          device=device if device_map is None else _map_device(device_map),
                          attn_implementation=attn_implementation,
                          weights_key=recipe if fixed else None,
                          class_name=names if missing is not None else None,  # probed: one class
                          loader=lambda: _from_pretrained(path, classes, options, allow_random_heads))
        if device_map is not None and subject._device is None:
            subject.model  # noqa: B018 - only the placed model says where its inputs go
        return subject
    model = path_or_model
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise InterpError("pi.load got neither a path nor a transformers model",
                          expected="a local HF directory or a PreTrainedModel",
                          seen=type(model).__name__, fix="pass a path or a loaded model")
    given = [k for k, v in (("model_class", model_class), ("device_map", device_map),
                            ("offload_folder", offload_folder)) if v is not None]
    if given:
        raise InterpError(f"pi.load got {', '.join(given)} with a model object",
                          expected="these options only with a checkpoint directory, which they load",
                          seen=f"a {type(model).__name__} already loaded",
                          fix="pass the checkpoint's path instead, or drop the options")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _tokenizer(tokenizer)
    model.eval()
    return Subject(model, tokenizer)


def _tokenizer(path: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


def _files_fingerprint(path: Path) -> str:
    """sha256 over config.json and the weight files of a checkpoint directory (each file's own hash memoised
    by path, size, inode, modification time and change time in the run cache directory: an in-place rewrite
    that restores size and modification time still changes the change time)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or
                                                                  p.name.endswith(_WEIGHT_SUFFIXES)))
    h = hashlib.sha256(b"pytest-interp checkpoint files v1\n")
    for f in files:
        h.update(f.name.encode() + b"\0" + _file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def _file_sha256(f: Path) -> str:
    st = f.stat()
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    memo = current().file_hashes()
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    memo[key] = h.hexdigest()
    current().save_file_hashes(memo)
    return memo[key]


def _weights_fingerprint(model: Any, config_json: str) -> str:
    """sha256 over ``config_json`` and each state-dict tensor's name, dtype, shape and bytes (offloaded tensors
    are read back one module at a time)."""
    digests: dict[str, str] = {}
    offloaded = set()
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            offloaded.add(name)
        else:
            digests[name] = _tensor_sha256(tensor)
    if offloaded:
        from accelerate.utils import has_offloaded_params
        from accelerate.utils.modeling import align_module_device

        for prefix, module in model.named_modules():
            if has_offloaded_params(module):
                with align_module_device(module, torch.device("cpu")):
                    for name, tensor in module.state_dict(prefix=f"{prefix}." if prefix else "").items():
                        if name in offloaded and tensor.device.type != "meta":
                            digests[name] = _tensor_sha256(tensor)
        unread = sorted(offloaded - digests.keys())
        if unread:
            raise InterpError("cannot read the offloaded weights of this model to fingerprint it",
                              expected="every weight in memory or held by accelerate's offload hooks",
                              seen=f"{len(unread)} weights on the meta device: {unread[:4]}",
                              fix="load it with pi.load(path, device_map=...) so pytest-interp places it")
    h = hashlib.sha256(b"pytest-interp weights v2\n" + config_json.encode() + b"\n")
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name]}\n".encode())
    return h.hexdigest()


def _tensor_sha256(tensor: torch.Tensor) -> str:
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}\0{tuple(tensor.shape)}\0".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _map_device(device_map: Any) -> str | None:
    """Where inputs go under ``device_map``, when the map alone says: accelerate runs modules mapped to
    ``"cpu"`` or ``"disk"`` on the map's one accelerator, or on the CPU when it names none. None when only the
    placed model can tell (``"auto"``, several accelerators)."""
    values = list(device_map.values()) if isinstance(device_map, dict) else [device_map]
    try:
        devices = {str(torch.device(v)) for v in values if v not in ("cpu", "disk")}
    except (RuntimeError, TypeError):  # "auto", "sequential", ...
        return None
    return "cpu" if not devices else devices.pop() if len(devices) == 1 else None


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers without progress bars and load reports (a bar per load clutters every pytest run; what a
    load report says that matters, this module reports itself)."""
    from transformers.utils import logging as hf_logging

    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _candidates(config: Any, model_class: Any) -> list[Any]:
    """The classes to try: ``model_class``, else the config's architectures, a causal LM and a masked LM."""
    import transformers

    if model_class is None:
        archs = list(getattr(config, "architectures", None) or [])
        return [getattr(transformers, a) for a in archs if hasattr(transformers, a)] + [
            transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM]
    cls = getattr(transformers, model_class, None) if isinstance(model_class, str) else model_class
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        raise InterpError(f"model_class={model_class!r} is not a transformers model class",
                          expected="a class such as transformers.BertForMaskedLM, or its name",
                          seen=type(model_class).__name__ if cls is None else repr(cls),
                          fix="pass a model class of transformers or its name, e.g. model_class='LlamaForCausalLM'")
    return [cls]


def _untrained(info: dict[str, Any]) -> tuple[str, ...]:
    """The weights a load initialised instead of reading (missing from the checkpoint, or of another shape)."""
    mismatched = {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()}
    return tuple(sorted(set(info.get("missing_keys") or ()) | mismatched))


def _meta_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint's tensors as meta tensors (names, dtypes, shapes from the safetensors headers, no data),
    or None for a checkpoint in another format or one that cannot be read so."""
    index = path / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        elif (path / "model.safetensors").is_file():
            files = [path / "model.safetensors"]
        else:
            return None
        from transformers.modeling_utils import load_state_dict

        state: dict[str, Any] = {}
        for f in files:
            state.update(load_state_dict(str(f), map_location="meta"))
        return state
    except Exception:  # noqa: BLE001 - an unreadable index or header is for from_pretrained to report
        return None


def _classes(path: Path, config: Any, model_class: Any, allow_random_heads: bool,
             ) -> tuple[list[Any], tuple[str, ...] | None]:
    """The classes to load ``path`` as, in order, and the weights the first lacks (None: not known before the
    weights load). For a safetensors checkpoint each candidate is built on the meta device and given the
    header's tensors, so ``from_pretrained`` itself reports what it would leave untrained, without reading a
    weight; the first candidate that lacks none is the one. A class that lacks weights is refused unless
    ``allow_random_heads``."""
    candidates = _candidates(config, model_class)
    state = _meta_state(path)
    if state is None:
        return candidates, None
    import copy

    errors, incomplete = [], []
    for i, cls in enumerate(candidates):
        mapping = getattr(cls, "_model_mapping", None)  # an Auto class: its class for this config
        if mapping is not None and type(config) not in mapping:
            errors.append(f"{cls.__name__}: no class for {type(config).__name__}")
            continue
        concrete = mapping[type(config)] if mapping is not None else cls
        try:
            with _quiet():
                _, info = concrete.from_pretrained(None, config=copy.deepcopy(config), state_dict=dict(state),
                                                   device_map="meta", output_loading_info=True)
        except ValueError as exc:
            errors.append(f"{cls.__name__}: {exc}".splitlines()[0][:160])
            continue
        except Exception:  # noqa: BLE001 - the header cannot tell (e.g. a quantised checkpoint): check on loading
            return candidates[i:], None
        missing = _untrained(info)
        if not missing:
            return [concrete], ()
        incomplete.append((concrete, missing))
    if incomplete and allow_random_heads:
        return [incomplete[0][0]], incomplete[0][1]
    if incomplete:
        instead = None
        if model_class is not None:
            try:
                instead = _classes(path, config, None, False)[0][0].__name__
            except InterpError:
                pass
        raise _untrained_error(path, incomplete, instead)
    raise _unloadable(path, errors)


def _untrained_error(path: Path, incomplete: list[tuple[Any, tuple[str, ...]]], instead: str | None,
                     ) -> InterpError:
    seen = "; ".join(f"{cls.__name__} lacks {len(m)}: {', '.join(m[:4])}{', ...' if len(m) > 4 else ''}"
                     for cls, m in incomplete)
    fix = (f"load it as {instead}, whose weights are all in the checkpoint: pi.load(path) or "
           f"model_class={instead!r}" if instead else
           "name the class the checkpoint was saved from (model_class=...), or use a checkpoint that holds the "
           "trained weights of the head you need")
    return InterpError(f"the checkpoint at {str(path)!r} lacks weights of the model class, which would be "
                       "initialised at random (an untrained head measures noise)",
                       expected="a model class whose every weight is in the checkpoint (untrained weights are "
                                "accepted only with allow_random_heads=True)",
                       seen=seen, fix=fix)


def _unloadable(path: Path, errors: list[str]) -> InterpError:
    return InterpError(f"cannot load the checkpoint at {str(path)!r}",
                       expected="a checkpoint of the class its config names, a causal LM or a masked LM",
                       seen="; ".join(errors)[:400],
                       fix="name its class with model_class=..., or load the model yourself and pass it to "
                           "pi.load(model)")


def _from_pretrained(path: Path, classes: list[Any], options: dict[str, Any], allow_random_heads: bool) -> Any:
    """The first of ``classes`` that loads from ``path`` with every weight read from it (or, with
    ``allow_random_heads``, with untrained weights and a warning)."""
    kwargs = {"local_files_only": True, "output_loading_info": True,
              **{k: v for k, v in options.items() if v is not None}}
    folder = None
    if kwargs.get("device_map") is not None and "offload_folder" not in kwargs:
        import tempfile

        folder = kwargs["offload_folder"] = tempfile.mkdtemp(prefix="pytest-interp-offload-")
    errors, incomplete = [], []
    try:
        with _quiet():
            for cls in classes:
                try:
                    model, info = cls.from_pretrained(str(path), **kwargs)
                except ValueError as exc:
                    errors.append(f"{cls.__name__}: {exc}".splitlines()[0])
                    continue
                missing = _untrained(info)
                if missing and not allow_random_heads:
                    incomplete.append((type(model), missing))
                    continue
                if missing:
                    warnings.warn(f"{path} loaded as {type(model).__name__} with {len(missing)} untrained "
                                  f"(randomly initialised) weights, as allow_random_heads=True asks: "
                                  f"{list(missing[:4])}",
                                  InterpWarning, stacklevel=2)
                if folder is not None:
                    import shutil
                    import weakref

                    weakref.finalize(model, shutil.rmtree, folder, True)
                    folder = None
                return model
    finally:
        if folder is not None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    raise _untrained_error(path, incomplete, None) if incomplete else _unloadable(path, errors)
