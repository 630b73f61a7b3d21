"""Convert a dictionary_learning ``ae.pt`` to the SAELens on-disk format that ``pi.load_sae`` reads.

    python scripts/convert_sae.py ae.pt OUT_DIR --hook blocks.3.hook_resid_post [--head H]

The state dict is read with ``torch.load(weights_only=True)`` (no code is unpickled). Supported:
``AutoEncoder`` (``encoder.weight``, ``encoder.bias``, ``decoder.weight``, ``bias``: features
``relu(W_enc (x - bias) + b_enc)``), ``AutoEncoderTopK`` (the same with ``b_dec`` and ``k``) and
``JumpReluAutoEncoder`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``). The hook is the
TransformerLens name of the site the SAE was trained on (dictionary_learning does not store it in ``ae.pt``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def convert(state: dict[str, torch.Tensor], hook: str, head: int | None = None) -> tuple[dict, dict]:
    """The SAELens ``cfg.json`` dict and weights of a dictionary_learning state dict."""
    if "encoder.weight" in state:
        w = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"],
             "W_dec": state["decoder.weight"].T}
        if "b_dec" in state:  # AutoEncoderTopK
            w["b_dec"] = state["b_dec"]
            arch, extra = "topk", {"k": int(state["k"])}
        else:  # AutoEncoder
            w["b_dec"] = state["bias"]
            arch, extra = "standard", {}
        apply_b_dec = True
    elif "W_enc" in state and "threshold" in state:  # JumpReluAutoEncoder: features read x itself
        w = {k: state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        arch, extra, apply_b_dec = "jumprelu", {}, False
    else:
        raise SystemExit(f"unrecognised dictionary_learning state dict: keys {sorted(state)}")
    w = {k: v.detach().float().contiguous() for k, v in w.items()}
    d_in, d_sae = w["W_enc"].shape
    cfg = {"architecture": arch, "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "reshape_activations": "none",
           **extra, "metadata": {"hook_name": hook, "hook_head_index": head, "sae_lens_version": "6.0.0",
                                 "converted_from": "dictionary_learning ae.pt"}}
    return cfg, w


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ae", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--hook", required=True, help="e.g. blocks.3.hook_resid_post")
    ap.add_argument("--head", type=int, default=None, help="head index, for an SAE on attn.hook_z")
    args = ap.parse_args(argv)
    state = torch.load(args.ae, map_location="cpu", weights_only=True)
    cfg, weights = convert(state, args.hook, args.head)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cfg.json").write_text(json.dumps(cfg, indent=1))
    save_file(weights, str(args.out / "sae_weights.safetensors"))
    print(f"wrote {args.out} ({cfg['architecture']}, {cfg['d_in']} -> {cfg['d_sae']}, {args.hook})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
