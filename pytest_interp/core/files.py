"""Safe writes of the files users keep (registry, baselines, reports): sorted JSON, atomic replace."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def dumps(data: Any) -> str:
    """Human-diffable JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path, kind: str, schema: str, version: int) -> dict[str, Any]:
    """Read a file of ours, checking its schema tag and version; raise ValueError with a reason otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{kind} {path} is not valid JSON ({exc}); fix or move it aside") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise ValueError(f"{path} is not a pytest-interp {kind} (schema tag {schema!r} missing)")
    if data.get("version") != version:
        raise ValueError(f"{kind} {path} has version {data.get('version')!r}; this pytest-interp reads "
                         f"version {version}")
    return data
