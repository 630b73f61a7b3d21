"""Sites: paper notation, position restriction, hashing and bad input."""

import pytest
import torch

import pytest_interp as pi


def test_paper_notation():
    assert str(pi.head(1, 4)) == "head 1.4"
    assert str(pi.attn(3)) == "attn 3"
    assert str(pi.mlp(5)) == "mlp 5"
    assert str(pi.resid(3)) == "resid 3"
    assert str(pi.expert(1, 2)) == "expert 1.2"
    assert str(pi.router(1)) == "router 1"
    assert str(pi.mlp(5).at(-1)) == "mlp 5 @ -1"
    assert str(pi.resid(2).at([1, 3])) == "resid 2 @ [1, 3]"
    assert str(pi.head(0, 1).at(slice(2, 5))) == "head 0.1 @ 2:5"
    assert str(pi.head(0, 1).at(torch.zeros(2, 4, dtype=torch.bool))) == "head 0.1 @ mask[2x4]"


def test_sites_are_frozen_and_hashable():
    a, b = pi.head(1, 2).at([3, 4]), pi.head(1, 2).at([3, 4])
    assert a == b and hash(a) == hash(b)
    assert len({a, b, pi.head(1, 2)}) == 2
    assert a.unrestricted == pi.head(1, 2)
    with pytest.raises(AttributeError):
        a.layer = 3  # type: ignore[misc]
    mask = pi.head(0, 0).at(torch.ones(2, 3, dtype=torch.bool))
    assert hash(mask) == hash(pi.head(0, 0).at([[True] * 3] * 2))


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_bad_layer(bad):
    with pytest.raises(pi.InterpError, match="layer"):
        pi.head(bad, 0)


@pytest.mark.parametrize("bad", [[], True, [True, False], ["a"], object()])
def test_bad_positions(bad):
    with pytest.raises(pi.InterpError) as err:
        pi.mlp(0).at(bad)
    assert "fix:" in str(err.value)


def test_error_fields():
    with pytest.raises(pi.InterpError) as err:
        pi.head(0, -2)
    e = err.value
    assert e.what and e.expected and e.seen and e.fix
