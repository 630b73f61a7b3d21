"""The pytest plugin: options, ini keys, markers, fixtures, failing-claim messages, summary and exit codes."""

from __future__ import annotations

import pytest


def test_options_and_ini_keys_are_registered(pytester):
    result = pytester.runpytest("--help")
    for opt in ["--interp-model", "--interp-alpha", "--interp-seed", "--interp-n-boot", "--interp-n-perm",
                "--interp-batch-size", "--interp-device"]:
        result.stdout.fnmatch_lines([f"*{opt}*"])
    result.stdout.fnmatch_lines(["*interp_alpha*", "*interp_model*"])


def test_markers_are_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.interp_model(path)*", "@pytest.mark.interp_claim*"])


def test_true_claims_pass_false_claim_fails_with_a_full_message(claims_project):
    result = claims_project.runpytest("-rf")
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    for piece in ["claim failed: resid 0 is not necessary for kl", "sites:        resid 0",
                  "intervention: zero-ablate", "95% CI [", "n=16", "threshold:    |damage| <= 1e-09",
                  "alpha=0.05", "seed=0", "ClaimFailed"]:
        assert piece in out, piece
    result.stdout.fnmatch_lines(["*= interpretability claims =*",
                                 "REJECTED  resid 0 is not necessary for kl (|damage| <= 1e-09)",
                                 "held      resid 2 is necessary for kl (damage >= 1e-06)",
                                 "held      resid 1 @ -1 is not necessary for loss*",
                                 "          * (95% CI) vs |damage| <= 0.01; n=16",
                                 "3 claims: 2 held, 1 rejected."])


FOLDED = '''
import pytest
import torch
import pytest_interp as pi
from hypothesis import given, settings, strategies as st

TOKENS = torch.randint(1, 48, (16, 12), generator=torch.Generator().manual_seed(0))

@settings(max_examples=3, deadline=None, derandomize=True)
@given(st.sampled_from([0.5, 1.0, 2.0]))
def test_examples(subject, w):
    pi.assert_not_necessary(subject, pi.resid(1).at(-1), inputs=TOKENS, metric=pi.metrics.loss(), within=0.01,
                            how=pi.Zero())

@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed, reason="the final stream carries everything: the reason "
                   "is shown beside the rejected claim, wrapped to the terminal's width like every other line")
def test_documented_false(subject):
    pi.assert_not_necessary(subject, pi.resid(2), inputs=TOKENS, metric=pi.metrics.kl(), within=1e-9,
                            how=pi.Zero())

def test_a_claim_whose_text_is_long_enough_to_wrap(subject):
    long = [pi.head(0, h) for h in range(4)] + [pi.head(1, h) for h in range(4)] + [pi.mlp(0), pi.mlp(1)]
    pi.assert_necessary(subject, long, inputs=TOKENS, metric=pi.metrics.kl(), at_least=1e-6, how=pi.Zero())
'''


@pytest.mark.parametrize("columns", [80, 110])
def test_the_claims_table_fits_the_terminal_with_one_entry_per_claim(pytester, model_dir, columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    pytester.makeini(f"[pytest]\ninterp_model = {model_dir}\ninterp_n_boot = 500\ninterp_n_perm = 500\n")
    pytester.makepyfile(test_folded=FOLDED)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, xfailed=1)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "interpretability claims" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("3 claims:"))
    table = lines[start + 3:end]
    assert table and max(len(line) for line in table) <= columns, "\n".join(table)
    assert sum(line.startswith(("held", "REJECTED", "xfail")) for line in table) == 3  # hypothesis examples folded
    text = " ".join(" ".join(table).split())  # lines wrap at the terminal's width
    assert "3 examples, the worst shown" in text
    assert "expected to fail: the final stream carries everything" in text
    result.stdout.fnmatch_lines(["3 claims: 2 held, 1 rejected (1 of them documented false claims, expected to "
                                 "fail)*"])


def test_the_full_table_and_no_table(claims_project):
    full = claims_project.runpytest("--interp-report=full")
    full.stdout.fnmatch_lines(["verdict*test*claim*sites*intervention*metric*effect*95% CI*threshold*n*"])
    verbose = claims_project.runpytest("-v")
    verbose.stdout.fnmatch_lines(["verdict*test*claim*sites*intervention*metric*effect*95% CI*threshold*n*"])
    none = claims_project.runpytest("--interp-report=none")
    assert "interpretability claims" not in none.stdout.str()
    bad = claims_project.runpytest("--interp-report=wide")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR and "expected short, full or none" in bad.stderr.str()


def test_all_claims_hold_exit_zero(claims_project):
    result = claims_project.runpytest("-k", "not false")
    result.assert_outcomes(passed=2, deselected=1)
    assert result.ret == pytest.ExitCode.OK


def test_alpha_option_changes_the_interval(claims_project):
    result = claims_project.runpytest("--interp-alpha", "0.2", "-k", "false")
    result.stdout.fnmatch_lines(["*80% CI [*", "*alpha=0.2*"])


def test_seed_option_is_reported(claims_project):
    result = claims_project.runpytest("--interp-seed", "7", "-k", "false")
    result.stdout.fnmatch_lines(["interp: model=* alpha=0.05 seed=7*", "*seed=7*"])


@pytest.mark.parametrize("args,words", [
    (["--interp-alpha", "2"], "alpha must lie in (0, 1)"),
    (["--interp-alpha", "abc"], "is not a valid float"),
    (["--interp-n-boot", "0"], "must be a positive integer"),
])
def test_bad_option_values_are_usage_errors(claims_project, args, words):
    result = claims_project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_no_model_configured(pytester):
    pytester.makepyfile("def test_x(subject):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the `subject` fixture has no model to load*", "*fix:*interp_model*"])


def test_model_option_overrides_ini_and_marker_selects_per_module(pytester, model_dir, tmp_path):
    from tests.helpers import tiny_model

    other = tmp_path / "gpt2"
    tiny_model("gpt2").save_pretrained(other)
    pytester.makeini(f"[pytest]\ninterp_model = {model_dir}\n")
    pytester.makepyfile(test_a="def test_a(subject):\n    assert subject.adapter.name == 'llama'\n",
                        test_b=f"import pytest\npytestmark = pytest.mark.interp_model({str(other)!r})\n"
                               "def test_b(subject):\n    assert subject.adapter.name == 'gpt2'\n")
    pytester.runpytest().assert_outcomes(passed=2)
    result = pytester.runpytest("--interp-model", str(other), "test_a.py")
    result.assert_outcomes(failed=1)


def test_marker_on_a_single_test_is_refused(pytester, model_dir):
    pytester.makepyfile("import pytest\n@pytest.mark.interp_model('x')\ndef test_a(subject):\n    pass\n")
    result = pytester.runpytest(f"--interp-model={model_dir}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pytestmark = pytest.mark.interp_model(path)" in result.stderr.str()


def test_no_tests_collected_exits_5(pytester):
    pytester.makepyfile("")
    assert pytester.runpytest().ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_xfail_strict_false_claim_is_reported_as_xfail(claims_project):
    claims_project.makepyfile(test_x='''
import pytest, torch, pytest_interp as pi
@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed, reason="documented false claim")
def test_false(subject):
    pi.assert_not_necessary(subject, pi.resid(0), inputs=torch.ones(16, 6, dtype=torch.long) * 3,
                            metric=pi.metrics.kl(), within=1e-9, how=pi.Zero())
''')
    result = claims_project.runpytest("test_x.py")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["xfail     resid 0 is not necessary for kl*", "*(95% CI) vs |damage| <= 1e-09; n=16",
                                 "          expected to fail: documented false claim"])
    full = claims_project.runpytest("test_x.py", "--interp-report=full")
    full.stdout.fnmatch_lines(["xfail*test_x.py::test_false*"])


def test_adapter_hook_from_conftest(pytester, model_dir):
    pytester.makeconftest('''
import pytest_interp as pi
CALLS = []
def pytest_interp_adapter(model):
    CALLS.append(type(model).__name__)
    return pi.Adapter(name="custom-llama", layers="model.layers", attn_out="self_attn.o_proj", mlp="mlp")
''')
    pytester.makepyfile("def test_a(subject):\n    assert subject.adapter.name == 'custom-llama'\n")
    pytester.runpytest(f"--interp-model={model_dir}").assert_outcomes(passed=1)


def test_claims_report_under_xdist_matches_serial(claims_project):
    serial = claims_project.runpytest_subprocess("-p", "no:cacheprovider")
    parallel = claims_project.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    serial.assert_outcomes(passed=2, failed=1)
    parallel.assert_outcomes(passed=2, failed=1)

    def table(result):
        lines = result.stdout.str().splitlines()
        start = next(i for i, l in enumerate(lines) if "interpretability claims" in l)
        return lines[start + 1:start + 10]

    assert table(serial) == table(parallel)
