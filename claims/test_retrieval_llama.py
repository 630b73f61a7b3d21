"""Pre-registered claims about fixtures/retrieval-llama (ground truth: fixtures/retrieval-llama/CARD.md).

Prompts: `<bos> [DOC] k v [DOC] k v [DOC] k v [Q] k [A]` -> the value of the queried key, or with a tool call
and its output in place of the third document. Keys and values are random per prompt, so the answer can only come
from the context. The metric is the answer's log-probability; removal is by deleting the segment's tokens unless
a claim says it masks them out of attention instead.
"""

import pytest

import pytest_interp as pi
from pytest_interp import strategies as pst

pytestmark = pytest.mark.interp_model("../fixtures/retrieval-llama")


def test_the_queried_document_is_necessary(subject, rag):
    prompts, _ = rag
    pi.assert_document_necessary(subject, prompts, "gold", at_least=3.0)


def test_the_queried_document_is_necessary_when_masked_out_of_attention(subject, rag):
    prompts, _ = rag
    pi.assert_document_necessary(subject, prompts, "gold", at_least=3.0, method="mask")


def test_a_document_not_asked_about_is_unused(subject, rag):
    prompts, distractor = rag
    pi.assert_document_unused(subject, prompts, distractor, within=0.01)


def test_the_tool_output_is_necessary(subject, tool_prompts):
    pi.assert_tool_output_necessary(subject, tool_prompts, at_least=3.0)


def test_documents_are_unused_when_the_tool_answers(subject, tool_prompts):
    pi.assert_document_unused(subject, tool_prompts, 0, within=0.01)


def test_layer_0_attends_to_documents_the_answer_does_not_use(subject, rag):
    # provenance is not reliance: in layer 0 the answer position attends to every document about equally
    prompts, distractor = rag
    asked_last = [p for p, d in zip(prompts, distractor) if d == 0]  # queried document 2; document 0 is not
    table = pi.provenance(subject, asked_last, layers=[0])
    assert table["document 0"].attention >= 0.5 * table["document 2"].attention
    pi.assert_document_unused(subject, asked_last, 0, within=0.01)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="removing a document the question does not ask about leaves accuracy at 1.0")
def test_false_every_document_is_necessary(subject, rag):
    prompts, distractor = rag
    pi.assert_document_necessary(subject, prompts, distractor, at_least=0.5, metric="accuracy")


# faithfulness of attributions: do they rank the prompt's tokens as removing each token does? -----------------

def test_retrieval_head_attention_is_not_a_faithful_explanation(subject, rag_batch):
    # layer 1 puts ~0.95 of its attention on the queried value, but the answer also depends on the question's
    # key, the markers and the queried key, which that attention ignores
    tokens, answers = rag_batch
    attention = pi.explain.attention(subject, tokens, layer=1)
    pi.assert_not_faithful(subject, attention, inputs=tokens, answer=answers, below=0.3)


def test_gradient_x_input_is_not_a_faithful_explanation(subject, rag_batch):
    tokens, answers = rag_batch
    pi.assert_not_faithful(subject, pi.explain.grad_x_input(subject, tokens, answers), inputs=tokens,
                           answer=answers, below=0.3)


def test_integrated_gradients_is_a_faithful_explanation(subject, rag_batch):
    tokens, answers = rag_batch
    ig = pi.explain.integrated_gradients(subject, tokens, answers, steps=512, baseline=1, fixed=[0])
    pi.assert_faithful(subject, ig, inputs=tokens, answer=answers, at_least=0.35)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="layer-1 attention ranks tokens with rho ~0.1 against leave-one-token-out effects")
def test_false_retrieval_head_attention_is_faithful(subject, rag_batch):
    tokens, answers = rag_batch
    pi.assert_faithful(subject, pi.explain.attention(subject, tokens, layer=1), inputs=tokens, answer=answers,
                       at_least=0.35)


# stability across input families -----------------------------------------------------------------------------
# One family is one order of the three documents (the same for every prompt) and at most one added distractor
# document: a key the prompt does not hold, with a value no document has, inserted at a drawn place. The model
# was trained on exactly three documents.

def distractor(prompt, j):
    """A document that cannot answer `prompt`: an unused key and an unused value (j picks which)."""
    words = " ".join(s.text for s in prompt.segments).split()
    keys = [f"k{i}" for i in range(24) if f"k{i}" not in words]
    values = [f"v{i}" for i in range(16) if f"v{i}" not in words]
    return f"[DOC] {keys[(3 * j + 1) % len(keys)]} {values[(5 * j + 2) % len(values)]}"


@pytest.fixture(scope="module")
def orders(rag):
    return pst.document_families(rag[0], distractors=distractor, max_added=1)


def test_the_queried_document_is_necessary_in_every_order_and_beside_a_distractor(subject, orders):
    pi.assert_stable(lambda f: pi.assert_document_necessary(subject, f.inputs, "gold", at_least=3.0), orders,
                     spread=3.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the first document matters only when the question asks about it (a third of prompts): "
                          "position in the context is not what the model reads")
def test_false_the_first_document_is_necessary_in_every_order(subject, orders):
    pi.assert_stable(lambda f: pi.assert_document_necessary(subject, f.inputs, 0, at_least=3.0), orders)
