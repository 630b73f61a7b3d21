"""The pytest plugin: options, markers, the `subject` and `repeated` fixtures, and the claims summary.

Loaded on every pytest run (``pytest --help`` included), so it imports torch and transformers only inside
fixtures, never at import time.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from . import hookspecs

_CLAIM_KEY = "interp_claim"
_subjects_key = pytest.StashKey[dict]()
_options_key = pytest.StashKey[Any]()

_OPTIONS: list[tuple[str, str, Any, str]] = [
    # (name, type, default, help) - each is --interp-NAME and ini key interp_NAME
    ("model", "path", None, "model directory the `subject` fixture loads (a local Hugging Face checkpoint); "
     "write the option with = (after a space, pytest may take the path for its rootdir)"),
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
    add = group.addoption
    add("--interp-json", dest="interp_json", metavar="PATH", help="write the claims report as JSON (versioned schema)")
    add("--interp-html", dest="interp_html", metavar="PATH", help="write the claims report as one self-contained "
        "HTML file (effect bars with CIs, heatmaps)")
    add("--interp-report", dest="interp_report", metavar="MODE", help="the terminal claims table: short (one "
        "entry per claim, fits the terminal; the default), full (every column; also with -v) or none (ini: "
        "interp_report)")
    parser.addini("interp_report", "terminal claims table: short, full or none", default=None)
    add("--interp-register", dest="interp_register", action="store_true",
        help="pre-register the claims run: add or update their entries in the registry file")
    add("--interp-require-registered", dest="interp_require_registered", action="store_true",
        help="fail any claim missing from the registry or changed since it was registered (for CI)")
    add("--interp-registry", dest="interp_registry", metavar="PATH",
        help="registry file (ini: interp_registry; default: interp-registry.json in the rootdir)")
    parser.addini("interp_registry", "pre-registration registry file", default=None)
    add("--interp-save-baseline", dest="interp_save_baseline", metavar="NAME", help="store this run's effects "
        "as baseline NAME")
    add("--interp-replace-baseline", dest="interp_replace_baseline", action="store_true",
        help="allow --interp-save-baseline to replace an existing baseline (the old file is kept, timestamped)")
    add("--interp-compare", dest="interp_compare", metavar="NAME", help="show each claim's drift from baseline NAME")
    add("--interp-fail-drift", dest="interp_fail_drift", metavar="TOL", help="with --interp-compare: exit non-zero "
        "when a claim's effect drifts beyond TOL: abs=X and/or rel=Y (e.g. rel=20%%); drift counts when "
        "|now - baseline| > abs + rel * |baseline|")
    add("--interp-baseline-dir", dest="interp_baseline_dir", metavar="DIR",
        help="where baselines live (ini: interp_baseline_dir; default: .interp/baselines in the rootdir)")
    parser.addini("interp_baseline_dir", "directory of saved baselines", default=None)
    add("--interp-cache", dest="interp_cache", metavar="DIR", help="run cache directory (ini: interp_cache_dir; "
        "env: PYTEST_INTERP_CACHE; default: pytest's cache dir, cleared by --cache-clear)")
    parser.addini("interp_cache_dir", "run cache directory shared across sessions", default=None)
    add("--interp-cache-mode", dest="interp_cache_mode", metavar="MODE",
        help="run cache mode: off, read, write or readwrite (ini: interp_cache_mode; default: readwrite)")
    parser.addini("interp_cache_mode", "run cache mode", default=None)
    add("--interp-cache-prune", dest="interp_cache_prune", metavar="SIZE", help="after the run, delete the "
        "least recently used cache entries until the cache holds at most SIZE (e.g. 500MB)")


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


_FLAGS = ("--interp-register", "--interp-require-registered", "--interp-replace-baseline")


def _check_spaced_paths(config: pytest.Config) -> None:
    """Refuse ``--interp-model PATH`` (any ``--interp-*`` value given after a space) when it moved the rootdir.

    pytest picks its rootdir and config file before it loads plugins, so it does not yet know these options and
    reads an existing PATH after a space as one more test path: ``pytest --interp-model /models/m`` makes
    /models/m the rootdir and reads no config file. ``--interp-model=PATH`` is always safe."""
    args = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    here = config.invocation_params.dir
    spaced = [(a, v) for a, v in zip(args, args[1:]) if a.startswith("--interp-") and "=" not in a
              and a not in _FLAGS and not v.startswith("-") and (here / v).exists()]
    if not spaced:
        return
    try:
        import inspect

        from _pytest.config.findpaths import determine_setup

        given = list(config.args) if config.args_source == pytest.Config.ArgsSource.ARGS else []
        options = {"inifile": config.option.inifilename, "override_ini": config.option.override_ini,
                   "rootdir_cmd_arg": config.option.rootdir or None, "invocation_dir": here}
        accepted = inspect.signature(determine_setup).parameters
        options = {k: v for k, v in options.items() if k in accepted}
        without = determine_setup(args=given, **options)[:2]
        with_values = determine_setup(args=given + [v for _, v in spaced], **options)[:2]
    except Exception:  # noqa: BLE001 - pytest internals changed: skip the check rather than break every run
        return
    if without != with_values:
        shown = " ".join(f"{a} {v}" for a, v in spaced)
        raise pytest.UsageError(
            f"{shown}: written with a space, pytest took {spaced[0][1]} for a test path when it chose the rootdir "
            f"and config file (it does so before plugins load), so the rootdir is {with_values[0]} (config file: "
            f"{with_values[1] or 'none'}) instead of {without[0]} ({without[1] or 'none'}). Write "
            f"{' '.join(f'{a}={v}' for a, v in spaced)}.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interp_model(path): the `subject` fixture of this module loads the model "
                            "directory at path (a relative path is read from the test file's directory); set it "
                            "as pytestmark")
    config.addinivalue_line("markers", "interp_claim: a pre-registered interpretability claim (set on every test "
                            "that uses the `subject` fixture)")
    if not hasattr(config, "workerinput"):
        _check_spaced_paths(config)
    values = {name.replace("-", "_"): _value(config, name, t, d) for name, t, d, _ in _OPTIONS}
    config.stash[_subjects_key] = {}
    config._interp_values = values  # type: ignore[attr-defined]
    from .model import adapters as _adapters
    from .core import settings as _settings

    _settings.configure(alpha=values["alpha"], seed=values["seed"], n_boot=values["n_boot"],
                        n_perm=values["n_perm"], batch_size=values["batch_size"], device=values["device"])
    _adapters._active_hook[:] = [config.hook.pytest_interp_adapter]
    from .session.session import ClaimsSession, Options, configure_cache

    configure_cache(config)
    options = Options(config)
    config.stash[_options_key] = options
    if not hasattr(config, "workerinput"):
        from .session.report import versions

        controls = {k: values[k] for k in ("alpha", "seed", "n_boot", "n_perm", "batch_size", "device")}
        controls.update(decoding=None, versions=versions())
        config.pluginmanager.register(ClaimsSession(config, options, controls), "interp-claims-session")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: send this worker's run-cache counters to the controller, which prints their sum."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        from .session.session import WORKER_CACHE_KEY, cache_counts

        output[WORKER_CACHE_KEY] = cache_counts()


def pytest_unconfigure(config: pytest.Config) -> None:
    from .model import adapters as _adapters
    from .core import cache as _cache

    _adapters._active_hook[:] = []
    _cache.use(_cache.RunCache())


def pytest_report_header(config: pytest.Config) -> list[str]:
    from .core.cache import current

    v = config._interp_values  # type: ignore[attr-defined]
    model = v["model"] or "(none: set --interp-model or interp_model)"
    cache = current()
    where = f"{cache.directory} ({cache.mode})" if cache.mode != "off" else "off"
    return [f"interp: model={model} alpha={v['alpha']} seed={v['seed']} bootstrap={v['n_boot']} "
            f"device={v['device']}", f"interp cache: {where}"]


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
        if os.path.isabs(raw):
            return raw
        holder = next((n for n, m in request.node.iter_markers_with_node("interp_model") if m is marker),
                      request.node)
        here = holder.path.parent if holder.path.is_file() else holder.path
        path = (here / raw).resolve()
        legacy = (Path(request.config.rootpath) / raw).resolve()
        if not path.exists() and legacy.exists():
            import warnings

            from .core.errors import InterpWarning

            warnings.warn(f"interp_model({raw!r}) in {holder.path.name}: relative paths are read from the test "
                          f"file's directory, where {raw!r} does not exist; loading {legacy} (relative to the "
                          f"rootdir) instead. Write interp_model({os.path.relpath(legacy, here)!r}).",
                          InterpWarning, stacklevel=2)
            return str(legacy)
        return str(path)
    path = request.config._interp_values["model"]  # type: ignore[attr-defined]
    if path is None:
        from .core.errors import InterpError

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
    from .model.subject import load

    path = _model_path(request)
    cache = request.config.stash[_subjects_key]
    if path not in cache:
        cache[path] = load(path)
    return cache[path]


@pytest.fixture(scope="module")
def repeated(subject: Any) -> Any:
    """128 random sequences BOS + A + A (A fills half the context, at most 64 tokens) for the subject:
    ``.tokens``, ``.first_half`` and ``.second_half`` prediction masks."""
    from .core.data import repeated_tokens
    from .core.settings import settings

    return repeated_tokens(subject, n=128, seed=settings().seed, layout="halves")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when != "call":
        return report
    from .core import records as _records
    from .session import registry as _registry
    from .session.session import CLAIM_PROPERTY, GRID_PROPERTY

    records = _records.drain()
    for grid in _records.drain_grids():
        grid["test"] = item.nodeid
        report.user_properties.append((GRID_PROPERTY, json.dumps(grid, sort_keys=True)))
    if not records:
        return report
    code_hash = _code_hash(item)
    distinct: list[dict[str, Any]] = []
    options = item.config.stash[_options_key]
    problems = []
    for r in records:
        path, line, _ = item.location
        r.update(test=item.nodeid, code_hash=code_hash, location=path if line is None else f"{path}:{line + 1}")
        hyp = {k: r.get(k) for k in _registry.HYPOTHESIS_FIELDS}
        if hyp not in distinct:
            distinct.append(hyp)
        r["index"] = distinct.index(hyp)
        if options.entries or options.require_registered:
            r["registry"], diff = _registry.status(options.entries, r)
            if options.require_registered and r["registry"] != "registered" and r["index"] == len(distinct) - 1:
                problems.append((r, diff))
        k = f"interp[{r['index']}]"
        props = [(CLAIM_PROPERTY, json.dumps(r, sort_keys=True, default=str)), (f"{k}.claim", r["claim"]),
                 (f"{k}.effect", r["effect"]), (f"{k}.ci_low", r["ci"][0]), (f"{k}.ci_high", r["ci"][1]),
                 (f"{k}.n", r["n"]), (f"{k}.threshold", r["threshold"]),
                 (f"{k}.verdict", "held" if r["passed"] else "rejected")]
        report.user_properties += props
        item.user_properties += props[1:]  # JUnit XML writes the properties of the teardown report
    if problems:
        lines = ["pre-registration check failed (--interp-require-registered):"]
        for r, diff in problems:
            if r["registry"] == "unregistered":
                lines.append(f"  {_registry.claim_key(r)}: not in the registry {options.registry}")
            else:
                lines.append(f"  {_registry.claim_key(r)}: changed since registration:")
                lines += [f"    - {d}" for d in diff]
        lines.append("  fix: if the change is intended, re-register with `pytest --interp-register` and commit "
                     "the registry (its diff shows the change to reviewers)")
        report.outcome = "failed"
        report.longrepr = "\n".join(lines)
    return report


def _code_hash(item: pytest.Item) -> str:
    """sha256 of the test function's source (a changed test body changes the hypothesis)."""
    import hashlib
    import inspect

    fn = getattr(item, "function", None)
    try:
        src = inspect.getsource(fn) if fn is not None else item.nodeid
    except (OSError, TypeError):
        src = item.nodeid
    return hashlib.sha256(src.encode()).hexdigest()
