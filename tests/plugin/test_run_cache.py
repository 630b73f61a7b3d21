"""The run cache through pytest: location in the header, hits across sessions, --cache-clear, modes, xdist."""

from __future__ import annotations

import pytest


def test_second_session_is_served_from_the_cache(claims_project):
    first = claims_project.runpytest()
    first.stdout.fnmatch_lines(["interp cache: *interp-runs (readwrite)", "run cache * 1 hits, 5 misses, 5 written*"])
    second = claims_project.runpytest()
    second.stdout.fnmatch_lines(["run cache * 6 hits, 0 misses, 0 written*"])
    assert second.parseoutcomes() == first.parseoutcomes()
    # --cache-clear clears pytest's cache dir, and with it the run cache
    claims_project.runpytest("--cache-clear").stdout.fnmatch_lines(["run cache * 1 hits, 5 misses*"])


def test_cache_dir_option_env_and_modes(claims_project, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    claims_project.runpytest(f"--interp-cache={shared}").stdout.fnmatch_lines([f"interp cache: {shared} (readwrite)"])
    assert list(shared.glob("*/*.safetensors"))
    monkeypatch.setenv("PYTEST_INTERP_CACHE", str(shared))
    claims_project.runpytest().stdout.fnmatch_lines(["run cache * 6 hits, 0 misses*"])
    ro = tmp_path / "ro"
    claims_project.runpytest(f"--interp-cache={ro}", "--interp-cache-mode=read").stdout.fnmatch_lines(
        ["run cache * 0 written*"])
    assert not ro.exists()
    off = claims_project.runpytest("--interp-cache-mode=off")
    off.stdout.fnmatch_lines(["interp cache: off"])
    assert "run cache " not in off.stdout.str()


def test_prune(claims_project, tmp_path):
    d = tmp_path / "c"
    claims_project.runpytest(f"--interp-cache={d}")
    result = claims_project.runpytest(f"--interp-cache={d}", "--interp-cache-prune=0")
    assert "pruned" in result.stdout.str()
    assert not list(d.glob("*/*.safetensors"))


def test_xdist_workers_share_one_cache(claims_project, tmp_path):
    d = tmp_path / "x"
    # the same claim in two test files: two workers compute and write the same keys concurrently
    claims_project.makepyfile(test_copy=(claims_project.path / "test_claims.py").read_text())
    result = claims_project.runpytest_subprocess("-n", "2", f"--interp-cache={d}", "-p", "no:cacheprovider",
                                                 "-W", "error::pytest_interp.InterpWarning")
    result.assert_outcomes(passed=4, failed=2)
    again = claims_project.runpytest_subprocess("-n", "2", f"--interp-cache={d}", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=4, failed=2)
    assert not [f for f in d.rglob("*.tmp")]


@pytest.mark.parametrize("args,words", [(["--interp-cache-mode=sometimes"], "expected one of off, read, write"),
                                        (["--interp-cache-prune=lots"], "is not a size")])
def test_bad_cache_options(claims_project, args, words):
    result = claims_project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and words in result.stderr.str()
