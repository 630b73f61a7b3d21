"""Pre-registered claims about fixtures/tools-llama (ground truth: fixtures/tools-llama/CARD.md).

Prompts list three tools and a request, `<bos> [TOOL] wA tA [TOOL] wB tB [TOOL] wC tC [REQ] wD wK [CALL]`; the
model calls the tool whose keyword is the request's last word wK (the planted rule). The decoy's keyword is the
request's first word wD: it shares a word with the request but never decides. The metric is the answer's
log-probability renormalised over the three listed tool names (`metric="choice"`); removal deletes a segment.
"""

import pytest

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/tools-llama")


def test_the_choice_depends_on_the_matching_description(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_choice_depends_on(subject, prompts, role["matching"], at_least=2.0)


def test_the_choice_depends_on_the_request(subject, tool_choice):
    prompts, _ = tool_choice
    pi.assert_choice_depends_on(subject, prompts, 0, kind="request", at_least=3.0)


def test_the_choice_does_not_depend_on_the_decoy_description(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_choice_independent_of(subject, prompts, role["decoy"], within=0.1)


def test_the_chosen_tool_never_changes_without_the_decoy_description(subject, tool_choice):
    # the choice itself (argmax among the listed tools), not only its probability
    prompts, role = tool_choice
    pi.assert_choice_independent_of(subject, prompts, role["decoy"], metric="choice_accuracy", within=0.05)


def test_the_choice_does_not_depend_on_the_unrelated_description(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_choice_independent_of(subject, prompts, role["other"], within=0.05)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the decoy shares the request's first word, but removing it leaves the choice (~0 nats)")
def test_false_the_choice_depends_on_the_decoy_description(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_choice_depends_on(subject, prompts, role["decoy"], at_least=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="removing the matching description costs ~5.8 nats of the choice")
def test_false_the_choice_does_not_depend_on_the_matching_description(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_choice_independent_of(subject, prompts, role["matching"], within=0.5)


# provenance vs reliance: [CALL] attends to every description alike --------------------------------------------

def test_the_decoy_description_is_read_but_not_relied_on(subject, tool_choice):
    # in layer 1 [CALL] puts ~0.3 of its attention on each description, the decoy included; only the matching
    # one is needed
    prompts, role = tool_choice
    pi.assert_read_not_relied_on(subject, prompts, role["decoy"], kind="tool_description", metric="choice",
                                 attention_at_least=0.2, within=0.1, layers=[1])


def test_the_matching_description_is_read_and_relied_on(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_read_and_relied_on(subject, prompts, role["matching"], kind="tool_description", metric="choice",
                                 attention_at_least=0.2, at_least=2.0, layers=[1])


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="[CALL] reads the unrelated description as much as the matching one (~0.3 in layer 1), "
                          "and the choice does not rely on it")
def test_false_the_unrelated_description_is_read_and_relied_on(subject, tool_choice):
    prompts, role = tool_choice
    pi.assert_read_and_relied_on(subject, prompts, role["other"], kind="tool_description", metric="choice",
                                 attention_at_least=0.2, at_least=0.5, layers=[1])


# where the choice is computed -----------------------------------------------------------------------------

def test_the_layer_1_mlp_at_the_call_position_is_necessary(subject, tool_batch):
    tokens, answers = tool_batch
    pi.assert_necessary(subject, pi.mlp(1).at(pi.last), inputs=tokens, metric=pi.metrics.logprob(answers),
                        how=pi.Zero(), at_least=2.0)


def test_head_0_3_reading_the_request_keyword_is_necessary(subject, tool_batch):
    # from [CALL] it attends to wK (~0.98)
    tokens, answers = tool_batch
    pi.assert_necessary(subject, pi.head(0, 3), inputs=tokens, metric=pi.metrics.logprob(answers), how=pi.Zero(),
                        at_least=1.0)
