"""The pre-registration registry: a committed file recording each claim's hypothesis before it is tested."""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path
from typing import Any

from ..core.files import dumps, read_json, write_atomic

SCHEMA = "pytest-interp/registry"
VERSION = 1
#: what a registration pins: a change to any of these means the hypothesis changed
HYPOTHESIS_FIELDS = ("claim", "sites", "intervention", "metric", "threshold", "alpha", "code_hash")


def claim_key(record: dict[str, Any]) -> str:
    """``test id#k`` for the k-th claim a test makes."""
    return f"{record['test']}#{record.get('index', 0)}"


def hypothesis(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in HYPOTHESIS_FIELDS}


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Registered entries by claim key (empty when the file does not exist)."""
    if not path.exists():
        return {}
    return dict(read_json(path, "registry", SCHEMA, VERSION)["claims"])


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
    an unchanged claim keeps its original registration time. Returns what was added / updated / kept."""
    entries = load(path)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    commit = _git_commit(root)
    added, updated = [], []
    for r in records:
        key = claim_key(r)
        old = entries.get(key)
        if old is not None and not differences(old, r):
            continue
        entry = dict(hypothesis(r), test=r["test"], registered_at=now, git_commit=commit)
        if old is not None:
            entry["previous"] = {k: old.get(k) for k in (*HYPOTHESIS_FIELDS, "registered_at", "git_commit")}
            updated.append(f"{key}: " + "; ".join(differences(old, r)))
        else:
            added.append(key)
        entries[key] = entry
    run = {claim_key(r) for r in records}
    kept = sorted(set(entries) - run)
    if added or updated or not path.exists():
        write_atomic(path, dumps({"schema": SCHEMA, "version": VERSION, "claims": entries}))
    return {"added": added, "updated": updated, "kept": kept}
