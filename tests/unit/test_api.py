"""The public surface: DESIGN.md's contract names exist, __all__ is sorted and complete, no torch on import."""

import subprocess
import sys

import pytest_interp as pi

CONTRACT = ["load", "head", "attn", "mlp", "resid", "expert", "router", "Zero", "Mean", "Resample", "Noise",
            "metrics", "ablate", "patch", "Effect", "assert_necessary", "assert_not_necessary", "assert_restores",
            "assert_induction_head", "InterpError", "ClaimFailed"]


def test_all_is_sorted_and_complete():
    assert pi.__all__ == sorted(pi.__all__)
    for name in pi.__all__:
        assert getattr(pi, name) is not None, name
    assert set(CONTRACT) <= set(pi.__all__)


def test_metric_names():
    for name in ["loss", "accuracy", "logprob", "logit_diff", "kl", "Metric"]:
        assert callable(getattr(pi.metrics, name))


def test_claim_failed_is_an_assertion_error():
    assert issubclass(pi.ClaimFailed, AssertionError)
    assert not issubclass(pi.InterpError, AssertionError)


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, pytest_interp, pytest_interp.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pytest_help_does_not_import_torch(tmp_path):
    code = ("import sys, pytest; rc = pytest.main(['--help']); "
            "sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "--interp-model" in out.stdout
    assert "TORCH=False" in out.stderr


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError):
        pi.no_such_thing  # noqa: B018
