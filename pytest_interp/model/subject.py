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

from ..core.cache import current
from ..core.errors import InterpError, InterpWarning
from ..core.settings import settings
from .adapters import BoundAdapter, adapter_for, config_sizes, spec_for_config

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


class Subject:
    """A model under test: the torch model, its tokenizer (optional) and the adapter that locates its sites.

    Build one with :func:`pytest_interp.load`.
    """

    def __init__(self, model: Any = None, tokenizer: Any = None, *, path: str | None = None,
                 loader: Any = None, config: Any = None, device: str | None = None, dtype_key: str | None = None,
                 attn_implementation: str = "eager") -> None:
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
            if self._device is not None:
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
    def max_positions(self) -> int | None:
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, name, None)
            if value:
                return int(value)
        return None

    @property
    def device(self) -> torch.device:
        if self._model is None:
            return torch.device(self._device or "cpu")
        return next(self._model.parameters()).device

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
        """sha256 over the config and every weight: identifies the model, not its path.

        For a checkpoint whose weights are as loaded, it is computed from the files (config.json and the weight
        files, memoised by their size and modification time in the run cache), so a warm run need not load them.
        Once a weight tensor is replaced or modified in place (tracked by torch's version counters), it is
        recomputed from the tensors, so an edited model never matches its old cache entries."""
        if self._steady is not None:
            return self._steady
        if self.path is not None and (self._model is None or self._weights_state() == self._loaded_state):
            if self._file_fingerprint is None:
                self._file_fingerprint = _files_fingerprint(Path(self.path))
            return self._file_fingerprint
        cfg = self._config_json()
        state = (cfg, tuple((t.data_ptr(), t._version) for t in self.model.state_dict().values()))
        if state != self._fingerprint_state:
            self._fingerprint, self._fingerprint_state = None, state
        if self._fingerprint is None:
            h = hashlib.sha256(cfg.encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                t = tensor.detach().to("cpu").contiguous()
                h.update(str(t.dtype).encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
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
        return dict(self._identity)

    def __repr__(self) -> str:
        return (f"<Subject {self.name}: {self.adapter_spec.name}, {self.n_layers} layers x {self.n_heads} heads, "
                f"vocab {self.vocab_size}, attention {self.attn_implementation}>")

    # inputs ------------------------------------------------------------------------------------------
    def tokens(self, inputs: Any, *, name: str = "inputs") -> torch.Tensor:
        """Validate ``inputs`` (token ids or strings) and return token ids ``[batch, seq]`` on the model's device."""
        if hasattr(inputs, "tokens") and not isinstance(inputs, (str, torch.Tensor)):
            inputs = inputs.tokens
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs):
            inputs = self._tokenize(list(inputs), name)
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise InterpError(f"{name} is an empty batch", expected="at least one example",
                                  seen="0 examples", fix=f"pass a non-empty batch as {name}")
            lengths = {len(x) if hasattr(x, "__len__") else -1 for x in inputs}
            if len(lengths) != 1 or -1 in lengths:
                raise InterpError(f"{name} has sequences of different lengths",
                                  expected="equal-length token sequences", seen=f"lengths {sorted(lengths)[:6]}",
                                  fix="use prompts of equal token length (templates with same-length fillers)")
            inputs = torch.tensor(inputs)
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
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi >= self.vocab_size:
            raise InterpError(f"{name} has token ids outside the vocabulary",
                              expected=f"ids in [0, {self.vocab_size - 1}]", seen=f"ids in [{lo}, {hi}]",
                              fix="check the tokenizer matches the model")
        if self.max_positions is not None and inputs.shape[1] > self.max_positions:
            raise InterpError(f"{name} are longer than the model's context",
                              expected=f"at most {self.max_positions} tokens",
                              seen=f"{inputs.shape[1]} tokens", fix="shorten the inputs")
        return inputs.to(device=self.device, dtype=torch.long)

    def _tokenize(self, texts: list[str], name: str) -> list[list[int]]:
        if self.tokenizer is None:
            raise InterpError(f"{name} are strings but this subject has no tokenizer",
                              expected="a tokenizer, or token ids", seen=f"{len(texts)} strings",
                              fix="pass tokenizer= to pi.load, ship tokenizer.json with the model, or pass ids")
        return [list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

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
                got = self.tokenizer(a, add_special_tokens=False)["input_ids"]
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
         device: str | None = None, dtype: Any = None) -> Subject:
    """Load a local Hugging Face checkpoint (through ``from_pretrained``), or wrap an in-memory model.

    Args:
        path_or_model: a local model directory, or a ``transformers`` model object.
        tokenizer: a tokenizer object or a local tokenizer directory; by default the checkpoint's own, if it
            ships one.
        attn_implementation: attention kernel for checkpoints loaded from disk; ``"eager"`` (the default)
            keeps attention weights readable.
        device: torch device (default: the ``--interp-device`` setting).
        dtype: torch dtype to load weights in (default: as stored).
    """
    if isinstance(path_or_model, Subject):
        return path_or_model
    device = device or settings().device
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
        return Subject(None, tokenizer, path=str(path), config=config, device=device, dtype_key=dtype_key,
                       attn_implementation=attn_implementation,
                       loader=lambda: _from_pretrained(path, attn_implementation, dtype))
    model = path_or_model
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise InterpError("pi.load got neither a path nor a transformers model",
                          expected="a local HF directory or a PreTrainedModel",
                          seen=type(model).__name__, fix="pass a path or a loaded model")
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


def _from_pretrained(path: Path, attn_implementation: str, dtype: Any) -> Any:
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True, "attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    from transformers.utils import logging as hf_logging

    archs = list(getattr(config, "architectures", None) or [])
    candidates = [getattr(transformers, a) for a in archs if hasattr(transformers, a)]
    candidates += [transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM]
    errors = []
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per load would clutter every pytest run
    try:
        for cls in candidates:
            try:
                return cls.from_pretrained(str(path), **kwargs)
            except ValueError as exc:
                errors.append(f"{cls.__name__}: {exc}".splitlines()[0])
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    raise InterpError(f"cannot load the checkpoint at {str(path)!r} as a language model",
                      expected="a causal or masked LM checkpoint", seen="; ".join(errors)[:300],
                      fix="load the model yourself and pass it to pi.load(model)")
