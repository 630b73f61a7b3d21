"""The pytest plugin: options, markers, the `subject` and `repeated` fixtures, and the claims summary.

Loaded on every pytest run (``pytest --help`` included), so it imports torch and transformers only inside
fixtures, never at import time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from . import hookspecs

_CLAIM_KEY = "interp_claim"
_subjects_key = pytest.StashKey[dict]()
_records_key = pytest.StashKey[list]()

_OPTIONS: list[tuple[str, str, Any, str]] = [
    # (name, type, default, help) - each is --interp-NAME and ini key interp_NAME
    ("model", "path", None, "model directory the `subject` fixture loads (a local Hugging Face checkpoint)"),
    ("alpha", "float", 0.05, "two-sided error rate of confidence intervals; claims use (1 - alpha) CIs"),
    ("seed", "int", 0, "seed of bootstrap resampling, permutation tests and generated inputs"),
    ("n-boot", "int", 10_000, "bootstrap resamples per confidence interval"),
    ("n-perm", "int", 10_000, "sign-flip permutations per p-value"),
    ("batch-size", "int", 64, "examples per forward pass"),
    ("device", "str", "cpu", "torch device models are loaded on"),
]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interp", "interpretability claims (pytest-interp)")
    for name, _type, default, help_ in _OPTIONS:
        key = "interp_" + name.replace("-", "_")
        group.addoption(f"--interp-{name}", dest=key, default=None, metavar=name.upper().replace("-", "_"),
                        help=f"{help_} (ini: {key}; default: {default})")
        parser.addini(key, help_, default=None)


def _value(config: pytest.Config, name: str, type_: str, default: Any) -> Any:
    key = "interp_" + name.replace("-", "_")
    raw = config.getoption(key)
    source = f"--interp-{name}"
    if raw is None:
        raw = config.getini(key)
        source = f"ini key {key}"
    if raw in (None, "", []):
        return default
    if type_ == "path":
        base = Path(config.rootpath) if source.startswith("ini") else Path.cwd()
        return str((base / str(raw)).resolve()) if not os.path.isabs(str(raw)) else str(raw)
    try:
        value = {"float": float, "int": int, "str": str}[type_](raw)
    except ValueError:
        raise pytest.UsageError(f"{source}={raw!r} is not a valid {type_} (pytest-interp: expected e.g. "
                                f"{default!r})") from None
    if name == "alpha" and not 0 < value < 1:
        raise pytest.UsageError(f"{source}={raw!r}: alpha must lie in (0, 1), e.g. 0.05")
    if type_ == "int" and name != "seed" and value < 1:
        raise pytest.UsageError(f"{source}={raw!r}: must be a positive integer")
    return value


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interp_model(path): the `subject` fixture of this module loads the model "
                            "directory at path (relative paths: from the rootdir); set it as pytestmark")
    config.addinivalue_line("markers", "interp_claim: a pre-registered interpretability claim (set on every test "
                            "that uses the `subject` fixture)")
    values = {name.replace("-", "_"): _value(config, name, t, d) for name, t, d, _ in _OPTIONS}
    config.stash[_subjects_key] = {}
    config.stash[_records_key] = []
    config._interp_values = values  # type: ignore[attr-defined]
    from . import _adapters, _settings

    _settings.configure(alpha=values["alpha"], seed=values["seed"], n_boot=values["n_boot"],
                        n_perm=values["n_perm"], batch_size=values["batch_size"], device=values["device"])
    _adapters._active_hook[:] = [config.hook.pytest_interp_adapter]
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ClaimsReport(config), "interp-claims-report")


def pytest_unconfigure(config: pytest.Config) -> None:
    from . import _adapters

    _adapters._active_hook[:] = []


def pytest_report_header(config: pytest.Config) -> str:
    v = config._interp_values  # type: ignore[attr-defined]
    model = v["model"] or "(none: set --interp-model or interp_model)"
    return (f"interp: model={model} alpha={v['alpha']} seed={v['seed']} bootstrap={v['n_boot']} "
            f"device={v['device']}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "subject" in getattr(item, "fixturenames", ()):
            item.add_marker("interp_claim")
            cls = getattr(item, "cls", None)
            own = [m for m in getattr(item, "own_markers", []) if m.name == "interp_model"]
            if cls is not None:
                own += [m for m in getattr(cls, "pytestmark", []) if m.name == "interp_model"]
            if own:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.interp_model on a test or class is not honoured: the `subject` "
                    "fixture is module-scoped (so it works with hypothesis). Put "
                    "`pytestmark = pytest.mark.interp_model(path)` at module level, or call pi.load(path) in "
                    "the test.")


def _model_path(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("interp_model")
    if marker is None and request.node.parent is not None:
        marker = request.node.parent.get_closest_marker("interp_model")
    if marker is not None:
        if not marker.args:
            raise pytest.UsageError("@pytest.mark.interp_model needs a path: @pytest.mark.interp_model('dir')")
        raw = str(marker.args[0])
        return raw if os.path.isabs(raw) else str((Path(request.config.rootpath) / raw).resolve())
    path = request.config._interp_values["model"]  # type: ignore[attr-defined]
    if path is None:
        from ._errors import InterpError

        raise InterpError("the `subject` fixture has no model to load",
                          expected="a model directory from --interp-model, the interp_model ini key, or "
                          "@pytest.mark.interp_model(path)", seen="none of them set",
                          fix="add `interp_model = path/to/model` to your pytest configuration")
    return str(path)


@pytest.fixture(scope="module")
def subject(request: pytest.FixtureRequest) -> Any:
    """The model under test (a ``pi.Subject``), loaded once per session per model directory.

    Module-scoped, so it works with hypothesis's ``@given``; ``@pytest.mark.interp_model(path)`` therefore
    applies per module (``pytestmark = pytest.mark.interp_model(path)``)."""
    from ._subject import load

    path = _model_path(request)
    cache = request.config.stash[_subjects_key]
    if path not in cache:
        cache[path] = load(path)
    return cache[path]


@pytest.fixture(scope="module")
def repeated(subject: Any) -> Any:
    """128 random sequences BOS + A + A (A fills half the context, at most 64 tokens) for the subject:
    ``.tokens``, ``.first_half`` and ``.second_half`` prediction masks."""
    from ._data import repeated_tokens
    from ._settings import settings

    return repeated_tokens(subject, n=128, seed=settings().seed, layout="halves")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when == "call":
        from . import _records

        for record in _records.drain():
            report.user_properties.append((_CLAIM_KEY, json.dumps(record, sort_keys=True)))
    return report


class ClaimsReport:
    """Collects claim records from test reports (on the controller under xdist) and prints the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == _CLAIM_KEY:
                r = json.loads(value)
                r["test"] = report.nodeid
                r["outcome"] = "xfailed" if hasattr(report, "wasxfail") else report.outcome
                self.records.append(r)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        tr = terminalreporter
        tr.section("interpretability claims")
        rows = []
        for r in sorted(self.records, key=lambda r: (r["test"], r["claim"])):
            verdict = ("held" if r["passed"] else "REJECTED") + (" (xfail)" if r["outcome"] == "xfailed" else "")
            lvl = round(100 * (1 - r["alpha"]), 2)
            rows.append((verdict, r["test"], r["claim"], f"{_fmt(r['effect'])}",
                         f"[{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]", r["threshold"], str(r["n"])))
        lvl = round(100 * (1 - self.records[0]["alpha"]), 2)
        head = ("verdict", "test", "claim", "effect", f"{lvl:g}% CI", "threshold", "n")
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            tr.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        n_bad = sum(not r["passed"] for r in self.records)
        tr.write_line(f"{len(self.records)} claims: {len(self.records) - n_bad} held, {n_bad} rejected; "
                      f"alpha={self.records[0]['alpha']} seed={self.records[0]['seed']}. A claim holds only when "
                      "its confidence interval clears the threshold.")


def _fmt(x: float) -> str:
    return f"{x:.3g}"
