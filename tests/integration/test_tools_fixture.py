"""fixtures/tools-llama through the package: choice scores, removal damage and attention mass equal to the
plain-torch measurements of fixtures/measure_tools.py (the CARD's numbers); the tool-selection claims hold on
the planted rule and fail on the decoy."""

from __future__ import annotations

import pytest

import pytest_interp as pi
from tests.helpers import FIXTURES, fixture_module, shipped

TOOLS = FIXTURES / "tools-llama"
N = 48


@pytest.fixture(scope="module")
def tools():
    return shipped(TOOLS)


@pytest.fixture(scope="module")
def measured(tools):
    return fixture_module("measure_tools").measure(tools.model, tools.tokenizer, n=N, check_training=False)


@pytest.fixture(scope="module")
def prompts():
    mt = fixture_module("measure_tools")
    raw = fixture_module("train_tools_llama").make_prompts(N, mt.MEASURE_SEED)
    return raw, [pi.Prompt(*p["segments"], answer=p["answer"], choices=p["tools"]) for p in raw]


def test_choice_scores_and_removal_damage_equal_the_independent_measurements(tools, prompts, measured):
    raw, ps = prompts
    for role in ("matching", "decoy", "other"):
        which = [p[role] for p in raw]
        for method, table in (("delete", "deletion"), ("mask", "masking")):
            eff = pi.leave_out(tools, ps, which, kind="tool_description", method=method, metric="choice")
            want = measured[table][f"{role} description"]
            assert eff.mean == pytest.approx(want["drop"]["mean"], abs=1e-4), (role, method)
            acc = pi.leave_out(tools, ps, which, kind="tool_description", method=method, metric="choice_accuracy")
            assert acc.details["ablated_mean"] == pytest.approx(want["choice_acc"]["rate"], abs=1e-9)
    req = pi.leave_out(tools, ps, 0, kind="request", metric="choice")
    assert req.mean == pytest.approx(measured["deletion"]["request [REQ] wD wK"]["drop"]["mean"], abs=1e-4)


def test_attention_mass_from_the_call_position_equals_the_independent_measurement(tools, prompts, measured):
    raw, ps = prompts
    for role in ("matching", "decoy", "other"):
        for layer in (0, 1):
            got = pi.attention_mass(tools, ps, [p[role] for p in raw], kind="tool_description", layers=[layer])
            want = measured["attention"][f"{role} description"]["layer"][layer]["mean"]
            assert got.mean == pytest.approx(want, abs=1e-5), (role, layer)


def test_tool_choice_claims_hold_on_the_rule_and_fail_on_the_decoy(tools, prompts):
    raw, ps = prompts
    matching, decoy = [p["matching"] for p in raw], [p["decoy"] for p in raw]
    pi.assert_choice_depends_on(tools, ps, matching, at_least=1.0)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_choice_depends_on(tools, ps, decoy, at_least=1.0)
    pi.assert_choice_independent_of(tools, ps, decoy, metric="choice_accuracy", within=0.2)
    with pytest.raises(pi.ClaimFailed):
        pi.assert_choice_independent_of(tools, ps, matching, metric="choice_accuracy", within=0.2)
    pi.assert_read_not_relied_on(tools, ps, decoy, kind="tool_description", metric="choice_accuracy",
                                 attention_at_least=0.2, within=0.2, layers=[1])
    with pytest.raises(pi.ClaimFailed, match="removal damage: NOT within the margin"):
        pi.assert_read_not_relied_on(tools, ps, matching, kind="tool_description", metric="choice_accuracy",
                                     attention_at_least=0.2, within=0.2, layers=[1])
