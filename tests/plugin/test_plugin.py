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
    result.stdout.fnmatch_lines(["*= interpretability claims =*", "verdict*test*claim*effect*95% CI*threshold*n*",
                                 "REJECTED*test_false_claim*", "held*test_final_stream_is_necessary*",
                                 "3 claims: 2 held, 1 rejected*"])


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
    result.stdout.fnmatch_lines(["REJECTED (xfail)*test_false*"])


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
        return lines[start + 1:start + 6]

    assert table(serial) == table(parallel)
