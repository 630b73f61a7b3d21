"""The controller side of a pytest session: collects claim records from test reports (also from xdist
workers) and alone writes the terminal summary, JSON/HTML reports, the registry and baselines.

The files a session reads (registry, the baseline to compare with) are checked when it starts: a malformed one
is a usage error before any test runs. Writing one at the end can still fail (another session saved the same
baseline meanwhile, the file was broken during the run, a lock was held too long): that is reported in the
summary and makes the exit status non-zero, and nothing on disk is overwritten. Under xdist each worker sends
its run-cache counters in ``workeroutput``; the controller adds them up for the summary line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from . import baselines as _baselines
from . import registry as _registry
from . import report as _report
from ..core.cache import MODES, RunCache, current, parse_size, use
from ..core.errors import InterpError
from ..core.files import dumps, write_atomic

CLAIM_PROPERTY = "interp_claim"
GRID_PROPERTY = "interp_grid"
#: key of the run-cache counters an xdist worker sends to the controller in ``workeroutput``
WORKER_CACHE_KEY = "interp_cache"
_COUNTERS = ("hits", "misses", "writes", "bad")


def cache_counts() -> dict[str, int]:
    """This process's run-cache counters (a worker sends them to the controller when it finishes)."""
    cache = current()
    return {k: int(getattr(cache, k)) for k in _COUNTERS}


def configure_cache(config: pytest.Config) -> None:
    """Set up the run cache from --interp-cache / interp_cache_dir / PYTEST_INTERP_CACHE and the mode."""
    mode = config.getoption("interp_cache_mode") or config.getini("interp_cache_mode") or "readwrite"
    if mode not in MODES:
        raise pytest.UsageError(f"--interp-cache-mode={mode!r}: expected one of {', '.join(MODES)}")
    prune = config.getoption("interp_cache_prune")
    if prune:
        try:
            parse_size(prune)
        except ValueError as exc:
            raise pytest.UsageError(f"--interp-cache-prune: {exc}") from None
    raw = config.getoption("interp_cache") or config.getini("interp_cache_dir") or os.environ.get(
        "PYTEST_INTERP_CACHE")
    if raw:
        directory: Path | None = Path(raw) if os.path.isabs(raw) else Path(config.rootpath) / raw
    elif getattr(config, "cache", None) is not None:
        directory = Path(config.cache.mkdir("interp-runs"))
    else:
        directory = None  # -p no:cacheprovider and no directory given
    use(RunCache(directory, mode if directory is not None else "off"))


class Options:
    """The session's reporting options, validated once (bad values are usage errors)."""

    def __init__(self, config: pytest.Config) -> None:
        root = Path(config.rootpath)
        opt = config.getoption
        self.json = opt("interp_json")
        self.html = opt("interp_html")
        self.register = bool(opt("interp_register"))
        self.require_registered = bool(opt("interp_require_registered"))
        registry = opt("interp_registry") or config.getini("interp_registry") or "interp-registry.json"
        self.registry = Path(registry) if os.path.isabs(registry) else root / registry
        bdir = opt("interp_baseline_dir") or config.getini("interp_baseline_dir") or ".interp/baselines"
        self.baseline_dir = Path(bdir) if os.path.isabs(bdir) else root / bdir
        self.save_baseline = opt("interp_save_baseline")
        self.replace_baseline = bool(opt("interp_replace_baseline"))
        self.compare = opt("interp_compare")
        spec = opt("interp_fail_drift")
        if self.register and self.require_registered:
            raise pytest.UsageError("--interp-register and --interp-require-registered exclude each other: "
                                    "register locally, commit the registry, and require it in CI")
        try:
            self.tolerance = _baselines.Tolerance.parse(spec) if spec else None
            for name in (self.save_baseline, self.compare):
                if name:
                    _baselines.check_name(name)
        except ValueError as exc:
            raise pytest.UsageError(f"pytest-interp: {exc}") from None
        _report_mode(config)  # a bad --interp-report is a usage error now, not at the end of the run
        if self.tolerance and not self.compare:
            raise pytest.UsageError("--interp-fail-drift needs --interp-compare NAME (the baseline to compare with)")
        self.baseline: dict[str, Any] | None = None
        if self.compare:
            path = _baselines.path_for(self.baseline_dir, self.compare)
            if not path.exists():
                saved = sorted(p.stem for p in self.baseline_dir.glob("*.json")) if self.baseline_dir.exists() else []
                raise pytest.UsageError(f"--interp-compare {self.compare}: no baseline at {path} (saved: "
                                        f"{', '.join(saved) or 'none'}); save one with --interp-save-baseline NAME")
            try:
                self.baseline = _baselines.load(path)
            except (ValueError, OSError) as exc:
                raise pytest.UsageError(f"pytest-interp: {exc}") from None
        if self.save_baseline:
            path = _baselines.path_for(self.baseline_dir, self.save_baseline)
            if path.exists() and not self.replace_baseline:
                raise pytest.UsageError(f"--interp-save-baseline {self.save_baseline}: {path} exists; choose a new "
                                        "name, or add --interp-replace-baseline (the old file is kept beside it "
                                        "with a timestamp)")
        try:
            self.entries = _registry.load(self.registry)
        except ValueError as exc:
            if self.register or self.require_registered:
                raise pytest.UsageError(f"pytest-interp: {exc}") from None
            # a run that only shows registry status goes on without it, and says so
            self.entries = {}
            config.issue_config_time_warning(pytest.PytestConfigWarning(
                f"pytest-interp: {exc}\n  (claims are shown without their registry status; --interp-register and "
                "--interp-require-registered refuse to run until the file is fixed)"), stacklevel=2)
        if self.require_registered and not self.registry.exists():
            raise pytest.UsageError(f"--interp-require-registered: no registry at {self.registry}; create it with "
                                    "`pytest claims/ --interp-register` and commit it")


def _report_mode(config: pytest.Config) -> str:
    """The terminal report: ``short`` (the compact table), ``full`` (every column; also with -v) or ``none``."""
    mode = config.getoption("interp_report", None) or config.getini("interp_report") or None
    if mode is None:
        return "full" if config.getoption("verbose", 0) > 0 else "short"
    if mode not in ("short", "full", "none"):
        raise pytest.UsageError(f"--interp-report={mode}: expected short, full or none")
    return str(mode)


def _width(tr: Any) -> int:
    """The terminal's width (pytest's own idea of it), never below 80."""
    return max(80, int(getattr(getattr(tr, "_tw", None), "fullwidth", 110) or 110))


class ClaimsSession:
    """Registered on the controller only (never on xdist workers)."""

    def __init__(self, config: pytest.Config, options: Options, controls: dict[str, Any]) -> None:
        self.config = config
        self.options = options
        self.controls = controls
        self.records: list[dict[str, Any]] = []
        self.drift: list[dict[str, Any]] | None = None
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.grids: list[dict[str, Any]] = []
        self.worker_cache = dict.fromkeys(_COUNTERS, 0)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: a worker finished; add its run-cache counters to the session's."""
        counts = getattr(node, "workeroutput", {}).get(WORKER_CACHE_KEY) or {}
        for k in _COUNTERS:
            self.worker_cache[k] += int(counts.get(k, 0))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == CLAIM_PROPERTY:
                r = json.loads(str(value))
                r["outcome"] = ("xfailed" if report.skipped else "xpassed") if hasattr(report, "wasxfail") \
                    else report.outcome
                if hasattr(report, "wasxfail"):
                    r["xfail_reason"] = str(report.wasxfail).removeprefix("reason: ")
                self.records.append(r)
            elif key == GRID_PROPERTY:
                self.grids.append(json.loads(str(value)))

    def _unique(self) -> list[dict[str, Any]]:
        """One record per claim key (hypothesis examples of one claim: the first)."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.records:
            seen.setdefault(_registry.claim_key(r), r)
        return list(seen.values())

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        o = self.options
        unique = self._unique()
        if o.baseline is not None:
            self.drift = _baselines.compare(o.baseline, unique, o.tolerance)
            bad = [row for row in self.drift if row["exceeded"]]
            if bad and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if o.register and unique:
            self._write(session, f"registry {o.registry} not updated", self._register, unique)
        if o.save_baseline and unique:
            self._write(session, f"baseline '{o.save_baseline}' not saved", self._save_baseline, unique)
        if (o.json or o.html) and (self.records or self.grids):
            report = _report.build(self.records, self.controls, self.drift, self.grids)
            if o.json:
                self._write(session, f"JSON report {o.json} not written", self._write_report, Path(o.json),
                            dumps(report), "JSON report")
            if o.html:
                self._write(session, f"HTML report {o.html} not written", self._write_report, Path(o.html),
                            _report.render_html(report), "HTML report")

    def _write(self, session: pytest.Session, failed: str, step: Any, *args: Any) -> None:
        """Run one write step; a failure is reported in the summary and fails the run, never an INTERNALERROR."""
        try:
            step(*args)
        except (InterpError, OSError) as exc:
            self.errors.append(f"{failed}: {exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def _register(self, unique: list[dict[str, Any]]) -> None:
        o = self.options
        done = _registry.register(o.registry, unique, Path(self.config.rootpath))
        self.notes.append(f"registry {o.registry}: {len(done['added'])} added, {len(done['updated'])} "
                          f"re-registered, {len(done['kept'])} other entries kept unchanged")
        self.notes += [f"  re-registered {u}" for u in done["updated"]]

    def _save_baseline(self, unique: list[dict[str, Any]]) -> None:
        o = self.options
        path = _baselines.path_for(o.baseline_dir, o.save_baseline)
        kept = _baselines.save(path, unique, self.controls, replace=o.replace_baseline)
        if kept is not None:
            self.notes.append(f"previous baseline kept as {kept}")
        self.notes.append(f"saved baseline '{o.save_baseline}' ({len(unique)} claims) to {path}")

    def _write_report(self, path: Path, text: str, what: str) -> None:
        write_atomic(path, text)
        self.notes.append(f"{what}: {path}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        mode = _report_mode(self.config)
        if not self.records or mode == "none":
            self._errors(tr)
            return
        tr.section("interpretability claims")
        models = {r["model"]["fingerprint"]: r["model"] for r in self.records}
        for fp, m in models.items():
            shape = (f"{m['layers']}x{m['heads']} encoder, {m['decoder_layers']}x{m['heads']} decoder"
                     if m.get("decoder_layers") else f"{m['layers']}x{m['heads']}")
            tr.write_line(f"model {m.get('name')}: {m['architecture']} {shape}, "
                          f"vocab {m['vocab_size']}, {m['dtype']}, {m['attn_implementation']} attention, "
                          f"fingerprint {fp[:12]}")
        c = self.controls
        tr.write_line(f"alpha={c['alpha']} seed={c['seed']} bootstrap={c['n_boot']} permutations={c['n_perm']}")
        show_registry = bool(self.options.entries) or self.options.register or self.options.require_registered
        if mode == "full":
            for line in _report.aligned(_report.table(self.records, show_registry)):
                tr.write_line(line)
        else:
            for line in _report.compact(self.records, _width(tr), show_registry):
                tr.write_line(line)
        claims = [r for r, _ in _report.folded(self.records)]
        n_bad = sum(not r["passed"] for r in claims)
        xfail = sum(r.get("outcome") == "xfailed" for r in claims)
        expected = f" ({xfail} of them documented false claims, expected to fail)" if xfail else ""
        tr.write_line(f"{len(claims)} claims: {len(claims) - n_bad} held, {n_bad} rejected{expected}.")
        tr.write_line("A claim holds only when its confidence interval clears the threshold."
                      + ("" if mode == "full" else " Every column: -v or --interp-report=full."))
        if self.drift is not None:
            self._drift_table(tr)
        for note in self.notes:
            tr.write_line(note)
        self._errors(tr)
        self._cache_line(tr)
        tr.write_line("next: " + self._hint())

    def _errors(self, tr: Any) -> None:
        for error in self.errors:
            tr.write_line(f"ERROR (pytest-interp): {error}", red=True, bold=True)

    def _cache_line(self, tr: Any) -> None:
        cache = current()
        if cache.mode == "off":
            return
        prune = self.config.getoption("interp_cache_prune")
        pruned = ""
        if prune:
            removed, freed = cache.prune(parse_size(prune))
            pruned = f"; pruned {removed} entries ({freed / 1e6:.1f} MB)"
        entries, size = cache.size()
        n = {k: getattr(cache, k) + self.worker_cache[k] for k in _COUNTERS}  # xdist: the workers' counts
        bad = f", {n['bad']} unreadable (recomputed)" if n["bad"] else ""
        tr.write_line(f"run cache {cache.directory} ({cache.mode}): {n['hits']} hits, {n['misses']} misses, "
                      f"{n['writes']} written{bad}; {entries} entries, {size / 1e6:.1f} MB{pruned}")

    def _drift_table(self, tr: Any) -> None:
        o = self.options
        tol = f" (tolerance {o.tolerance})" if o.tolerance else ""
        tr.write_line("")
        tr.write_line(f"drift from baseline '{o.compare}'{tol}:")
        rows: list[tuple[str, ...]] = [("", "claim", "baseline", "now", "drift", "relative", "status")]
        for row in self.drift or []:
            rel = "-" if row["rel"] is None else f"{row['rel'] * 100:+.1f}%"
            drift = "-" if row["drift"] is None else f"{row['drift']:+.3g}"
            flag = "!!" if row["exceeded"] else ""
            status = row["status"] + (", verdict changed" if row.get("verdict_changed") else "")
            rows.append((flag, row["key"], _report.fmt(row["baseline"]), _report.fmt(row["current"]), drift, rel,
                         status))
        for line in _report.aligned(rows):
            tr.write_line(line)
        bad = [row["key"] for row in self.drift or [] if row["exceeded"]]
        if bad:
            tr.write_line(f"{len(bad)} claim(s) drifted beyond tolerance: {', '.join(bad)}")

    def _hint(self) -> str:
        o = self.options
        if self.drift and any(row["exceeded"] for row in self.drift):
            return "inspect the drifted claims; if the change is intended, save a new baseline with " \
                   "--interp-save-baseline NAME"
        if not o.entries and not o.register:
            return "pre-register these claims with `pytest claims/ --interp-register`, commit the registry, " \
                   "and run CI with --interp-require-registered"
        if not o.compare and not o.save_baseline:
            return "save these effects with --interp-save-baseline NAME; gate the next model release with " \
                   "--interp-model=NEW --interp-compare=NAME --interp-fail-drift=rel=20%"
        return "write a report for your dashboard with --interp-json PATH or --interp-html PATH"
