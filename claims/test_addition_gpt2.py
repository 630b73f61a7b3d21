"""Pre-registered claims about fixtures/addition-gpt2 and its SAEs (ground truth: fixtures/addition-gpt2/CARD.md).

A 2-layer GPT-2 adds two two-digit numbers and writes the sum ones digit first: `<bos> red 3 7 + 4 5 =` -> `2 8 0`.
The last prompt token here is s0 (position 8); it predicts s1, the digit that needs the carry. The SAE on
`blocks.0.hook_resid_post` (pi.resid(1)) is faithful; its feature 137 fires on NO-carry problems at position 8 and
the model uses it: zeroing it (the SAE's error term kept) costs the right digit, adding it to carry problems makes
them answer s1 - 1. Feature 246 fires on most carry problems (AUC 0.93) but its decoder direction is orthogonal
to the carry: selective, yet not used. The SAE of block 1, read at block 0, is not faithful there.

Probes: the carry is linearly decodable after block 0 at position 7 (`=`) and at position 8, beyond what a probe
memorises from the operands' ones digits (the control task). Removing the carry direction (the class-mean
difference) costs the right digit at position 8 and nothing at position 7: decodable there, not used there.
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


def carry_direction(subject, sums, position):
    tokens, carry, types = sums["probe"]
    return pi.probe(subject, pi.resid(1), tokens, carry, position=position, types=types).mean_difference


def test_the_carry_is_decodable_at_position_7(subject, sums):
    tokens, carry, types = sums["probe"]
    pi.assert_probe_selective(subject, pi.resid(1), inputs=tokens, labels=carry, position=7, types=types,
                              selectivity_at_least=0.1)


def test_the_carry_direction_is_used_at_position_8(subject, sums):
    tokens, s1 = sums["carry"]
    pi.assert_direction_used(subject, pi.resid(1).at(8), carry_direction(subject, sums, 8), inputs=tokens,
                             metric=pi.metrics.logprob(s1, position=pi.last), at_least=0.3)


def test_the_carry_direction_is_not_used_at_position_7(subject, sums):
    tokens, s1 = sums["carry"]
    pi.assert_direction_unused(subject, pi.resid(1).at(7), carry_direction(subject, sums, 7), inputs=tokens,
                               metric=pi.metrics.logprob(s1, position=pi.last), within=0.01)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="decodable is not used: removing the carry direction at position 7 changes log p(s1) by 0")
def test_false_the_carry_is_used_where_it_is_decodable(subject, sums):
    tokens, s1 = sums["carry"]
    pi.assert_direction_used(subject, pi.resid(1).at(7), carry_direction(subject, sums, 7), inputs=tokens,
                             metric=pi.metrics.logprob(s1, position=pi.last), at_least=0.1)
