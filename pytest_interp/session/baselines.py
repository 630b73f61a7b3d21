"""Baselines: a run's effects stored under a name, and the drift of a later run from them.

A baseline is one run's snapshot, never merged with another. Saving holds ``<baseline>.lock`` while it looks
at what is on disk now: an existing file is refused unless replacing was asked for, and is then copied aside
under a name no other file has before the new one is renamed into place, so two sessions saving at once never
lose a baseline. A malformed baseline is a ``FileFormatError`` naming the field; it is never read as numbers.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.errors import InterpError
from ..core.files import FileFormatError, claims_of, describe, dumps, is_number, locked, read_json, write_atomic
from .registry import claim_key

SCHEMA = "pytest-interp/baseline"
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"baseline name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
                         "(e.g. v1.2 or release-2026-11)")
    return name


def path_for(directory: Path, name: str) -> Path:
    return directory / f"{check_name(name)}.json"


def save(path: Path, records: list[dict[str, Any]], controls: dict[str, Any], replace: bool = False) -> Path | None:
    """Store the run's effects at ``path``; returns where the baseline it replaced was kept (None: there was none).

    Raises:
        InterpError: ``path`` exists (another session may have saved it since this one started) and ``replace``
            is False; nothing is written.
        FileBusyError: another process held the lock too long; nothing is written.
    """
    claims = {claim_key(r): {k: r.get(k) for k in ("test", "claim", "sites", "metric", "effect", "ci", "n",
                                                      "threshold", "passed")} | {"model": r["model"].get("fingerprint")}
              for r in records}
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    text = dumps({"schema": SCHEMA, "version": VERSION, "created": now.isoformat(), "controls": controls,
                  "claims": claims})
    with locked(path):
        kept = None
        if path.exists():
            if not replace:
                raise InterpError(f"the baseline file {path} exists (saved by another session while this one "
                                  "ran?); this run's baseline was not saved", expected="a new baseline name, or "
                                  "--interp-replace-baseline", seen=f"{path} on disk",
                                  fix=f"run again with a new name, or add --interp-replace-baseline to keep "
                                  f"{path.name} aside and save over it")
            kept = _keep_aside(path, now.astimezone().strftime("%Y%m%dT%H%M%S"))
        write_atomic(path, text)
    return kept


def _keep_aside(path: Path, stamp: str) -> Path:
    """Copy ``path`` to ``NAME.STAMP.json`` (``NAME.STAMP-2.json``, ... if taken); never overwrites a file."""
    data = path.read_bytes()
    for i in range(1, 1000):
        kept = path.with_name(f"{path.stem}.{stamp}{'' if i == 1 else f'-{i}'}.json")
        try:
            with open(kept, "xb") as f:
                f.write(data)
        except FileExistsError:
            continue
        return kept
    raise InterpError(f"could not keep {path} aside", expected=f"a free name {path.stem}.{stamp}-N.json",
                      seen="999 taken", fix=f"move old copies of {path.name} out of {path.parent}")


def _fix(path: Path) -> str:
    return (f"correct it by hand, or save the baseline again with --interp-save-baseline {path.stem} "
            "--interp-replace-baseline (the malformed file is kept beside the new one)")


def _is_ci(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v) and v[0] <= v[1]


#: the fields of a claim a baseline must hold (what compare() and the drift table read, with the effect's CI and n)
_CLAIM_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "test": (lambda v: isinstance(v, str), "a string (the test id)"),
    "claim": (lambda v: isinstance(v, str), "a string (the claim's text)"),
    "effect": (is_number, "a finite number"),
    "ci": (_is_ci, "a list of two finite numbers [low, high] with low <= high"),
    "n": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
    "passed": (lambda v: isinstance(v, bool), "true or false"),
}


def load(path: Path) -> dict[str, Any]:
    """The baseline at ``path``, checked field by field.

    Raises:
        FileNotFoundError: there is no baseline at ``path``.
        FileFormatError: the file is not a baseline this version wrote (names the field and the fix).
    """
    if not path.exists():
        raise FileNotFoundError(f"no baseline at {path}: save one first with --interp-save-baseline NAME")
    data = read_json(path, "baseline", SCHEMA, VERSION, _fix(path))
    claims = claims_of(data, path, "baseline", entry=f"the claims' {', '.join(_CLAIM_FIELDS)}", fix=_fix(path))
    for key, entry in claims.items():
        for field, (ok, wanted) in _CLAIM_FIELDS.items():
            if field not in entry:
                raise FileFormatError(path, "baseline", f"claims[{key!r}].{field}", expected=wanted,
                                      seen=f'no "{field}" field', fix=_fix(path))
            if not ok(entry[field]):
                raise FileFormatError(path, "baseline", f"claims[{key!r}].{field}", expected=wanted,
                                      seen=describe(entry[field]), fix=_fix(path))
    return data


@dataclass(frozen=True)
class Tolerance:
    """Drift beyond tolerance: ``|current - baseline| > abs + rel * |baseline|`` (as numpy's isclose)."""

    abs: float = 0.0
    rel: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Tolerance:
        """``"0.1"`` (absolute), ``"10%"`` (relative), or ``"abs=0.1,rel=0.2"``."""
        values = {"abs": 0.0, "rel": 0.0}
        for part in [p.strip() for p in spec.split(",") if p.strip()]:
            key, _, val = part.partition("=")
            if not val:
                key, val = ("rel", key[:-1]) if key.endswith("%") else ("abs", key)
                scale = 0.01 if key == "rel" else 1.0
            else:
                key, scale = key.strip(), 1.0
                if val.endswith("%"):
                    val, scale = val[:-1], 0.01
            if key not in values:
                raise ValueError(f"unknown tolerance {key!r} in {spec!r}: use abs=X and/or rel=Y (or Y%)")
            try:
                values[key] = float(val) * scale
            except ValueError:
                raise ValueError(f"tolerance {part!r} in {spec!r} is not a number") from None
            if values[key] < 0:
                raise ValueError(f"tolerance {part!r} must not be negative")
        if not spec.strip():
            raise ValueError("empty drift tolerance: use e.g. abs=0.1 or rel=20%")
        return cls(**values)

    def exceeded(self, baseline: float, current: float) -> bool:
        return abs(current - baseline) > self.abs + self.rel * abs(baseline)

    def __str__(self) -> str:
        return f"abs={self.abs:g}, rel={self.rel * 100:g}%"


def compare(baseline: dict[str, Any], records: list[dict[str, Any]],
            tolerance: Tolerance | None) -> list[dict[str, Any]]:
    """One row per claim in either run: baseline and current effect, drift, and whether it exceeds tolerance."""
    old = baseline["claims"]
    rows = []
    for r in records:
        key = claim_key(r)
        b = old.get(key)
        row = {"key": key, "test": r["test"], "claim": r["claim"], "current": r["effect"], "baseline": None,
               "drift": None, "rel": None, "exceeded": False, "status": "new"}
        if b is not None:
            d = r["effect"] - b["effect"]
            row.update(baseline=b["effect"], drift=d, rel=(d / abs(b["effect"]) if b["effect"] else None),
                       status="compared", verdict_changed=b.get("passed") != r["passed"])
            row["exceeded"] = bool(tolerance and tolerance.exceeded(b["effect"], r["effect"]))
        rows.append(row)
    seen = {row["key"] for row in rows}
    for key, b in sorted(old.items()):
        if key not in seen:
            rows.append({"key": key, "test": b["test"], "claim": b["claim"], "current": None, "baseline": b["effect"],
                         "drift": None, "rel": None, "exceeded": False, "status": "not run"})
    return rows
