"""Plugin tests run pytest inside pytest (pytester) against a tiny seeded model saved as an HF directory."""

from __future__ import annotations

import pytest

# Import every module before pytester snapshots sys.modules: in-process runs then share one copy of each
# class (a module first imported inside a run would be dropped after it and imported anew by the next).
import pytest_interp.assertions.ablation  # noqa: F401
import pytest_interp.strategies  # noqa: F401
from tests.helpers import tiny_model

CLAIMS = '''
import pytest
import torch
import pytest_interp as pi

TOKENS = torch.randint(1, 48, (16, 12), generator=torch.Generator().manual_seed(0))

def test_last_position_is_not_necessary(subject):
    pi.assert_not_necessary(subject, pi.resid(1).at(-1), inputs=TOKENS, metric=pi.metrics.loss(),
                            within=0.01, how=pi.Zero())

def test_final_stream_is_necessary(subject):
    pi.assert_necessary(subject, pi.resid(2), inputs=TOKENS, metric=pi.metrics.kl(), at_least=1e-6,
                        how=pi.Zero())

def test_false_claim(subject):
    pi.assert_not_necessary(subject, pi.resid(0), inputs=TOKENS, metric=pi.metrics.kl(), within=1e-9,
                            how=pi.Zero())
'''


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    return path


@pytest.fixture
def claims_project(pytester, model_dir):
    pytester.makeini(f"[pytest]\ninterp_model = {model_dir}\ninterp_n_boot = 500\ninterp_n_perm = 500\n")
    pytester.makepyfile(test_claims=CLAIMS)
    return pytester
