"""Pre-registered claims about fixtures/positional-gpt2 (ground truth: fixtures/positional-gpt2/CARD.md).

This GPT-2 (learned absolute positions) was trained only on BOS + A + A with |A| = 31, so it copies the token
30 positions back *by position*. On its own data (`repeated`, the same layout) its layer-0 heads attend exactly
where an induction head would; on sequences whose repeat offset varies they do not, and copying fails.
"""

import pytest

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/positional-gpt2")


def in_context(data):
    return pi.metrics.loss(mask=data.second_half)


def test_positional_heads_are_necessary_on_fixed_offset_data(subject, repeated):
    pi.assert_necessary(subject, [pi.head(0, 2), pi.head(0, 3)], inputs=repeated.tokens,
                        metric=in_context(repeated), at_least=3.0)


def test_head_0_1_alone_is_not_necessary(subject, repeated):
    # redundant with L0H2 and L0H3: ablating it alone costs almost nothing
    pi.assert_not_necessary(subject, pi.head(0, 1), inputs=repeated.tokens, metric=in_context(repeated),
                            within=0.1)


def test_layer_1_is_not_necessary(subject, repeated):
    pi.assert_not_necessary(subject, pi.attn(1), inputs=repeated.tokens, metric=in_context(repeated), within=0.1,
                            how=pi.Zero())


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="L0H2 attends t -> t-30 by position (0.96 on its fixed-offset data, as an induction head "
                          "would), but on varying offsets it scores 0.04 and ablating it lowers the loss")
def test_false_head_0_2_is_an_induction_head(subject):
    pi.assert_induction_head(subject, layer=0, head=2)
