"""Helpers shared by the tests: paths and tiny seeded models of every built-in architecture."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
INDUCTION = FIXTURES / "induction-llama"
POSITIONAL = FIXTURES / "positional-gpt2"
MOE = FIXTURES / "moe-mixtral"
RETRIEVAL = FIXTURES / "retrieval-llama"
FACTS = FIXTURES / "facts-gpt2"


def fixture_module(name: str):
    """A fixture model's training or measuring script (data generators, reference code), imported."""
    import importlib
    import sys

    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    return importlib.import_module(name)


def shipped(path: Path):
    """Load a shipped fixture model, failing (not skipping) when it is missing."""
    import pytest

    if not (path / "config.json").exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run its training script in fixtures/")
    import pytest_interp as pi

    return pi.load(path)

ARCHS = ["gpt2", "llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "olmoe", "gpt_neox", "bert"]
ENCDEC_ARCHS = ["t5", "bart"]  # encoder-decoder models: their sites name a stack


def tiny_model(arch: str, seed: int = 0, attn: str = "eager"):
    """A 2-layer, 4-head, d=32 model of ``arch`` with seeded random weights."""
    import torch
    import transformers as tf

    common = dict(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    if arch == "gpt2":
        cls, cfg = tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=48, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                     bos_token_id=0, eos_token_id=0)
    elif arch in ("llama", "mistral", "qwen2"):
        name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[arch]
        cls = getattr(tf, f"{name}ForCausalLM")
        cfg = getattr(tf, f"{name}Config")(num_key_value_heads=2, bos_token_id=0, eos_token_id=0, **common)
    elif arch == "mixtral":
        cls, cfg = tf.MixtralForCausalLM, tf.MixtralConfig(num_key_value_heads=2, num_local_experts=4,
                                                           num_experts_per_tok=2, bos_token_id=0, **common)
    elif arch == "qwen2_moe":
        cls, cfg = tf.Qwen2MoeForCausalLM, tf.Qwen2MoeConfig(num_key_value_heads=2, num_experts=4,
                                                              num_experts_per_tok=2, moe_intermediate_size=32,
                                                              shared_expert_intermediate_size=32, bos_token_id=0,
                                                              **common)
    elif arch == "olmoe":
        cls, cfg = tf.OlmoeForCausalLM, tf.OlmoeConfig(num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
                                                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **common)
    elif arch == "gpt_neox":
        cls, cfg = tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(bos_token_id=0, eos_token_id=0, **common)
    elif arch == "bert":
        cls, cfg = tf.BertForMaskedLM, tf.BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=64, pad_token_id=0)
    elif arch == "t5":
        cls, cfg = tf.T5ForConditionalGeneration, tf.T5Config(vocab_size=48, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                                                              num_layers=2, num_decoder_layers=3, dropout_rate=0.0,
                                                              decoder_start_token_id=0, pad_token_id=0,
                                                              eos_token_id=1)
    elif arch == "bart":
        cls, cfg = tf.BartForConditionalGeneration, tf.BartConfig(
            vocab_size=48, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
            init_std=0.3)  # at the default 0.02 its outputs barely depend on the inputs
    else:  # pragma: no cover
        raise ValueError(arch)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    return model


def word_tokenizer(words: list[str]):
    """A fast word-level tokenizer over ``words`` (split on whitespace, no special tokens added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=words[0], eos_token=words[1])
