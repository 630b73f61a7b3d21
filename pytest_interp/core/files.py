"""Safe reads and writes of the files users keep (registry, baselines, reports): sorted JSON, atomic replace,
a lock file for read-merge-write, and errors that name the file, the field and the fix.

Rules: a file is only ever replaced whole (``write_atomic``: temp file beside it, then rename), so a reader never
sees a torn file. A writer that merges into a shared file (the registry; a baseline kept aside before it is
replaced) holds ``<file>.lock`` (``locked``) from re-reading the file to renaming the new one into place, so two
sessions writing at once both land. A file that is not in the format we write is a ``FileFormatError`` naming the
file and the field, raised before anything is written; it is never repaired or overwritten silently.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InterpError

#: how long a writer waits for another session's lock on the same file before giving up
LOCK_TIMEOUT = 60.0


class FileFormatError(InterpError, ValueError):
    """A file pytest-interp reads (registry, baseline) is not in the format it writes.

    Attributes:
        path: the file.
        kind: what the file is ("registry", "baseline").
        field: the malformed field, e.g. ``claims`` or ``claims["t.py::test#0"].effect`` (None: the whole file).
    """

    def __init__(self, path: Path, kind: str, field: str | None, *, expected: str, seen: str, fix: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.field = field
        part = f": field {field}" if field else ""
        super().__init__(f"{kind} file {path} is malformed{part}", expected=expected, seen=seen, fix=fix)


class FileBusyError(InterpError):
    """Another process held a shared file's lock for longer than ``LOCK_TIMEOUT``."""

    def __init__(self, path: Path, lock: Path, timeout: float) -> None:
        self.path = Path(path)
        self.lock = Path(lock)
        super().__init__(f"could not lock {path} to update it: another process has held {lock} for "
                         f"{timeout:g} s", expected="the lock to be free within a few seconds (writers hold it only "
                         "while merging and writing)", seen=f"{lock} still locked",
                         fix="wait for the other pytest session to finish and run again; nothing was written")


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


def lock_path(path: Path) -> Path:
    """The lock file guarding ``path``: ``<file>.lock`` beside it."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold ``<path>.lock`` (an OS file lock, released if the process dies) while reading, merging and writing
    ``path``. Raises ``FileBusyError`` when another process holds it for longer than ``timeout`` seconds."""
    from filelock import FileLock, Timeout

    wait = LOCK_TIMEOUT if timeout is None else timeout
    lock_file = lock_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise FileBusyError(path, lock_file, wait) from None
    try:
        yield
    finally:
        lock.release()


def describe(value: Any) -> str:
    """A value as JSON names it, for the 'seen' line of an error: ``'big' (a string)``, ``null``."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    if value is None:
        return "null"
    text = json.dumps(value, default=str)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({names.get(type(value), type(value).__name__)})"


def is_number(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: Path, kind: str, schema: str, version: int, fix: str) -> dict[str, Any]:
    """Read a file of ours, checking that it is a JSON object with our schema tag and version.

    Args:
        fix: how to repair or replace this kind of file (the last line of every error).

    Raises:
        FileFormatError: naming the file, the field and ``fix``.
    """
    expected = f"a JSON object written by pytest-interp ({{\"schema\": \"{schema}\", \"version\": {version}, ...}})"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, kind, None, expected=expected, seen=f"unreadable ({exc})", fix=fix) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        conflict = "<<<<<<<" in text or ">>>>>>>" in text
        raise FileFormatError(path, kind, None, expected=expected,
                              seen=f"not JSON{' (git merge-conflict markers)' if conflict else ''}: {exc.msg} at "
                              f"line {exc.lineno}, column {exc.colno}",
                              fix=f"resolve the merge conflict, keeping the entries of both sides; or {fix}"
                              if conflict else fix) from None
    if not isinstance(data, dict):
        raise FileFormatError(path, kind, None, expected=expected, seen=describe(data), fix=fix)
    if data.get("schema") != schema:
        seen = "no \"schema\" field" if "schema" not in data else describe(data["schema"])
        raise FileFormatError(path, kind, "schema", expected=f"{schema!r} (this is not a pytest-interp {kind} "
                              "file, or not one written by this tool)", seen=seen, fix=fix)
    if data.get("version") != version:
        seen = "no \"version\" field" if "version" not in data else describe(data["version"])
        raise FileFormatError(path, kind, "version", expected=f"{version} (the version this pytest-interp reads)",
                              seen=seen, fix=f"upgrade pytest-interp if the file is newer; otherwise: {fix}")
    return data


def claims_of(data: dict[str, Any], path: Path, kind: str, *, entry: str, fix: str) -> dict[str, dict[str, Any]]:
    """The ``claims`` object of a registry or baseline file: present, an object, and every entry an object
    (``entry`` says what an entry holds); else a FileFormatError naming the field."""
    expected = f"an object mapping claim keys ('test id#k') to {entry}"
    if "claims" not in data:
        raise FileFormatError(path, kind, "claims", expected=expected, seen='no "claims" field', fix=fix)
    claims = data["claims"]
    if not isinstance(claims, dict):
        raise FileFormatError(path, kind, "claims", expected=expected, seen=describe(claims), fix=fix)
    for key, value in claims.items():
        if not isinstance(value, dict):
            raise FileFormatError(path, kind, f"claims[{key!r}]", expected=f"an object: {entry}",
                                  seen=describe(value), fix=fix)
    return claims

