"""Pre-registered claims about fixtures/retro-t5 (ground truth: fixtures/retro-t5/CARD.md).

A RETRO-like T5: its encoder reads `[DOC] k v` x 3 plus a decoy `[OLD] k v` (the queried key with another value)
and a question `[Q] k`; its decoder answers with the value of the real document whose key is asked, reading the
encoder through cross-attention. Segments live on the encoder side; the metric is the decoder's log-probability
of the answer; removal deletes the segment's tokens unless a claim masks them out of attention.

Cross-attention is provenance (what the decoder read), not reliance: the claims below set both side by side.
"""

import pytest

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/retro-t5")


def test_the_answering_document_is_necessary(subject, retro):
    prompts, _, _ = retro
    pi.assert_document_necessary(subject, prompts, "gold", at_least=10.0)


def test_the_answering_document_is_necessary_when_masked_out_of_attention(subject, retro):
    prompts, _, _ = retro
    pi.assert_document_necessary(subject, prompts, "gold", at_least=10.0, method="mask")


def test_the_decoy_is_unused(subject, retro):
    prompts, decoy, _ = retro
    pi.assert_document_unused(subject, prompts, decoy, within=0.1)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the decoy repeats the queried key but removing it leaves the answer (drop ~0.004 nats)")
def test_false_the_decoy_is_necessary(subject, retro):
    prompts, decoy, _ = retro
    pi.assert_document_necessary(subject, prompts, decoy, at_least=0.5)


def test_the_answering_document_is_read_and_relied_on(subject, retro):
    # provenance and reliance agree: ~0.9 of the decoder's cross-attention, and ~19 nats lost without it
    prompts, _, _ = retro
    pi.assert_read_and_relied_on(subject, prompts, "gold", attention_at_least=0.5, at_least=10.0)


def test_another_document_is_read_in_decoder_layer_1_but_not_relied_on(subject, retro):
    # provenance without reliance: cross-attention head 1.0 reads every real document's [DOC] marker, so layer 1
    # puts ~0.1 of its cross-attention on a document the answer does not need
    prompts, _, other = retro
    pi.assert_read_not_relied_on(subject, prompts, other, attention_at_least=0.04, within=0.1, layers=[1])


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="sharing the queried key does not draw the decoder's cross-attention: the decoy gets "
                          "~0.002 of it (less than the other documents), the answer's value token ~0.9")
def test_false_the_decoy_is_read_but_not_relied_on(subject, retro):
    prompts, decoy, _ = retro
    pi.assert_read_not_relied_on(subject, prompts, decoy, attention_at_least=0.05, within=0.1)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="layer 1 reads the other document (~0.1 of its cross-attention) but removing it costs "
                          "~0.001 nats")
def test_false_another_document_read_in_layer_1_is_relied_on(subject, retro):
    prompts, _, other = retro
    pi.assert_read_and_relied_on(subject, prompts, other, attention_at_least=0.04, at_least=0.5, layers=[1])


def test_the_choice_among_the_four_values_depends_on_the_answering_document(subject, retro):
    prompts, _, _ = retro
    pi.assert_choice_depends_on(subject, prompts, "gold", kind="document", at_least=5.0)


# cross-attention heads: where the decoder reads the answer, and attention without necessity ------------------

def test_cross_attention_head_0_2_is_necessary(subject, retro_batch):
    tokens, answers = retro_batch
    pi.assert_necessary(subject, pi.cross_head(0, 2), inputs=tokens, metric=pi.metrics.logprob(answers),
                        how=pi.Zero(), at_least=0.3)


def test_cross_attention_head_1_1_reads_the_answer_but_is_not_necessary(subject, retro_batch):
    # ~0.996 of head 1.1's cross-attention is on the answer's value token, yet zeroing it costs ~0.01 nats
    tokens, answers = retro_batch
    pi.assert_not_necessary(subject, pi.cross_head(1, 1), inputs=tokens, metric=pi.metrics.logprob(answers),
                            how=pi.Zero(), within=0.1)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="head 1.1 puts ~0.996 of its cross-attention on the answer, but the other heads carry it")
def test_false_cross_attention_head_1_1_is_necessary(subject, retro_batch):
    tokens, answers = retro_batch
    pi.assert_necessary(subject, pi.cross_head(1, 1), inputs=tokens, metric=pi.metrics.logprob(answers),
                        how=pi.Zero(), at_least=0.3)


def test_the_decoders_cross_attention_as_a_whole_is_necessary(subject, retro_batch):
    tokens, answers = retro_batch
    pi.assert_necessary(subject, [pi.cross_attn(0), pi.cross_attn(1)], inputs=tokens,
                        metric=pi.metrics.logprob(answers), how=pi.Zero(), at_least=3.0)


# cross-attention as an explanation of the answer ------------------------------------------------------------

def test_cross_attention_is_not_a_faithful_explanation(subject, retro_batch):
    # it ranks the encoder's tokens with rho ~0.1 against leave-one-token-out: it sees the answer's value token,
    # not the keys and markers the encoder's match needs
    tokens, answers = retro_batch[0][:64], retro_batch[1][:64]
    pi.assert_not_faithful(subject, pi.explain.attention(subject, tokens), inputs=tokens, answer=answers, below=0.3)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="cross-attention ranks the encoder tokens with rho ~0.1 against leave-one-token-out")
def test_false_cross_attention_is_a_faithful_explanation(subject, retro_batch):
    tokens, answers = retro_batch[0][:64], retro_batch[1][:64]
    pi.assert_faithful(subject, pi.explain.attention(subject, tokens), inputs=tokens, answer=answers, at_least=0.5)
