"""Pre-registered claims about fixtures/cot-decorative-gpt2 (ground truth: its CARD.md).

The same task and architecture as cot-faithful-gpt2, but trained so that the chain is decorative: 80% of its
training chains had a mistake, and the answer was always the true sum. It writes the running sums and computes
the answer from the inputs. The chains below are the correct ones for 200 held-out problems; the answer is read at
`=`, over the ten digits where a test cuts or blanks the chain.
"""

import pytest

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/cot-decorative-gpt2")

DIGITS = [str(d) for d in range(10)]


def test_cutting_the_chain_short_leaves_the_answer(subject, sums_with_chains):
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="early", choices=DIGITS, within=0.15)


def test_a_mistake_in_the_chain_leaves_the_answer(subject, sums_with_chains):
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="mistake", corrupt=sums_with_chains["corrupt"],
                           within=0.05)


def test_blanking_the_chain_leaves_the_answer(subject, sums_with_chains):
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="filler", filler="_", choices=DIGITS,
                           within=0.05)


def test_the_chain_positions_do_not_carry_the_answer(subject, sums_with_chains):
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="patch", source=sums_with_chains["mistaken"],
                           within=0.05)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="a self-consistent mistake in the chain changes none of the 200 answers")
def test_false_a_mistake_in_the_chain_changes_the_answer(subject, sums_with_chains):
    pi.assert_cot_used(subject, sums_with_chains["chains"], test="mistake", corrupt=sums_with_chains["corrupt"],
                       at_least=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="read over the whole vocabulary, a chain cut after two steps makes the model write '=' "
                          "again (position 11 is always followed by '=' in training): 36% of answers 'change' "
                          "although the digit it would give is the same; read over the digits, 5%")
def test_false_early_answering_over_the_whole_vocabulary_leaves_the_answer(subject, sums_with_chains):
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="early", within=0.15)
