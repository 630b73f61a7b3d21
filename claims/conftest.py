"""Shared inputs for the example claims. The model comes from `interp_model` (pyproject.toml) or a module's
`pytestmark = pytest.mark.interp_model(...)`."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def corrupted(repeated):
    """`repeated` with the first occurrence of each segment replaced by fresh random tokens (seeded): the
    second half is then no longer a repeat, so in-context copying has nothing to copy."""
    g = torch.Generator().manual_seed(1)
    tokens = repeated.tokens.clone()
    first = repeated.first_half.clone()
    first[:, 1:] |= repeated.first_half[:, :-1]  # the mask marks predictions; include each segment's last token
    tokens[first] = torch.randint(1, 64, (int(first.sum()),), generator=g)
    return tokens
