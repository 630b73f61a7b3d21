"""Peer implementations of the side-by-side benchmark: the same numbers computed with
plain HuggingFace forward hooks (the reference), TransformerLens 4.x (``TransformerBridge``)
and nnsight 0.8, each timed.

Installing the peers (they are kept out of the main environment)::

    python -m venv --system-site-packages /work/bench-venv
    /work/bench-venv/bin/pip install "transformer-lens==4.3.0" "nnsight==0.8.1" \\
        -c benchmarks/constraints.txt          # pins torch==2.13.0, transformers==5.23.0
    /work/bench-venv/bin/python benchmarks/peers.py [MODEL_DIR]

Definitions shared with the pytest-interp side
----------------------------------------------
Model and inputs come from :mod:`make_model` (random GPT-2 small, ``make_inputs(8, 16, 0)``).

metric (per example)
    mean over positions t = 0..seq-2 of ``log_softmax(logits[b, t])[tokens[b, t + 1]]``,
    where ``tokens`` are the inputs of the run being scored (the clean run is scored on the
    clean tokens; the corrupt and the patched runs on the corrupt tokens). Higher is better.

B1, all-heads mean-ablation sweep
    For each of the 144 heads (l, h) the head's output (TransformerLens
    ``blocks.{l}.attn.hook_z[:, :, h, :]``; in HF GPT-2 the input of
    ``transformer.h[l].attn.c_proj``, columns ``h*64:(h+1)*64``) is replaced by its mean over
    the examples, separately per position (shape ``[1, seq, 64]``), taken from the clean run on
    the same inputs. Effect = mean over examples of (clean metric - ablated metric).
    One forward per head.

B2, residual-stream patching (denoising)
    clean = the inputs; corrupt = the inputs with the token at position 3 replaced by
    ``(id + 1) % 50257`` in every example (:func:`make_model.make_corrupt`). For each layer l
    in 0..11 and position p in 0..seq-1 the corrupt input is run with the residual stream
    entering layer l (TransformerLens ``blocks.{l}.hook_resid_pre``; HF the ``hidden_states``
    input of ``transformer.h[l]``) at position p replaced by the clean run's value.
    Effect = (mean patched - mean corrupt) / (mean clean - mean corrupt), means over examples.
    One forward per site.

Every function returns ``(effects, seconds)``: ``effects`` maps ``(layer, head)`` (B1) or
``(layer, pos)`` (B2) to a float; ``seconds`` is the wall time of the sweep alone (model
loading excluded, the clean/corrupt baseline runs included). All runs are float32 on the CPU
with two threads and without autograd.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model import DEFAULT_DIR, build_model, make_corrupt, make_inputs  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

N_LAYERS = 12
N_HEADS = 12
D_HEAD = 64

INSTALL_HINT = (
    'install the benchmark peers: pip install -e ".[bench]", or in a separate virtualenv: '
    "python -m venv --system-site-packages /work/bench-venv && "
    '/work/bench-venv/bin/pip install "transformer-lens==4.3.0" "nnsight==0.8.1" '
    "-c benchmarks/constraints.txt"
)

Effects = dict[tuple[int, int], float]


# --------------------------------------------------------------------------- shared pieces

def _threads() -> None:
    torch.set_num_threads(2)


def metric(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-example mean log-prob of the actual next token, Tensor[batch] (float32)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return lp.gather(-1, tokens[:, 1:, None])[..., 0].mean(dim=1)


def _b1_effects(clean_scores: torch.Tensor, ablated: dict[tuple[int, int], torch.Tensor]) -> Effects:
    return {k: float((clean_scores.double() - v.double()).mean()) for k, v in ablated.items()}


def _b2_effects(clean_scores: torch.Tensor, corrupt_scores: torch.Tensor,
                patched: dict[tuple[int, int], torch.Tensor]) -> Effects:
    k = float(clean_scores.double().mean())
    c = float(corrupt_scores.double().mean())
    return {key: (float(v.double().mean()) - c) / (k - c) for key, v in patched.items()}


def _load_hf(model_dir: str | Path):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                            dtype=torch.float32)
    return model.eval()


# --------------------------------------------------------------------------- plain HF (reference)

def _hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, use_cache=False).logits


def hf_b1(model_dir: str | Path, tokens: torch.Tensor) -> tuple[Effects, float]:
    """B1 with plain ``register_forward_pre_hook`` on ``transformer.h[l].attn.c_proj``."""
    _threads()
    model = _load_hf(model_dir)
    blocks = model.transformer.h
    with torch.no_grad():
        t0 = time.perf_counter()
        means: dict[int, torch.Tensor] = {}

        def capture(layer: int) -> Callable:
            def hook(mod, args):
                means[layer] = args[0].mean(dim=0, keepdim=True)
            return hook

        handles = [blocks[l].attn.c_proj.register_forward_pre_hook(capture(l)) for l in range(N_LAYERS)]
        try:
            clean = metric(_hf_logits(model, tokens), tokens)
        finally:
            for h in handles:
                h.remove()

        ablated = {}
        for l in range(N_LAYERS):
            for h in range(N_HEADS):
                sl = slice(h * D_HEAD, (h + 1) * D_HEAD)

                def ablate(mod, args, sl=sl, mean=means[l]):
                    z = args[0].clone()
                    z[:, :, sl] = mean[:, :, sl]
                    return (z,) + tuple(args[1:])

                handle = blocks[l].attn.c_proj.register_forward_pre_hook(ablate)
                try:
                    ablated[(l, h)] = metric(_hf_logits(model, tokens), tokens)
                finally:
                    handle.remove()
        seconds = time.perf_counter() - t0
    return _b1_effects(clean, ablated), seconds


def hf_b2(model_dir: str | Path, clean: torch.Tensor, corrupt: torch.Tensor,
          score: Callable = metric) -> tuple[Effects, float]:
    """B2 with plain ``register_forward_pre_hook`` on ``transformer.h[l]`` (its hidden_states input)."""
    _threads()
    model = _load_hf(model_dir)
    blocks = model.transformer.h
    seq = clean.shape[1]
    with torch.no_grad():
        t0 = time.perf_counter()
        resid: dict[int, torch.Tensor] = {}

        def capture(layer: int) -> Callable:
            def hook(mod, args):
                resid[layer] = args[0].detach().clone()
            return hook

        handles = [blocks[l].register_forward_pre_hook(capture(l)) for l in range(N_LAYERS)]
        try:
            clean_scores = score(_hf_logits(model, clean), clean)
        finally:
            for h in handles:
                h.remove()
        corrupt_scores = score(_hf_logits(model, corrupt), corrupt)

        patched = {}
        for l in range(N_LAYERS):
            for p in range(seq):
                def patch(mod, args, p=p, src=resid[l]):
                    x = args[0].clone()
                    x[:, p] = src[:, p]
                    return (x,) + tuple(args[1:])

                handle = blocks[l].register_forward_pre_hook(patch)
                try:
                    patched[(l, p)] = score(_hf_logits(model, corrupt), corrupt)
                finally:
                    handle.remove()
        seconds = time.perf_counter() - t0
    return _b2_effects(clean_scores, corrupt_scores, patched), seconds


def hf_forward_seconds(model_dir: str | Path, tokens: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time of one plain forward (no hooks) on ``tokens``."""
    _threads()
    model = _load_hf(model_dir)
    times = []
    with torch.no_grad():
        _hf_logits(model, tokens)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            _hf_logits(model, tokens)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


# --------------------------------------------------------------------------- TransformerLens 4.x

def _load_tl(model_dir: str | Path):
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"TransformerLens 4.x (TransformerBridge) is not available ({e}); {INSTALL_HINT}") from e
    # Raw HF weights (no LayerNorm folding or centering), eager attention, float32, CPU.
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu", dtype=torch.float32)
    bridge.eval()
    return bridge


def tl_b1(model_dir: str | Path, tokens: torch.Tensor) -> tuple[Effects, float]:
    """B1 with ``TransformerBridge.run_with_cache`` (clean ``hook_z``) and one ``run_with_hooks``
    per head on ``blocks.{l}.attn.hook_z``."""
    _threads()
    bridge = _load_tl(model_dir)
    names = [f"blocks.{l}.attn.hook_z" for l in range(N_LAYERS)]
    with torch.no_grad():
        t0 = time.perf_counter()
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
        clean = metric(logits, tokens)
        means = {l: cache[names[l]].mean(dim=0, keepdim=True) for l in range(N_LAYERS)}  # [1, seq, head, d]

        ablated = {}
        for l in range(N_LAYERS):
            for h in range(N_HEADS):
                def ablate(z, hook, h=h, mean=means[l]):
                    z = z.clone()
                    z[:, :, h, :] = mean[:, :, h, :]
                    return z

                logits = bridge.run_with_hooks(tokens, fwd_hooks=[(names[l], ablate)])
                ablated[(l, h)] = metric(logits, tokens)
        seconds = time.perf_counter() - t0
    return _b1_effects(clean, ablated), seconds


def tl_b2(model_dir: str | Path, clean: torch.Tensor, corrupt: torch.Tensor,
          score: Callable = metric) -> tuple[Effects, float]:
    """B2 with ``transformer_lens.patching.get_act_patch_resid_pre`` on the bridge (one
    ``run_with_hooks`` per (layer, pos) inside it), clean cache from ``run_with_cache``."""
    _threads()
    bridge = _load_tl(model_dir)
    from transformer_lens import patching

    names = {f"blocks.{l}.hook_resid_pre" for l in range(N_LAYERS)}
    with torch.no_grad():
        t0 = time.perf_counter()
        clean_logits, clean_cache = bridge.run_with_cache(clean, names_filter=lambda n: n in names)
        clean_scores = score(clean_logits, clean)
        corrupt_scores = score(bridge(corrupt), corrupt)
        # reduce="none": the metric returns one score per example and every example is kept,
        # so the ratio below uses the same batch means as the other implementations.
        result = patching.get_act_patch_resid_pre(
            bridge, corrupt, clean_cache, lambda lg: score(lg, corrupt), reduce="none",
        )
        values = result.values if hasattr(result, "values") else result  # [layer, pos, batch]
        seconds = time.perf_counter() - t0
    seq = clean.shape[1]
    patched = {(l, p): values[l, p] for l in range(N_LAYERS) for p in range(seq)}
    return _b2_effects(clean_scores, corrupt_scores, patched), seconds


# --------------------------------------------------------------------------- nnsight 0.8

def _load_nnsight(model_dir: str | Path):
    try:
        from nnsight import TransformersModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"nnsight 0.8 (TransformersModel) is not available ({e}); {INSTALL_HINT}") from e
    return TransformersModel(str(model_dir), task="text-generation", device_map="cpu", dispatch=True,
                             attn_implementation="eager", dtype=torch.float32)


def nnsight_b1(model_dir: str | Path, tokens: torch.Tensor) -> tuple[Effects, float]:
    """B1 with one ``model.trace`` saving every ``transformer.h[l].attn.c_proj.input`` and one
    trace per head assigning the mean into that input's columns."""
    _threads()
    model = _load_nnsight(model_dir)
    with torch.no_grad():
        t0 = time.perf_counter()
        # Containers must exist before the trace: nnsight writes back only the saved values
        # themselves, so a list first created inside the block is unbound after it.
        zs: list = []
        with model.trace(tokens):
            for l in range(N_LAYERS):
                zs.append(model.transformer.h[l].attn.c_proj.input.save())
            logits = model.lm_head.output.save()
        clean = metric(logits, tokens)
        means = [z.mean(dim=0, keepdim=True) for z in zs]

        ablated = {}
        for l in range(N_LAYERS):
            for h in range(N_HEADS):
                sl = slice(h * D_HEAD, (h + 1) * D_HEAD)
                with model.trace(tokens):
                    model.transformer.h[l].attn.c_proj.input[:, :, sl] = means[l][:, :, sl]
                    logits = model.lm_head.output.save()
                ablated[(l, h)] = metric(logits, tokens)
        seconds = time.perf_counter() - t0
    return _b1_effects(clean, ablated), seconds


def nnsight_b2(model_dir: str | Path, clean: torch.Tensor, corrupt: torch.Tensor,
               score: Callable = metric) -> tuple[Effects, float]:
    """B2 with one ``model.trace`` saving every ``transformer.h[l].input`` on the clean inputs and
    one trace per (layer, pos) on the corrupt inputs assigning the clean value at that position."""
    _threads()
    model = _load_nnsight(model_dir)
    seq = clean.shape[1]
    with torch.no_grad():
        t0 = time.perf_counter()
        resid: list = []  # created outside the trace (see nnsight_b1)
        with model.trace(clean):
            for l in range(N_LAYERS):
                resid.append(model.transformer.h[l].input.save())
            logits = model.lm_head.output.save()
        clean_scores = score(logits, clean)
        with model.trace(corrupt):
            logits = model.lm_head.output.save()
        corrupt_scores = score(logits, corrupt)

        patched = {}
        for l in range(N_LAYERS):
            for p in range(seq):
                with model.trace(corrupt):
                    model.transformer.h[l].input[:, p] = resid[l][:, p]
                    logits = model.lm_head.output.save()
                patched[(l, p)] = score(logits, corrupt)
        seconds = time.perf_counter() - t0
    return _b2_effects(clean_scores, corrupt_scores, patched), seconds


# --------------------------------------------------------------------------- runner

def max_abs_diff(a: Effects, b: Effects) -> float:
    if a.keys() != b.keys():
        raise ValueError("effect dicts have different keys")
    return max(abs(a[k] - b[k]) for k in a)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from importlib.metadata import PackageNotFoundError, version

    ap = argparse.ArgumentParser(description="Time the peer implementations against plain HF hooks.")
    ap.add_argument("model_dir", nargs="?", default=DEFAULT_DIR)
    ap.add_argument("--peers", default="transformer_lens,nnsight",
                    help="comma-separated subset of transformer_lens,nnsight (plain HF always runs)")
    ap.add_argument("--json", default=None, help="also write timings and differences to this file")
    args = ap.parse_args(argv)

    _threads()
    build_model(args.model_dir)
    tokens = make_inputs(8, 16, 0)
    corrupt = make_corrupt(tokens, 3)
    report: dict = {"versions": {}, "seconds": {}, "max_abs_diff": {}, "failed": {}}

    for name in ("torch", "transformers", "transformer-lens", "nnsight"):
        try:
            report["versions"][name] = version(name)
        except PackageNotFoundError:
            report["versions"][name] = None
    print(", ".join(f"{k} {v}" for k, v in report["versions"].items()),
          f"| threads {torch.get_num_threads()}")

    fwd = hf_forward_seconds(args.model_dir, tokens)
    report["seconds"]["forward_8x16"] = fwd
    print(f"plain HF forward 8x16: {fwd * 1000:.1f} ms (median of 10)")

    ref1, s = hf_b1(args.model_dir, tokens)
    report["seconds"]["B1/hf"] = s
    print(f"B1 {'hf':16s} {s:8.2f} s  ({len(ref1)} forwards + 1 clean)")
    ref2, s = hf_b2(args.model_dir, tokens, corrupt)
    report["seconds"]["B2/hf"] = s
    print(f"B2 {'hf':16s} {s:8.2f} s  ({len(ref2)} forwards + clean + corrupt)")

    table = {"transformer_lens": (tl_b1, tl_b2), "nnsight": (nnsight_b1, nnsight_b2)}
    for label in [p.strip() for p in args.peers.split(",") if p.strip()]:
        fn1, fn2 = table[label]
        for bench, fn, fargs, ref in (("B1", fn1, (tokens,), ref1), ("B2", fn2, (tokens, corrupt), ref2)):
            key = f"{bench}/{label}"
            try:
                eff, s = fn(args.model_dir, *fargs)
            except Exception as e:  # report and go on with the others
                report["failed"][key] = f"{type(e).__name__}: {e}"
                print(f"{bench} {label:16s} FAILED: {type(e).__name__}: {e}")
                continue
            d = max_abs_diff(eff, ref)
            report["seconds"][key], report["max_abs_diff"][key] = s, d
            print(f"{bench} {label:16s} {s:8.2f} s  max |diff| vs hf = {d:.3g}")

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --------------------------------------------------------------------------- Llama (GQA, 32k): one forward per site

def _load_llama(model_dir: str | Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()


def hf_llama_heads(model_dir: str | Path, tokens: torch.Tensor, score: Callable = metric) -> tuple[Effects, float]:
    """Every head mean-ablated (the batch mean, the example included) at the input of ``o_proj``: one forward
    pass per head, plain hooks."""
    _threads()
    model = _load_llama(model_dir)
    layers = model.model.layers
    n_heads, d_head = model.config.num_attention_heads, model.config.head_dim
    with torch.no_grad():
        t0 = time.perf_counter()
        means: dict[int, torch.Tensor] = {}
        handles = [layers[l].self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, l=l: means.__setitem__(l, a[0].mean(0, keepdim=True))) for l in range(len(layers))]
        try:
            clean = score(model(input_ids=tokens, use_cache=False).logits, tokens)
        finally:
            for h in handles:
                h.remove()
        ablated = {}
        for l in range(len(layers)):
            for h in range(n_heads):
                sl = slice(h * d_head, (h + 1) * d_head)

                def ablate(mod, args, sl=sl, mean=means[l]):
                    z = args[0].clone()
                    z[:, :, sl] = mean[:, :, sl]
                    return (z,) + tuple(args[1:])

                handle = layers[l].self_attn.o_proj.register_forward_pre_hook(ablate)
                try:
                    ablated[(l, h)] = score(model(input_ids=tokens, use_cache=False).logits, tokens)
                finally:
                    handle.remove()
        seconds = time.perf_counter() - t0
    return _b1_effects(clean, ablated), seconds


def hf_llama_resid(model_dir: str | Path, clean: torch.Tensor, corrupt: torch.Tensor,
                   score: Callable = metric) -> tuple[Effects, float]:
    """The residual stream entering each layer patched from the clean run into the corrupt run at one position:
    one forward pass per (layer, position), plain hooks."""
    _threads()
    model = _load_llama(model_dir)
    layers = model.model.layers
    seq = clean.shape[1]

    def first(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    with torch.no_grad():
        t0 = time.perf_counter()
        resid: dict[int, torch.Tensor] = {}
        handles = [layers[l].register_forward_pre_hook(
            lambda m, a, k, l=l: resid.__setitem__(l, first(a, k).clone()), with_kwargs=True)
            for l in range(len(layers))]
        try:
            clean_scores = score(model(input_ids=clean, use_cache=False).logits, clean)
        finally:
            for h in handles:
                h.remove()
        corrupt_scores = score(model(input_ids=corrupt, use_cache=False).logits, corrupt)
        patched = {}
        for l in range(len(layers)):
            for p in range(seq):
                def patch(mod, args, kwargs, p=p, src=resid[l]):
                    x = first(args, kwargs).clone()
                    x[:, p] = src[:, p]
                    if args:
                        return (x,) + tuple(args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": x}

                handle = layers[l].register_forward_pre_hook(patch, with_kwargs=True)
                try:
                    patched[(l, p)] = score(model(input_ids=corrupt, use_cache=False).logits, corrupt)
                finally:
                    handle.remove()
        seconds = time.perf_counter() - t0
    return _b2_effects(clean_scores, corrupt_scores, patched), seconds
