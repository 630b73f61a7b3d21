"""Baselines: a run's effects stored under a name, and the drift of a later run from them."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.files import dumps, read_json, write_atomic
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


def save(path: Path, records: list[dict[str, Any]], controls: dict[str, Any]) -> None:
    claims = {claim_key(r): {k: r.get(k) for k in ("test", "claim", "sites", "metric", "effect", "ci", "n",
                                                      "threshold", "passed")} | {"model": r["model"].get("fingerprint")}
              for r in records}
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    write_atomic(path, dumps({"schema": SCHEMA, "version": VERSION, "created": created, "controls": controls,
                              "claims": claims}))


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"no baseline at {path}: save one first with --interp-save-baseline NAME")
    return read_json(path, "baseline", SCHEMA, VERSION)


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
