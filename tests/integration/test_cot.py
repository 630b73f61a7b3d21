"""Chain-of-thought tests (pi.cot) on the two chain-of-thought fixtures: exactness, and bad input."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from tests.helpers import FIXTURES, fixture_module

FAITHFUL, DECORATIVE = FIXTURES / "cot-faithful-gpt2", FIXTURES / "cot-decorative-gpt2"


@pytest.fixture(scope="module")
def problems():
    mod = fixture_module("train_cot_gpt2")
    p = mod.make_problems("heldout", n=32, seed=3)
    x, chain = p["x"], p["chain"]
    wrong = mod.propagate(x, chain, torch.zeros(len(x), dtype=torch.long), (chain[:, 0] + 3) % 10)

    def chains(c):
        return [pi.Chain("<bos> " + " + ".join(str(int(v)) for v in xi) + " :", [str(int(v)) for v in ci], "=")
                for xi, ci in zip(x, c)]
    return chains(chain), chains(wrong), mod


@pytest.fixture(scope="module")
def faithful():
    return pi.load(FAITHFUL)


def test_patching_the_stream_entering_layer_0_is_writing_the_other_chain(faithful, problems):
    right, wrong, _ = problems
    by_q = {c.question: w.steps for c, w in zip(right, wrong)}
    patched = pi.cot(faithful, right, test="patch", source=wrong, layers=[0])
    written = pi.cot(faithful, right, test="mistake", corrupt=lambda c: by_q[c.question])
    assert torch.allclose(torch.as_tensor(patched.drop.values), torch.as_tensor(written.drop.values), atol=1e-5)
    assert patched.changed.mean == written.changed.mean == 1.0
    assert patched.follows is not None and patched.follows.mean == 1.0


def test_the_readings_match_a_hand_computation(faithful, problems):
    right, _, mod = problems
    res = pi.cot(faithful, right, test="early", k=1, choices=[str(d) for d in range(10)])
    digits = torch.arange(10) + mod.DIGIT0
    full_ids = faithful.tokens([f"{c.question} {' '.join(c.steps)} {c.cue}" for c in right])
    cut_ids = faithful.tokens([f"{c.question} {c.steps[0]} {c.cue}" for c in right])
    with torch.no_grad():
        full = torch.log_softmax(faithful.model(input_ids=full_ids).logits[:, -1, digits], -1)
        cut = torch.log_softmax(faithful.model(input_ids=cut_ids).logits[:, -1, digits], -1)
    ans = full.argmax(-1)
    assert res.changed.mean == pytest.approx(float((cut.argmax(-1) != ans).float().mean()))
    want = (full.gather(1, ans[:, None]) - cut.gather(1, ans[:, None]))[:, 0]
    assert torch.allclose(torch.as_tensor(res.drop.values, dtype=torch.float32), want, atol=1e-5)


def test_the_model_writes_its_own_chains(faithful, problems):
    right, _, _ = problems
    own = pi.cot_chains(faithful, [c.question for c in right], steps=3, cue="=")
    assert sum(o.steps == c.steps for o, c in zip(own, right)) >= 30  # it writes the running sums


def test_bad_chain_input_is_refused(faithful, problems):
    right, wrong, _ = problems
    with pytest.raises(pi.InterpError, match="chain is empty"):
        pi.Chain("<bos> 1 + 2 + 3 + 4 :", [], "=")
    with pytest.raises(pi.InterpError, match="truncation point"):
        pi.cot(faithful, right, test="early", k=3)
    with pytest.raises(pi.InterpError, match="past the end"):
        pi.cot(faithful, right, test="mistake", step=5)
    with pytest.raises(pi.InterpError, match="unknown chain-of-thought test"):
        pi.cot(faithful, right, test="shuffle")
    with pytest.raises(pi.InterpError, match="filler token"):
        pi.cot(faithful, right, test="filler")
    with pytest.raises(pi.InterpError, match="one source chain per prompt"):
        pi.cot(faithful, right, test="patch", source=wrong[:3])
    longer = [pi.Chain(c.question, list(c.steps) + ["1"], c.cue) for c in wrong]
    with pytest.raises(pi.InterpError, match="another token layout"):
        pi.cot(faithful, right, test="patch", source=longer)
    with pytest.raises(pi.InterpError, match="equals the original"):
        pi.cot(faithful, right, test="mistake", corrupt=lambda c: c.steps)
    with pytest.raises(pi.InterpError, match="pi.Chain"):
        pi.cot(faithful, ["<bos> 1 + 2 :"], test="early")
