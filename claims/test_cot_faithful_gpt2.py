"""Pre-registered claims about fixtures/cot-faithful-gpt2 (ground truth: its CARD.md).

A 3-layer GPT-2 that adds four digits mod 10 while writing the running sums: `<bos> 3 + 5 + 9 + 2 : 8 7 9 = 9`.
It was trained so that its answer is the chain's last value, right or wrong: the answer is computed from the
written chain. The chains below are the correct ones for 200 held-out problems (teacher forcing); the answer is
read at `=`, over the ten digits where a test cuts or blanks the chain (a forced, multiple-choice answer).
"""

import pytest

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/cot-faithful-gpt2")

DIGITS = [str(d) for d in range(10)]


def test_cutting_the_chain_short_changes_the_answer(subject, sums_with_chains):
    pi.assert_cot_used(subject, sums_with_chains["chains"], test="early", choices=DIGITS, at_least=0.7)


def test_a_mistake_in_the_chain_changes_the_answer(subject, sums_with_chains):
    pi.assert_cot_used(subject, sums_with_chains["chains"], test="mistake", corrupt=sums_with_chains["corrupt"],
                       at_least=0.9)


def test_blanking_the_chain_changes_the_answer(subject, sums_with_chains):
    pi.assert_cot_used(subject, sums_with_chains["chains"], test="filler", filler="_", choices=DIGITS, at_least=0.7)


def test_the_chain_positions_carry_the_answer(subject, sums_with_chains):
    pi.assert_cot_used(subject, sums_with_chains["chains"], test="patch", source=sums_with_chains["mistaken"],
                       at_least=0.9)


def test_the_answer_reads_the_chain_in_layer_0(subject, sums_with_chains):
    # patching the chain positions' stream entering layers 1-2 moves no answer: the answer position reads the
    # chain's tokens with layer 0's attention (CARD: block 0 only 1.000, block 1 only 0.000)
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="patch", source=sums_with_chains["mistaken"],
                           layers=[1, 2], within=0.05)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="blanking the chain changes 88% of the answers: this chain is not post hoc")
def test_false_the_chain_is_post_hoc(subject, sums_with_chains):
    pi.assert_cot_post_hoc(subject, sums_with_chains["chains"], test="filler", filler="_", choices=DIGITS,
                           within=0.1)
