"""Claim records and sweep grids: what each test decided or measured, collected for the session report."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

_records: list[dict[str, Any]] = []
_grids: list[dict[str, Any]] = []


def add(record: dict[str, Any]) -> None:
    _records.append(record)


def add_grid(grid: dict[str, Any]) -> None:
    """A sweep's grid, shown as a heatmap in the HTML report."""
    _grids.append(grid)


def _take(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(items)
    items.clear()
    return out


def drain() -> list[dict[str, Any]]:
    """Return and forget the records made since the last drain (the plugin drains after each test)."""
    return _take(_records)


def drain_grids() -> list[dict[str, Any]]:
    """Return and forget the sweep grids made since the last drain."""
    return _take(_grids)


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """Within: claim records and grids go to the yielded list (records; grids are dropped) instead of the
    session report, for claims decided as parts of another claim."""
    r0, g0 = len(_records), len(_grids)
    got: list[dict[str, Any]] = []
    try:
        yield got
    finally:
        got.extend(_records[r0:])
        del _records[r0:]
        del _grids[g0:]
