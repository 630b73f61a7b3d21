"""fixtures/retro-t5 through the package: cross-attention as output_attentions returns it, and provenance and
reliance equal to the plain-torch measurements of fixtures/measure_retro_t5.py (the CARD's numbers)."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from tests.helpers import FIXTURES, fixture_module, shipped

RETRO = FIXTURES / "retro-t5"
N = 64


@pytest.fixture(scope="module")
def retro():
    return shipped(RETRO)


@pytest.fixture(scope="module")
def measured(retro):
    mrt = fixture_module("measure_retro_t5")
    return mrt.measure(retro.model, retro.tokenizer, n=N, check_training=False)


@pytest.fixture(scope="module")
def prompts():
    raw = fixture_module("train_retro_t5").make_prompts(N, fixture_module("measure_retro_t5").MEASURE_SEED)
    return raw, [pi.Prompt(*p["segments"], answer=p["answer"]) for p in raw]


def test_the_fixture_loads_as_an_encoder_decoder_with_its_cross_attention_readable(retro, prompts):
    raw, _ = prompts
    assert retro.encoder_decoder and retro.n_layers == 2 and retro.n_decoder_layers == 2
    x = retro.tokens([p["text"] for p in raw])
    with torch.no_grad():
        out = retro.model(input_ids=x, decoder_input_ids=torch.zeros(N, 1, dtype=torch.long), output_attentions=True)
    for layer in range(2):
        assert torch.equal(pi.explain.attention_weights(retro, x, layer), out.cross_attentions[layer].float())


def test_provenance_and_reliance_equal_the_independent_measurements(retro, prompts, measured):
    raw, ps = prompts
    queried = [p["queried"] for p in raw]
    decoy = [p["decoy"] for p in raw]
    for layer in range(2):
        got = pi.attention_mass(retro, ps, queried, layers=[layer])
        assert got.mean == pytest.approx(measured["mass"]["queried"]["layer"][layer]["mean"], abs=1e-5)
        got = pi.attention_mass(retro, ps, decoy, layers=[layer])
        assert got.mean == pytest.approx(measured["mass"]["decoy"]["layer"][layer]["mean"], abs=1e-5)
    for method, table in (("delete", "deletion"), ("mask", "masking")):
        for name, which in (("queried", queried), ("decoy", decoy)):
            eff = pi.leave_out(retro, ps, which, method=method)
            assert eff.mean == pytest.approx(measured[table][name]["drop"]["mean"], abs=1e-4), (method, name)


def test_cross_head_damage_equals_the_independent_measurement(retro, prompts, measured):
    raw, _ = prompts
    x = retro.tokens([p["text"] for p in raw])
    metric = pi.metrics.logprob([p["answer"] for p in raw])
    for layer, head in ((0, 2), (1, 1)):
        eff = pi.ablate(retro, pi.cross_head(layer, head), inputs=x, metric=metric, how=pi.Zero())
        assert eff.mean == pytest.approx(measured["heads"][(layer, head)]["drop"]["mean"], abs=1e-4)


def test_the_read_not_relied_on_claim_holds_on_a_read_document_and_fails_on_the_unread_decoy(retro, prompts):
    raw, ps = prompts
    other = [min({0, 1, 2, 3} - {p["queried"], p["decoy"]}) for p in raw]
    pi.assert_read_not_relied_on(retro, ps, other, attention_at_least=0.04, within=0.1, layers=[1])
    with pytest.raises(pi.ClaimFailed, match="NOT read at that level"):
        pi.assert_read_not_relied_on(retro, ps, [p["decoy"] for p in raw], attention_at_least=0.05, within=0.1)
    queried = [p["queried"] for p in raw]
    pi.assert_read_and_relied_on(retro, ps, queried, attention_at_least=0.5, at_least=10.0)
    with pytest.raises(pi.ClaimFailed, match="removal damage: NOT at that level"):
        pi.assert_read_and_relied_on(retro, ps, other, attention_at_least=0.04, at_least=0.5, layers=[1])
