"""Benchmark model and inputs shared by every side of the benchmark.

The model is a GPT-2-small-architecture network (12 layers, 12 heads, d_model 768,
vocabulary 50257, 1024 positions, eager attention) with seeded random weights
(``torch.manual_seed(0)`` followed by the default initialisation). It is written
with ``save_pretrained`` so that every library under comparison loads the very
same weights from disk.

Usage::

    python benchmarks/make_model.py [OUT_DIR]     # default /tmp/pi-bench/gpt2-small-random
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

DEFAULT_DIR = "/tmp/pi-bench/gpt2-small-random"

CONFIG_KWARGS = dict(
    n_layer=12,
    n_head=12,
    n_embd=768,
    vocab_size=50257,
    n_positions=1024,
)

VOCAB_SIZE = CONFIG_KWARGS["vocab_size"]


def _config():
    from transformers import GPT2Config

    cfg = GPT2Config(**CONFIG_KWARGS)
    cfg._attn_implementation = "eager"
    return cfg


def _same_config(out: Path) -> bool:
    cfg_file = out / "config.json"
    if not cfg_file.is_file():
        return False
    if not any(out.glob("*.safetensors")) and not any(out.glob("*.bin")):
        return False
    try:
        saved = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if saved.get("model_type") != "gpt2":
        return False
    return all(saved.get(k) == v for k, v in CONFIG_KWARGS.items())


def build_model(out_dir: str | Path = DEFAULT_DIR) -> Path:
    """Write the random GPT-2-small model to ``out_dir``; skip if it is already there.

    Returns the directory.
    """
    from transformers import GPT2LMHeadModel

    out = Path(out_dir)
    if _same_config(out):
        return out
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_config())
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


LLAMA_DIR = "/tmp/pi-bench/llama-gqa-32k-random"
LLAMA_KWARGS = dict(num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, hidden_size=512,
                    intermediate_size=1376, vocab_size=32000, max_position_embeddings=512)


def build_llama(out_dir: str | Path = LLAMA_DIR) -> Path:
    """Write a Llama-family model with grouped-query attention (8 layers, 8 query / 2 key-value heads, d 512,
    vocabulary 32k) with seeded random weights to ``out_dir``; skip if it is already there."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    cfg_file = out / "config.json"
    if cfg_file.is_file() and any(out.glob("*.safetensors")):
        saved = json.loads(cfg_file.read_text())
        if all(saved.get(k) == v for k, v in LLAMA_KWARGS.items()):
            return out
    torch.manual_seed(0)
    cfg = LlamaConfig(**LLAMA_KWARGS, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def make_inputs(n: int = 8, seq: int = 16, seed: int = 0, vocab: int = VOCAB_SIZE) -> torch.Tensor:
    """Token ids, LongTensor [n, seq], uniform in [0, vocab), from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=gen, dtype=torch.long)


def make_corrupt(tokens: torch.Tensor, pos: int = 3) -> torch.Tensor:
    """Corrupted copy of ``tokens``: the id at position ``pos`` becomes ``(id + 1) % 50257``
    in every example; all other positions are unchanged."""
    corrupt = tokens.clone()
    corrupt[:, pos] = (corrupt[:, pos] + 1) % VOCAB_SIZE
    return corrupt


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR
    print(build_model(target))
