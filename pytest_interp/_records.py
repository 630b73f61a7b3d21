"""Claim records: what each claim decided, collected for the session report."""

from __future__ import annotations

from typing import Any

_records: list[dict[str, Any]] = []
_grids: list[dict[str, Any]] = []


def add(record: dict[str, Any]) -> None:
    _records.append(record)


def drain() -> list[dict[str, Any]]:
    """Return and forget the records made since the last drain (the plugin drains after each test)."""
    out = list(_records)
    _records.clear()
    return out


def add_grid(grid: dict[str, Any]) -> None:
    """A sweep's grid, shown as a heatmap in the HTML report."""
    _grids.append(grid)


def drain_grids() -> list[dict[str, Any]]:
    out = list(_grids)
    _grids.clear()
    return out
