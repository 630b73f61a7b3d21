"""The pre-registration registry: a committed file recording each claim's hypothesis before it is tested.

Several sessions may register into one file at once (a developer's run, a CI job, two terminals): ``register``
holds ``<registry>.lock`` while it re-reads the file, merges this session's claims into what is there now, and
renames the new file into place. A malformed registry is a ``FileFormatError`` naming the field; it is never
overwritten.
"""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path
from typing import Any

from ..core.files import claims_of, dumps, locked, read_json, write_atomic

SCHEMA = "pytest-interp/registry"
VERSION = 1
#: what a registration pins: a change to any of these means the hypothesis changed
HYPOTHESIS_FIELDS = ("claim", "sites", "intervention", "metric", "threshold", "alpha", "code_hash")
#: the fields of an entry register() writes; any other field (a note a reviewer added) is kept as it is
_MANAGED = (*HYPOTHESIS_FIELDS, "test", "registered_at", "git_commit", "previous")


def claim_key(record: dict[str, Any]) -> str:
    """``test id#k`` for the k-th claim a test makes."""
    return f"{record['test']}#{record.get('index', 0)}"


def hypothesis(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in HYPOTHESIS_FIELDS}


def _fix(path: Path) -> str:
    return (f"correct it by hand, or restore the committed file (`git checkout -- {path.name}`); to start "
            f"over, move {path.name} aside and run `pytest --interp-register`")


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Registered entries by claim key (empty when the file does not exist).

    Raises:
        FileFormatError: the file is not a registry this version wrote (names the field and the fix).
    """
    return dict(_read(path)["claims"])


def _read(path: Path) -> dict[str, Any]:
    """The whole file, checked (a new, empty registry when it does not exist)."""
    if not path.exists():
        return {"schema": SCHEMA, "version": VERSION, "claims": {}}
    data = read_json(path, "registry", SCHEMA, VERSION, _fix(path))
    claims_of(data, path, "registry", fix=_fix(path),
              entry=f"registered entries with the hypothesis ({', '.join(HYPOTHESIS_FIELDS)})")
    return data


def differences(entry: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What changed between a registered entry and a claim as it ran, in words."""
    out = []
    for field in HYPOTHESIS_FIELDS:
        before, now = entry.get(field), record.get(field)
        if before == now:
            continue
        if field == "code_hash":
            out.append(f"the test's code changed (hash {str(before)[:12]} -> {str(now)[:12]})")
        else:
            out.append(f"{field}: registered {before!r}, now {now!r}")
    return out


def status(entries: dict[str, dict[str, Any]], record: dict[str, Any]) -> tuple[str, list[str]]:
    """('registered' | 'changed' | 'unregistered', differences)."""
    entry = entries.get(claim_key(record))
    if entry is None:
        return "unregistered", []
    diff = differences(entry, record)
    return ("changed", diff) if diff else ("registered", [])


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def register(path: Path, records: list[dict[str, Any]], root: Path) -> dict[str, list[str]]:
    """Merge the session's claims into the registry file. Entries of claims not run are kept as they are;
    an unchanged claim keeps its original registration time. Returns what was added / updated / kept.

    The file is re-read under its lock, so entries another session registered since this one started are kept
    and a claim it already registered unchanged is not reported as added again.

    Raises:
        FileFormatError: the file is malformed now (nothing is written).
        FileBusyError: another process held the lock too long (nothing is written).
    """
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    commit = _git_commit(root)
    with locked(path):
        return _merge(path, _read(path), records, now, commit)


def _merge(path: Path, data: dict[str, Any], records: list[dict[str, Any]], now: str,
           commit: str | None) -> dict[str, list[str]]:
    """Merge ``records`` into the file's ``data`` (as read under the lock) and write it if anything changed.
    Fields we do not manage (top-level keys, notes in an entry) are carried over untouched."""
    entries: dict[str, dict[str, Any]] = dict(data["claims"])
    added, updated = [], []
    for r in records:
        key = claim_key(r)
        old = entries.get(key)
        if old is not None and not differences(old, r):
            continue
        entry = dict(hypothesis(r), test=r["test"], registered_at=now, git_commit=commit)
        if old is not None:
            entry = {k: v for k, v in old.items() if k not in _MANAGED} | entry
            entry["previous"] = {k: old.get(k) for k in (*HYPOTHESIS_FIELDS, "registered_at", "git_commit")}
            updated.append(f"{key}: " + "; ".join(differences(old, r)))
        else:
            added.append(key)
        entries[key] = entry
    run = {claim_key(r) for r in records}
    kept = sorted(set(entries) - run)
    if added or updated or not path.exists():
        write_atomic(path, dumps(data | {"schema": SCHEMA, "version": VERSION, "claims": entries}))
    return {"added": added, "updated": updated, "kept": kept}
