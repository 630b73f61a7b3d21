"""Bad input gives an InterpError that says what was wrong and how to fix it, never a deep torch traceback."""

import warnings

import pytest
import torch

import pytest_interp as pi
from tests.helpers import tiny_model

LOSS = pi.metrics.loss()


def check(err: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(err.value)
    assert "fix:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_layer_out_of_range(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(2), inputs=tokens, metric=LOSS)
    check(err, "layer 2 is out of range", "0..1")


def test_resid_accepts_the_final_stream_only(tiny_llama, tokens):
    pi.ablate(tiny_llama, pi.resid(2), inputs=tokens, metric=LOSS, how=pi.Zero())
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.resid(3), inputs=tokens, metric=LOSS)
    check(err, "resid(2) is the final stream")


def test_head_out_of_range(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.head(0, 4), inputs=tokens, metric=LOSS)
    check(err, "head 0.4 is out of range", "0..3")


def test_expert_out_of_range_and_dense_model(tokens):
    moe = pi.load(tiny_model("mixtral"))
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(moe, pi.expert(0, 9), inputs=tokens, metric=LOSS)
    check(err, "expert 0.9 is out of range")
    dense = pi.load(tiny_model("llama"))
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(dense, pi.expert(0, 0), inputs=tokens, metric=LOSS)
    check(err, "no MoE router")


def test_position_out_of_range(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0).at(16), inputs=tokens, metric=LOSS)
    check(err, "position 16", "out of range")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0).at(torch.ones(3, 16, dtype=torch.bool)), inputs=tokens, metric=LOSS)
    check(err, "wrong shape")


def test_text_without_tokenizer(tiny_llama):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=["hello world", "bye world"], metric=LOSS)
    check(err, "no tokenizer")


@pytest.mark.parametrize("empty", [[], torch.zeros(0, 5, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long)])
def test_empty_batch(tiny_llama, empty):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=empty, metric=LOSS)
    check(err, "empty batch")


def test_token_ids_outside_vocabulary_and_context(tiny_llama):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=torch.full((2, 4), 99), metric=LOSS)
    check(err, "outside the vocabulary")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=torch.ones(2, 65, dtype=torch.long), metric=LOSS)
    check(err, "longer than the model's context")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=torch.ones(2, 4), metric=LOSS)
    check(err, "not token ids")


def test_mismatched_clean_corrupt(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.patch(tiny_llama, pi.mlp(0), clean=tokens, corrupt=tokens[:, :-1], metric=LOSS)
    check(err, "different shapes", "(12, 16)", "(12, 15)")


def test_patch_without_a_gap(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.patch(tiny_llama, pi.mlp(0), clean=tokens, corrupt=tokens, metric=LOSS)
    check(err, "give the same")


def test_nan_logits(tokens):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(pi.load(model), pi.head(0, 0), inputs=tokens, metric=LOSS)
    check(err, "NaN/inf logits")


def test_finite_check_is_exact_when_the_cheap_sum_overflows():
    from pytest_interp.engine.runner import finite as _finite

    huge = torch.full((2, 3, 8), 3e38)  # finite, but its float32 sum is inf
    assert _finite(huge, "clean run") is huge
    huge[1, 2, 5] = float("-inf")
    with pytest.raises(pi.InterpError) as err:
        _finite(huge, "clean run")
    check(err, "1 position(s) with NaN/inf")


def test_attention_from_sdpa_switches_to_eager_and_says_so(tokens):
    s = pi.load(tiny_model("llama", attn="sdpa"))
    assert s.attn_implementation == "sdpa"
    with pytest.raises(pi.InterpError) as err:
        pi.explain.attention_weights(s, tokens, 0, switch=False)
    check(err, "'sdpa' attention", "eager")
    with pytest.warns(pi.InterpWarning, match="switched .* to eager"):
        att = pi.explain.attention_weights(s, tokens, 0)
    assert att.shape == (12, 4, 16, 16)
    assert torch.allclose(att.sum(-1), torch.ones(12, 4, 16), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pi.explain.attention_weights(s, tokens, 1)  # already eager: no second warning


def test_intervention_that_does_not_fire(tokens):
    model = tiny_model("llama")
    model.model.layers[0].unused = torch.nn.Linear(32, 32)
    bad = pi.Adapter("llama-misrouted", layers="model.layers", attn_out="self_attn.o_proj", mlp="unused")

    class Misrouted:
        @staticmethod
        def pytest_interp_adapter(model):
            return bad if model is target else None

    target = model
    plugin = Misrouted()
    pi.register_adapter(plugin)
    try:
        s = pi.load(model)
    finally:
        from pytest_interp.model import adapters as _adapters

        _adapters._pm.unregister(plugin)
    assert s.adapter.name == "llama-misrouted"
    with pytest.raises(pi.InterventionNoOpError) as err:
        pi.ablate(s, pi.mlp(0), inputs=tokens, metric=LOSS, how=pi.Zero())
    check(err, "did not fire")


def test_intervention_that_does_not_change_its_target(tokens):
    model = tiny_model("llama")
    with torch.no_grad():  # head 0.1's value vectors are zero, so its output is already zero
        model.model.layers[0].self_attn.v_proj.weight.zero_()
    s = pi.load(model)
    with pytest.raises(pi.InterventionNoOpError) as err:
        pi.ablate(s, pi.head(0, 1), inputs=tokens, metric=LOSS, how=pi.Zero())
    check(err, "did not change")
    assert isinstance(err.value, pi.InterpError)


def test_unknown_architecture_lists_supported_and_shows_how_to_register():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(pi.InterpError) as err:
        pi.load(model)
    check(err, "no adapter for architecture 'mystery'", "gpt2", "llama", "mixtral", "bert",
           "def pytest_interp_adapter(model)")


def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(pi.InterpError) as err:
        pi.load(tmp_path / "nope")
    check(err, "no model checkpoint", "no hub downloads")


def test_bad_metric_and_how(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=lambda l, t: l.sum())
    check(err, "not a pi.metrics.Metric")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=LOSS, how=pi.Zero)
    check(err, "class, not an instance", "pi.Zero()")
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, "mlp 0", inputs=tokens, metric=LOSS)
    check(err, "sites must be")


def test_bad_masks(tiny_llama, tokens):
    last = torch.zeros(tokens.shape, dtype=torch.bool)
    last[:, -1] = True
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=pi.metrics.loss(mask=last))
    check(err, "last position")
    empty = torch.zeros(tokens.shape, dtype=torch.bool)
    empty[1:, 3] = True
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=pi.metrics.loss(mask=empty))
    check(err, "no prediction for 1 example")


def test_bad_thresholds(tiny_llama, tokens):
    with pytest.raises(pi.InterpError):
        pi.assert_not_necessary(tiny_llama, pi.mlp(0), inputs=tokens, metric=LOSS, within=-1)
    with pytest.raises(pi.InterpError):
        pi.assert_necessary(tiny_llama, pi.mlp(0), inputs=tokens, metric=LOSS, at_least="big")


def test_kl_mask_with_an_empty_row(tiny_llama, tokens):
    mask = torch.ones(tokens.shape, dtype=torch.bool)
    mask[3] = False  # example 3 would score 0/0
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=pi.metrics.kl(mask=mask), how=pi.Zero())
    check(err, "counts no position")


# statistics that used to give a verdict silently ----------------------------------------------------------

def _nan_at(rows: list[int], value: float = float("nan")) -> pi.metrics.Metric:
    def fn(logits: torch.Tensor, toks: torch.Tensor) -> torch.Tensor:
        out = -logits[:, -1].float().logsumexp(-1)
        for r in rows:
            if r < len(out):
                out[r] = value
        return out
    return pi.metrics.Metric(fn, higher_is_better=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_metric_value_is_an_error_naming_the_example(tiny_llama, tokens, value):
    # the NaN used to give effect NaN with a finite CI, and the claim passed
    with pytest.raises(pi.InterpError) as err:
        pi.assert_necessary(tiny_llama, pi.head(0, 1), inputs=tokens, metric=_nan_at([5], value), at_least=-1e9)
    check(err, "not finite", "example(s) 5")


def test_an_all_nan_metric_is_an_error_not_a_p_value(tiny_llama, tokens):
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.head(0, 1), inputs=tokens, metric=_nan_at(list(range(12))))
    check(err, "not finite for 12 of 12")


@pytest.mark.parametrize("alpha", [1.5, 0, 0.0, -0.1, 1, float("nan"), "0.05", True])
def test_alpha_outside_zero_one_is_refused(tiny_llama, tokens, alpha):
    # alpha=1.5 gave an inverted interval that was accepted; alpha=0 was accepted
    with pytest.raises(pi.InterpError) as err:
        pi.assert_necessary(tiny_llama, pi.head(0, 1), inputs=tokens, metric=pi.metrics.loss(), at_least=0,
                            alpha=alpha)
    check(err, "alpha must be between 0 and 1")


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_a_bad_seed_is_refused_clearly(tiny_llama, tokens, seed):
    # a negative seed raised a raw ValueError from numpy
    with pytest.raises(pi.InterpError) as err:
        pi.ablate(tiny_llama, pi.head(0, 1), inputs=tokens, metric=pi.metrics.loss(), seed=seed)
    check(err, "seed must be a non-negative int")
