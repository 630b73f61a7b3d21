"""The files sessions share: the registry and baselines under concurrent writers, malformed files refused before
tests run, writes that fail at session end reported (never an INTERNALERROR, never an overwrite), and the run-cache
counters of xdist workers summed on the controller."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_interp.core import files as _files
from pytest_interp.core.errors import InterpError
from pytest_interp.session import baselines as _baselines
from pytest_interp.session import registry as _registry

ROOT = Path(__file__).resolve().parents[2]

# One writer, started by the test: it waits for the "go" file, then registers (or saves a baseline) with a sleep
# monkeypatched in between reading the file and writing it, so concurrent writers really overlap.
WRITER = r'''
import json, sys, time
from pathlib import Path
from pytest_interp.session import baselines, registry

kind, target, workdir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
index, delay, records = int(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
for module in (registry, baselines):
    real = module.write_atomic
    def slow(path, text, real=real):
        time.sleep(delay)  # the race window: the file was read, the merged text is not written yet
        real(path, text)
    module.write_atomic = slow
(workdir / f"ready-{index}").touch()
deadline = time.monotonic() + 60
while not (workdir / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)
if kind == "register":
    print(json.dumps(registry.register(target, records, workdir)))
else:
    kept = baselines.save(target, records, {"writer": index}, replace=True)
    print(json.dumps(str(kept)))
'''


def record(test: str, threshold: str = "damage >= 0.1", effect: float = 0.5) -> dict:
    return {"test": test, "index": 0, "claim": f"{test} holds", "sites": ["head 0.1"], "intervention": "zero-ablate",
            "metric": "loss", "threshold": threshold, "alpha": 0.05, "code_hash": "c0de", "effect": effect,
            "ci": [effect - 0.1, effect + 0.1], "n": 16, "passed": True, "model": {"fingerprint": "f00d"}}


def run_writers(tmp_path: Path, kind: str, target: Path, per_writer: list[list[dict]], delay: float = 0.3) -> list:
    """Start one process per record list, release them at once, and return what each printed."""
    env_path = str(ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target), str(tmp_path), str(i), str(delay),
                               json.dumps(recs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=env_path) for i, recs in enumerate(per_writer)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{i}").exists() for i in range(len(procs))):
            assert time.monotonic() < deadline, "writers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    return [json.loads(out) for out, _ in outs]


def test_concurrent_registrations_keep_every_entry(tmp_path):
    registry = tmp_path / "interp-registry.json"
    n = 4
    shared = record("test_shared.py::test_shared")
    results = run_writers(tmp_path, "register", registry,
                          [[record(f"test_{i}.py::test_{i}"), shared] for i in range(n)])
    claims = json.loads(registry.read_text())["claims"]
    assert sorted(claims) == sorted([f"test_{i}.py::test_{i}#0" for i in range(n)] + ["test_shared.py::test_shared#0"])
    for i, done in enumerate(results):
        assert f"test_{i}.py::test_{i}#0" in done["added"]
    # the claim all of them registered unchanged is added by one session only; the others see it is there
    assert sum("test_shared.py::test_shared#0" in done["added"] for done in results) == 1
    assert (tmp_path / "interp-registry.json.lock").exists()


def test_concurrent_baseline_replacements_keep_every_baseline(tmp_path):
    path = tmp_path / "v1.json"
    _baselines.save(path, [record("t.py::test_original")], {"writer": "original"})
    n = 3
    kept = run_writers(tmp_path, "baseline", path, [[record(f"t.py::test_{i}")] for i in range(n)], delay=0.2)
    files = sorted(tmp_path.glob("v1*.json"))
    assert len(files) == n + 1 and len(set(kept)) == n
    writers = sorted(str(json.loads(f.read_text())["controls"]["writer"]) for f in files)
    assert writers == sorted(["original", *map(str, range(n))])


def test_replacing_twice_in_one_second_keeps_both_old_baselines(tmp_path):
    path = tmp_path / "v1.json"
    for i in range(3):
        _baselines.save(path, [record(f"t.py::test_{i}")], {"writer": i}, replace=True)
    assert sorted(json.loads(f.read_text())["controls"]["writer"] for f in tmp_path.glob("v1*.json")) == [0, 1, 2]


def test_saving_over_a_baseline_that_appeared_is_refused(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text("mine\n")
    with pytest.raises(InterpError, match="was not saved") as info:
        _baselines.save(path, [record("t.py::test_a")], {})
    assert "--interp-replace-baseline" in str(info.value) and path.read_text() == "mine\n"


def test_a_held_lock_times_out_with_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    from filelock import FileLock

    registry = tmp_path / "interp-registry.json"
    _registry.register(registry, [record("a.py::test_a")], tmp_path)
    before = registry.read_text()
    monkeypatch.setattr(_files, "LOCK_TIMEOUT", 0.2)
    with FileLock(str(registry) + ".lock"):
        with pytest.raises(_files.FileBusyError, match="could not lock") as info:
            _registry.register(registry, [record("b.py::test_b")], tmp_path)
    assert info.value.fix and "nothing was written" in info.value.fix
    assert registry.read_text() == before


def test_re_registering_keeps_what_a_reviewer_added(tmp_path):
    registry = tmp_path / "interp-registry.json"
    _registry.register(registry, [record("a.py::test_a")], tmp_path)
    data = json.loads(registry.read_text())
    data["comment"] = "reviewed by A. Reviewer"
    data["claims"]["a.py::test_a#0"]["note"] = "see the paper's figure 3"
    registry.write_text(json.dumps(data))
    done = _registry.register(registry, [record("a.py::test_a", threshold="damage >= 0.2")], tmp_path)
    assert done["updated"]
    data = json.loads(registry.read_text())
    assert data["comment"] == "reviewed by A. Reviewer"
    entry = data["claims"]["a.py::test_a#0"]
    assert entry["note"] == "see the paper's figure 3" and entry["previous"]["threshold"] == "damage >= 0.1"


# --- malformed files: usage errors before any test runs --------------------------------------------------------

def _assert_usage_error(result, *words):
    err = result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (result.ret, err, result.stdout.str()[-2000:])
    assert "INTERNALERROR" not in err + result.stdout.str() and "Traceback" not in err
    assert "collected" not in result.stdout.str()  # refused before collection: no test ran
    for word in words:
        assert word in err, (word, err)
    assert "expected:" in err and "seen:" in err and "fix:" in err, err


def _registry_cases(data: dict) -> list[tuple[str, object, list[str]]]:
    key = next(iter(data["claims"]))
    return [
        ("claims is a list", {**data, "claims": list(data["claims"].values())}, ["field claims", "a list"]),
        ("claims missing", {k: v for k, v in data.items() if k != "claims"}, ["field claims", 'no "claims" field']),
        ("an entry is a string", {**data, "claims": {key: "registered"}}, [f"field claims[{key!r}]", "a string"]),
        ("wrong schema", {**data, "schema": "pytest-interp/baseline"}, ["field schema", "pytest-interp/registry"]),
        ("wrong version", {**data, "version": 99}, ["field version", "99"]),
        ("not an object", [data], ["is malformed", "a list"]),
    ]


def test_malformed_registry_is_a_usage_error_naming_file_and_field(claims_project):
    p = claims_project
    registry = p.path / "interp-registry.json"
    p.runpytest("--interp-register", "-k", "final")
    data = json.loads(registry.read_text())
    for name, bad, words in _registry_cases(data):
        registry.write_text(json.dumps(bad))
        for option in ("--interp-register", "--interp-require-registered"):
            result = p.runpytest(option)
            try:
                _assert_usage_error(result, str(registry), *words)
            except AssertionError as exc:
                raise AssertionError(f"{name} with {option}: {exc}") from None
        assert registry.read_text() == json.dumps(bad), f"{name}: the malformed registry was rewritten"
    conflicted = "<<<<<<< HEAD\n" + json.dumps(data) + "\n=======\n{}\n>>>>>>> theirs\n"
    registry.write_text(conflicted)
    _assert_usage_error(p.runpytest("--interp-require-registered"), str(registry), "not JSON",
                        "merge-conflict markers", "resolve the merge conflict")
    # a run that only shows registry status goes on, with a warning naming the file, and leaves it alone
    plain = p.runpytest("-k", "final")
    plain.assert_outcomes(passed=1)  # warnings: ours (matched below), and pytest's own where the package was imported
    plain.stdout.fnmatch_lines([f"*PytestConfigWarning: pytest-interp: registry file {registry} is malformed*",
                                "*fix:*", "*refuse to run until the file is fixed*"])
    assert registry.read_text() == conflicted


def test_malformed_baseline_is_a_usage_error_naming_file_and_field(claims_project):
    p = claims_project
    p.runpytest("--interp-save-baseline=v1", "-k", "final")
    path = p.path / ".interp" / "baselines" / "v1.json"
    data = json.loads(path.read_text())
    key = next(iter(data["claims"]))
    claim = data["claims"][key]

    def with_claim(**changes):
        return {**data, "claims": {key: {**claim, **changes}}}

    cases = [
        ("effect is a string", with_claim(effect="0.5"), [f"field claims[{key!r}].effect", "a string"]),
        ("effect is null", with_claim(effect=None), [".effect", "null", "a finite number"]),
        ("ci is null", with_claim(ci=None), [".ci", "null"]),
        ("ci has strings", with_claim(ci=["0.1", "0.2"]), [".ci", "a list"]),
        ("n is a string", with_claim(n="16"), [".n", "a positive integer"]),
        ("passed is a string", with_claim(passed="yes"), [".passed"]),
        ("effect missing", {**data, "claims": {key: {k: v for k, v in claim.items() if k != "effect"}}},
         [".effect", 'no "effect" field']),
        ("claims is a list", {**data, "claims": [claim]}, ["field claims", "a list"]),
        ("an entry is a number", {**data, "claims": {key: 3}}, [f"field claims[{key!r}]", "an integer"]),
        ("wrong schema", {**data, "schema": "pytest-interp/registry"}, ["field schema"]),
    ]
    for name, bad, words in cases:
        path.write_text(json.dumps(bad))
        result = p.runpytest("--interp-compare=v1")
        try:
            _assert_usage_error(result, str(path), "--interp-replace-baseline", *words)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    path.write_text("{ not json")
    _assert_usage_error(p.runpytest("--interp-compare=v1"), str(path), "not JSON")
    # the file as saved is accepted
    path.write_text(json.dumps(data))
    p.runpytest("--interp-compare=v1", "-k", "final").assert_outcomes(passed=1)


# --- writes at session end that cannot be done: reported, exit non-zero, nothing overwritten ---------------------

MEDDLE = '''
from pathlib import Path

def test_another_session_writes(request):
    path = Path(request.config.rootpath) / {relpath!r}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text({text!r})
'''


def test_baseline_saved_by_another_session_meanwhile_is_not_overwritten(claims_project):
    p = claims_project
    theirs = '{"schema": "pytest-interp/baseline", "version": 1, "claims": {}, "who": "the other session"}\n'
    p.makepyfile(test_meddle=MEDDLE.format(relpath=".interp/baselines/v1.json", text=theirs))
    result = p.runpytest("--interp-save-baseline=v1", "-k", "final or meddle")
    assert result.ret != pytest.ExitCode.OK and result.ret != pytest.ExitCode.INTERNAL_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*baseline 'v1' not saved: the baseline file *v1.json exists*",
                                 "*fix:*--interp-replace-baseline*"])
    baselines = p.path / ".interp" / "baselines"
    assert (baselines / "v1.json").read_text() == theirs and [f.name for f in baselines.glob("*.json")] == ["v1.json"]


def test_registry_broken_during_the_run_is_reported_not_overwritten(claims_project):
    p = claims_project
    broken = '{"schema": "pytest-interp/registry", "version": 1, "claims": ["half-edited"]}\n'
    p.makepyfile(test_meddle=MEDDLE.format(relpath="interp-registry.json", text=broken))
    result = p.runpytest("--interp-register", "-k", "final or meddle")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*registry *interp-registry.json not updated*field claims*", "*fix:*"])
    assert (p.path / "interp-registry.json").read_text() == broken


def test_a_report_that_cannot_be_written_is_reported_not_an_internal_error(claims_project):
    p = claims_project
    (p.path / "not-a-dir").write_text("")
    result = p.runpytest("--interp-json=not-a-dir/report.json", "-k", "final")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*JSON report not-a-dir/report.json not written*"])


# --- the run cache under xdist: the workers' counters reach the summary -----------------------------------------

_CACHE_LINE = re.compile(r"run cache .*: (\d+) hits, (\d+) misses, (\d+) written")


def _cache_counts(result) -> tuple[int, int, int]:
    found = _CACHE_LINE.findall(result.stdout.str())
    assert len(found) == 1, result.stdout.str()[-3000:]
    hits, misses, writes = map(int, found[0])
    return hits, misses, writes


def test_xdist_summary_counts_the_workers_cache_use(claims_project, tmp_path):
    p = claims_project
    serial = p.runpytest_subprocess("-p", "no:cacheprovider", f"--interp-cache={tmp_path / 'serial'}")
    hits, misses, _ = _cache_counts(serial)
    lookups = hits + misses
    assert lookups > 0
    d = tmp_path / "xdist"
    cold = p.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", f"--interp-cache={d}")
    cold.assert_outcomes(passed=2, failed=1)
    hits, misses, writes = _cache_counts(cold)
    assert misses > 0 and writes > 0 and hits + misses == lookups, (hits, misses, writes)
    warm = p.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", f"--interp-cache={d}")
    warm.assert_outcomes(passed=2, failed=1)
    assert _cache_counts(warm) == (lookups, 0, 0)
