"""The run cache: per-example scores of model runs, content-addressed, on disk (safetensors + JSON only).

A key covers everything that can change a number: the model's fingerprint (weights and config, not its path),
the adapter, the input tokens, the sites, the intervention and its seed, the metric, dtype/device, batch size
and the versions of pytest-interp, torch and transformers. Entries are written to a temp file in the same
directory and renamed into place, so concurrent writers (xdist workers) never tear an entry.

Tamper evidence: each entry stores a sha256 over its key and its values. An entry that cannot be read, does not
carry its key, does not match its digest (a flipped bit, a replaced tensor, another key's entry copied in with
its metadata rewritten), holds NaN/inf or has the wrong number of rows is a miss plus an InterpWarning: it is
recomputed, never used. A cache that cannot be written (read-only directory) is read and not written, with one
warning. Checkpoint files are hashed once and the hash memoised under their path, size, inode, modification AND
change time: rewriting a weight file in place and restoring its size and modification time still changes its
change time (which user code cannot set), so the file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import InterpError, InterpWarning
from .files import write_atomic
from .sites import Mask
from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import torch

MODES = ("off", "read", "write", "readwrite")
FORMAT = 2  # 2: entries carry a digest of their key and values


def tensor_digest(t: Any) -> str | None:
    """sha256 of a tensor's dtype, shape and bytes (None stays None)."""
    if t is None:
        return None
    import torch

    t = torch.as_tensor(t).detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def digest_any(x: Any) -> str | None:
    """A digest of token ids, a tensor, or (lists of) strings."""
    if x is None:
        return None
    if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and all(isinstance(v, str) for v in x)):
        return hashlib.sha256(json.dumps(x).encode()).hexdigest()
    import torch

    if hasattr(x, "tokens") and not isinstance(x, torch.Tensor):
        x = x.tokens
    return tensor_digest(x)


def value_digest(key: str, value: torch.Tensor) -> str:
    """sha256 over an entry's key and its values (dtype, shape and bytes): what an entry must match to be used."""
    import torch

    t = value.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"pytest-interp entry v1\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def site_key(site: Any) -> str:
    pos = site.positions
    if isinstance(pos, Mask):
        pos = hashlib.sha256(repr(pos.rows).encode()).hexdigest()
    if site.kind == "feature":  # the SAE's weights, its host and which features
        idx = hashlib.sha256(repr(site.features).encode()).hexdigest()[:16]
        return f"feature:{site.sae.fingerprint}:{site_key(site.host)}:{idx}:{pos}"
    stack = "" if getattr(site, "stack", None) is None else f"{site.stack}:"  # an encoder-decoder model's stack
    return f"{stack}{site.kind}:{site.layer}:{site.index}:{pos}"


@dataclass
class RunCache:
    """One cache directory and mode, with the session's counters."""

    directory: Path | None = None
    mode: str = "off"
    hits: int = 0
    misses: int = 0
    writes: int = 0
    bad: int = 0
    _versions: dict[str, str] = field(default_factory=dict)
    _file_hashes: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InterpError(f"unknown cache mode {self.mode!r}", expected=" / ".join(MODES), seen=self.mode,
                              fix="set --interp-cache-mode to one of them")
        if self.directory is None:
            self.mode = "off"

    def file_hashes(self) -> dict[str, str]:
        """Memoised sha256 of checkpoint files, keyed by path, size, inode, mtime and ctime (kept in the cache
        dir)."""
        if self._file_hashes is None:
            self._file_hashes = {}
            if self.directory is not None and self.reads:
                try:
                    data = json.loads((Path(self.directory) / "file-hashes.json").read_text())
                    if isinstance(data, dict):
                        self._file_hashes = {str(k): str(v) for k, v in data.items()}
                except (OSError, ValueError):
                    pass
        return self._file_hashes

    def save_file_hashes(self, memo: dict[str, str]) -> None:
        self._file_hashes = memo
        if self.directory is None or not self.writes_enabled:
            return
        try:
            write_atomic(Path(self.directory) / "file-hashes.json", json.dumps(memo, sort_keys=True, indent=1))
        except OSError:
            pass  # a memo that cannot be written only costs a re-hash next time

    @property
    def reads(self) -> bool:
        return self.mode in ("read", "readwrite")

    @property
    def writes_enabled(self) -> bool:
        return self.mode in ("write", "readwrite")

    def key(self, parts: dict[str, Any]) -> str:
        if not self._versions:
            import torch
            import transformers

            self._versions = {"pytest-interp": __version__, "torch": torch.__version__,
                              "transformers": transformers.__version__, "format": str(FORMAT)}
        blob = json.dumps({**parts, "versions": self._versions}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str, *, rows: int | None = None) -> "torch.Tensor | None":
        """The entry stored under ``key`` (None: a miss). An entry that cannot be read, does not carry its key,
        whose values do not match its digest, that is not finite, or (``rows``) whose first dimension is not
        ``rows`` is a miss with an InterpWarning: it is recomputed, never used."""
        if self.mode == "off" or not self.reads:
            return None
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            from safetensors.torch import load

            data = path.read_bytes()  # one read: metadata and values of the same version of the file
            meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
            value = load(data)["scores"]
            if meta.get("key") != key:
                raise ValueError("the entry does not carry its key")
            if meta.get("digest") != value_digest(key, value):
                raise ValueError("its values do not match its digest (edited or damaged on disk)")
            if rows is not None and (value.dim() == 0 or value.shape[0] != rows):
                raise ValueError(f"it holds shape {list(value.shape)}, not {rows} rows")
            if value.is_floating_point() and not bool(value.isfinite().all()):
                raise ValueError("it holds NaN/inf")
        except Exception as exc:  # noqa: BLE001 - any unusable entry is a miss
            self.bad += 1
            self.misses += 1
            warnings.warn(f"pytest-interp cache entry {path} is not used ({type(exc).__name__}: {exc}); "
                          "recomputing it", InterpWarning, stacklevel=2)
            return None
        self.hits += 1
        try:
            os.utime(path)  # recently used entries survive pruning
        except OSError:
            pass
        return value

    def put(self, key: str, value: torch.Tensor, meta: dict[str, Any]) -> None:
        """Store ``value`` under ``key`` with a digest of both. A cache that cannot be written (read-only
        directory, full disk) is read from but no longer written to, with one InterpWarning."""
        if self.mode == "off" or not self.writes_enabled:
            return
        from safetensors.torch import save_file

        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".entry.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            value = value.detach().to("cpu").contiguous()
            save_file({"scores": value}, tmp,
                      metadata={"key": key, "digest": value_digest(key, value),
                                "meta": json.dumps(meta, sort_keys=True, default=str)})
            os.replace(tmp, path)
            self.writes += 1
        except OSError as exc:
            self.mode = "read" if self.reads else "off"
            warnings.warn(f"pytest-interp cannot write its run cache at {self.directory} ({type(exc).__name__}: "
                          f"{exc}); results are computed and not stored for the rest of this session (move the "
                          "cache with --interp-cache DIR, or set --interp-cache-mode read)", InterpWarning,
                          stacklevel=2)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    def scores(self, parts: Callable[[], dict[str, Any] | None], compute: Callable[[], torch.Tensor], *,
               rows: int | None = None) -> torch.Tensor:
        """The cached scores for ``parts()``, or ``compute()`` stored under them (``parts()`` None: uncacheable).
        ``parts`` is called only when the cache is on (fingerprinting a model is not free). ``rows``: the number
        of examples the scores must have (an entry of another shape is a miss)."""
        if self.mode == "off":
            return compute()
        spec = parts()
        if spec is None:
            return compute()
        key = self.key(spec)
        got = self.get(key, rows=rows)
        if got is not None:
            return got
        value = compute()
        self.put(key, value, {k: v for k, v in spec.items() if k in ("sites", "intervention", "metric")})
        return value

    def size(self) -> tuple[int, int]:
        """(entries, bytes) on disk."""
        if self.directory is None or not self.directory.exists():
            return 0, 0
        files = list(self.directory.glob("*/*.safetensors"))
        return len(files), sum(f.stat().st_size for f in files)

    def prune(self, max_bytes: int) -> tuple[int, int]:
        """Delete least recently used entries until the cache holds at most ``max_bytes``; (removed, freed)."""
        if self.directory is None or not self.directory.exists():
            return 0, 0
        files = sorted(self.directory.glob("*/*.safetensors"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        removed = freed = 0
        for f in files:
            if total <= max_bytes:
                break
            size = f.stat().st_size
            f.unlink(missing_ok=True)
            total -= size
            freed += size
            removed += 1
        return removed, freed


_current = [RunCache()]


def current() -> RunCache:
    return _current[-1]


def use(cache: RunCache) -> RunCache:
    """Make ``cache`` the one experiments use (the plugin calls this; outside pytest the cache is off)."""
    _current[-1] = cache
    return cache


def parse_size(text: str) -> int:
    """'500MB', '2G', '1024' -> bytes."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMG" else t
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"cache size {text!r} is not a size (e.g. 500MB, 2G)") from None
    if value < 0:
        raise ValueError(f"cache size {text!r} is negative")
    return int(value)
