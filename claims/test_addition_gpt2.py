"""Pre-registered claims about fixtures/addition-gpt2 and its SAEs (ground truth: fixtures/addition-gpt2/CARD.md).

A 2-layer GPT-2 adds two two-digit numbers and writes the sum ones digit first: `<bos> red 3 7 + 4 5 =` -> `2 8 0`.
The last prompt token here is s0 (position 8); it predicts s1, the digit that needs the carry. The SAE on
`blocks.0.hook_resid_post` (pi.resid(1)) is faithful; its feature 137 fires on NO-carry problems at position 8 and
the model uses it: zeroing it (the SAE's error term kept) costs the right digit, adding it to carry problems makes
them answer s1 - 1. Feature 246 fires on most carry problems (AUC 0.93) but its decoder direction is orthogonal
to the carry: selective, yet not used. The SAE of block 1, read at block 0, is not faithful there.
"""

import pytest
import torch

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/addition-gpt2")

SAES = "../fixtures/addition-gpt2/saes/"


@pytest.fixture(scope="module")
def sae(request):
    return pi.load_sae(request.path.parent / SAES / "blocks.0.hook_resid_post")


def predicts(target):
    """1 where the top prediction at the last position is ``target`` (one token id per example)."""
    return pi.metrics.Metric(lambda logits, tokens, rows: (logits[:, -1].argmax(-1) == target[rows]).float(),
                             reads=pi.last, name="predicts s1 - 1")


def minus_one(s1):
    return torch.where(s1 == 1, torch.tensor(10), s1 - 1)  # token ids: digit d is d + 1


def test_the_block_0_sae_is_faithful(subject, sae, sums):
    pi.assert_sae_faithful(subject, sae, inputs=sums["full"], metric=sums["answer_loss"], ce_recovered_at_least=0.95)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the block-1 SAE read at block 0 recovers 0.30 [0.23, 0.36] of the answer loss here "
                          "(CARD, on 2,000 problems: 0.173); its explained variance there is negative")
def test_false_the_block_1_sae_is_faithful_at_block_0(subject, request, sums):
    other = pi.load_sae(request.path.parent / SAES / "blocks.1.hook_resid_post", site=pi.resid(1))
    pi.assert_sae_faithful(subject, other, inputs=sums["full"], metric=sums["answer_loss"], ce_recovered_at_least=0.5)


def test_the_no_carry_feature_is_selective(subject, sae, sums):
    pi.assert_feature_selective(subject, sae.feature(137), positive=sums["none"][0], negative=sums["carry"][0],
                                auc_at_least=0.95)


def test_the_no_carry_feature_is_necessary_without_a_carry(subject, sae, sums):
    tokens, s1 = sums["none"]
    pi.assert_feature_necessary(subject, sae.feature(137).at(pi.last), inputs=tokens,
                                metric=pi.metrics.logprob(s1, position=pi.last), at_least=0.1)


def test_adding_the_no_carry_feature_drops_the_carry(subject, sae, sums):
    tokens, s1 = sums["carry"]
    pi.assert_feature_sufficient(subject, sae.feature(137).at(pi.last), inputs=tokens, metric=predicts(minus_one(s1)),
                                 steer=1.0, at_least=0.8)


def test_the_carry_selective_decoy_is_selective(subject, sae, sums):
    pi.assert_feature_selective(subject, sae.feature(246), positive=sums["carry"][0], negative=sums["none"][0],
                                auc_at_least=0.85)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="feature 246 fires on carry problems but is not used: zeroing it changes log p(s1) by ~0")
def test_false_the_carry_selective_feature_is_necessary(subject, sae, sums):
    tokens, s1 = sums["carry"]
    pi.assert_feature_necessary(subject, sae.feature(246).at(pi.last), inputs=tokens,
                                metric=pi.metrics.logprob(s1, position=pi.last), at_least=0.01)


def test_the_carry_selective_decoy_is_not_necessary(subject, sae, sums):
    tokens, s1 = sums["carry"]
    pi.assert_not_necessary(subject, sae.feature(246).at(pi.last), inputs=tokens,
                            metric=pi.metrics.logprob(s1, position=pi.last), within=0.01, how=pi.Zero())
