"""Side-by-side benchmarks of pytest-interp against TransformerLens and nnsight (and plain HF hooks).

    python benchmarks/run.py            # everything available; peers need the [bench] extra
    python benchmarks/run.py B1 B3      # a subset (B1-B6, L for the Llama GQA 32k rows, M for memory, F for SAE
                                        # features, E for the edge screen)

Prints one table with times, ratios, the machine, and the max abs difference of each peer's per-site effects
from pytest-interp's. Model: GPT-2 small architecture (12 layers x 12 heads, d=768, vocabulary 50257) with
seeded random weights, saved as an HF directory by make_model.py; inputs: 8 random prompts of 16 tokens.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_model  # noqa: E402
import peers  # noqa: E402

import pytest_interp as pi  # noqa: E402


def _pi_subject(model_dir: Path) -> pi.Subject:
    return pi.load(model_dir)


def pi_b1(subject: pi.Subject, tokens: torch.Tensor) -> tuple[dict, float, float]:
    """All-heads mean-ablation sweep; metric: mean log-prob of the actual next token (damage = clean - ablated,
    i.e. the increase of next-token loss)."""
    t = time.perf_counter()
    # the peers replace each example by the mean over the whole batch, the example included: the same here, so
    # the per-site numbers can be compared (the default, leave-one-out, runs the same passes)
    sweep = pi.sweep(subject, inputs=tokens, metric=pi.metrics.loss(), how=pi.Mean(exclude_self=False))
    seconds = time.perf_counter() - t
    return {(s.layer, s.index): e.mean for s, e in sweep.items()}, seconds, sweep.work.fraction


def pi_b2(subject: pi.Subject, clean: torch.Tensor, corrupt: torch.Tensor,
          metric: pi.metrics.Metric | None = None) -> tuple[dict, float]:
    t = time.perf_counter()
    sweep = pi.patch_sweep(subject, clean=clean, corrupt=corrupt, metric=metric or pi.metrics.loss())
    seconds = time.perf_counter() - t
    return {(s.layer, s.positions): e.mean for s, e in sweep.items()}, seconds


CLAIMS = '''
import pytest, torch
import pytest_interp as pi

TOKENS = torch.randint(0, 50257, (16, 16), generator=torch.Generator().manual_seed(0))  # claims need 16

@pytest.mark.parametrize("layer,head", [(0, 0), (3, 5), (6, 1), (9, 7), (11, 11)])
def test_head_not_necessary(subject, layer, head):
    pi.assert_not_necessary(subject, pi.head(layer, head), inputs=TOKENS, metric=pi.metrics.loss(), within=0.05)

@pytest.mark.parametrize("layer", [2, 5, 8, 11])
def test_mlp_necessary(subject, layer):
    pi.assert_necessary(subject, pi.mlp(layer), inputs=TOKENS, metric=pi.metrics.kl(), at_least=1e-4,
                        how=pi.Zero())

def test_resid_patch(subject):
    # the loss counts predictions from position 3 on (earlier ones cannot see the change); with these random
    # weights the original tokens have the lower loss there
    shifted = TOKENS.clone(); shifted[:, 3] = (shifted[:, 3] + 1) % 50257
    later = torch.arange(16) >= 3
    later[-1] = False
    pi.assert_restores(subject, pi.resid(0).at(3), clean=TOKENS, corrupt=shifted,
                       metric=pi.metrics.loss(mask=later), at_least=0.5)
'''


def _claims_time(project: Path, args: list[str], model_dir: Path | None) -> tuple[float, dict]:
    junit = project / "junit.xml"
    report = project / "report.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--junitxml={junit}",
           f"--interp-json={report}", *args]
    if model_dir is not None:
        cmd.append(f"--interp-model={model_dir}")
    out = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    if not report.exists():
        raise RuntimeError(f"the claims run wrote no report (exit {out.returncode}):\n{out.stdout[-3000:]}")
    import xml.etree.ElementTree as ET

    total = sum(float(tc.get("time", 0)) for tc in ET.parse(junit).getroot().iter("testcase"))
    data = json.loads(report.read_text())
    return total, {c["key"]: (c["passed"], c["effect"], c["ci"]) for c in data["claims"]}


def b3(model_dir: Path) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "test_bench_claims.py").write_text(CLAIMS)
        cache = ["--interp-cache", str(project / "cache")]
        cold, cold_res = _claims_time(project, [*cache, "test_bench_claims.py"], model_dir)
        warm, warm_res = _claims_time(project, [*cache, "test_bench_claims.py"], model_dir)
        same = cold_res == warm_res
        rows.append(("B3 claims file (10 claims, GPT-2 small)", f"cold {cold:.2f} s, warm {warm:.2f} s: "
                     f"{cold / warm:.1f}x; identical verdicts and effects: {same}"))
    with tempfile.TemporaryDirectory() as tmp:
        repo = HERE.parent
        cache = ["--interp-cache", tmp, str(repo / "claims")]
        cold, cold_res = _claims_time(repo, cache, None)
        warm, warm_res = _claims_time(repo, cache, None)
        rows.append(("B3 pytest claims/ (shipped fixtures)", f"cold {cold:.2f} s, warm {warm:.2f} s: "
                     f"{cold / warm:.1f}x; identical: {cold_res == warm_res}"))
        for f in ("junit.xml", "report.json"):
            (repo / f).unlink(missing_ok=True)
    return rows


def b5(subject: pi.Subject) -> list[tuple[str, str]]:
    """Small-batch regime (2 prompts of 16 tokens; an interval needs 2): all-heads sweep with interventions
    packed into shared forward passes (the default) vs one forward pass per site (batch size 1: no packing)."""
    one = make_model.make_inputs(n=2)
    metric = pi.metrics.loss()
    how = pi.Mean(reference=make_model.make_inputs())  # the mean over one prompt would be the prompt itself
    pi.sweep(subject, [pi.head(0, 0)], inputs=one, metric=metric, how=how)  # warm-up
    t = time.perf_counter()
    packed = pi.sweep(subject, inputs=one, metric=metric, how=how)
    t_packed = time.perf_counter() - t
    batch_size = pi.settings().batch_size
    pi.configure(batch_size=1)
    try:
        t = time.perf_counter()
        single = pi.sweep(subject, inputs=one, metric=metric, how=how)
        t_single = time.perf_counter() - t
    finally:
        pi.configure(batch_size=batch_size)
    diff = max(abs(packed[s].mean - single[s].mean) for s in packed)
    return [("B5 all heads, 2 prompts x 16 tokens: packed vs one forward per site",
             f"{t_packed:.2f} s vs {t_single:.2f} s: packing gains {t_single / t_packed:.2f}x; max |diff| {diff:.1e}")]


def _status(key: str) -> int:
    """A /proc/self/status value in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def reset_peak() -> int:
    """Reset this process's peak resident size (VmHWM) to its current one; returns that size (KiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_since(base: int) -> str:
    """How far the resident size peaked above ``base`` (KiB) since :func:`reset_peak`."""
    return f"peak +{(_status('VmHWM') - base) / 2**20:.2f} GiB"


MEMORY = """
import sys, torch
import pytest_interp as pi
{prelude}
sys.path.insert(0, {here!r})
import make_model
torch.set_num_threads(2)
subject = pi.load({model!r})
tokens = make_model.make_inputs(**{inputs})
from pytest_interp.engine.runner import logits
logits(subject, tokens, what="clean run")  # the loaded model, its weights read by one forward pass
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident size
base = status("VmRSS")
import time
t = time.perf_counter()
pi.sweep(subject, inputs=tokens, metric=pi.metrics.loss())
print(base, status("VmHWM"), time.perf_counter() - t)
"""


def memory(model_dir: Path) -> list[tuple[str, str]]:
    """Peak resident memory of a default all-heads sweep in a fresh process: what the sweep adds above the loaded
    model (after one forward pass), against the size of the weights; as shipped (the first run fixes glibc's mmap
    threshold, so large buffers go back to the system when freed) and with that disabled (glibc's dynamic
    threshold keeps freed buffers in a fragmented heap)."""
    rows = []
    for tag, directory, inputs in (("B1", model_dir, "{}"), ("L1", make_model.build_llama(),
                                                                "{'n': 8, 'seq': 32, 'vocab': 32000}")):
        weights = sum(f.stat().st_size for f in Path(directory).glob("*.safetensors")) / 2**30
        for env_label, prelude in (("as shipped: the first run fixes glibc's mmap threshold", ""), (
                "that fix disabled: glibc's dynamic threshold",
                "from pytest_interp.engine import memory; memory._state['done'] = False")):
            code = MEMORY.format(here=str(HERE), model=str(directory), inputs=inputs, prelude=prelude)
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
            base_kib, peak_kib, secs = out.stdout.split()
            base, peak = int(base_kib) / 2**20, int(peak_kib) / 2**20
            rows.append((f"M {tag} sweep memory ({env_label})", f"+{peak - base:.2f} GiB above the loaded model "
                         f"({base:.2f} GiB; peak {peak:.2f} GiB); weights {weights:.2f} GiB: the sweep adds "
                         f"{(peak - base) / weights:.2f}x the weights; the sweep took {float(secs):.1f} s"))
    return rows


def _best(runs: int, fn: Any) -> tuple[Any, float]:
    """``fn()``'s result and its fastest time over ``runs`` calls (a long-lived process's timings drift with its
    heap; the best of several is the steadiest)."""
    best, result = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return result, best


def llama_rows() -> list[tuple[str, str]]:
    """L1/L2 on a Llama-family model with grouped-query attention and a 32k vocabulary: built-in metrics against
    equivalent custom ones, and against one plain forward pass per site. Run in a fresh process (``L`` alone) so
    the rows before it do not shape its heap; each time is the best of two."""
    if os.environ.get("PI_BENCH_CHILD") != "1":
        env = {**os.environ, "PI_BENCH_CHILD": "1"}
        out = subprocess.run([sys.executable, __file__, "L"], capture_output=True, text=True, check=True, env=env)
        return [tuple(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]  # type: ignore[misc]
    model_dir = make_model.build_llama()
    subject = pi.load(model_dir)
    tokens = make_model.make_inputs(n=8, seq=32, vocab=32000)
    rows = []
    custom_loss = pi.metrics.Metric(lambda logits, toks: -peers.metric(logits, toks), higher_is_better=False,
                                    name="custom loss")
    pi.sweep(subject, [pi.head(0, 0)], inputs=tokens, metric=pi.metrics.loss())  # warm-up
    (naive, _), t_naive = _best(2, lambda: peers.hf_llama_heads(model_dir, tokens))
    for label, metric in (("built-in loss", pi.metrics.loss()), ("custom loss Metric(fn)", custom_loss)):
        base = reset_peak()
        sweep, secs = _best(2, lambda: pi.sweep(subject, inputs=tokens, metric=metric,
                                                how=pi.Mean(exclude_self=False)))
        ours = {(s.layer, s.index): e.mean for s, e in sweep.items()}
        rows.append((f"L1 all-heads mean-ablation sweep, {label}", f"{secs:.2f} s; {t_naive / secs:.2f}x faster than "
                     f"one forward per head ({t_naive:.2f} s); max |diff| {peers.max_abs_diff(ours, naive):.1e}; "
                     f"{peak_since(base)}"))
    clean = make_model.make_inputs(n=8, seq=32, seed=1, vocab=32000)
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 1) % 32000
    with torch.no_grad():
        target = subject.model(input_ids=clean, use_cache=False).logits[:, -1].argmax(-1)

    def last(logits: torch.Tensor, toks: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[:, -1].float(), -1).gather(-1, target[:, None])[:, 0]

    def last_rows(logits: torch.Tensor, toks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[:, -1].float(), -1).gather(-1, target[rows][:, None])[:, 0]

    (naive, _), t_naive = _best(2, lambda: peers.hf_llama_resid(model_dir, clean, corrupt, last))
    for label, metric in (("built-in logprob", pi.metrics.logprob(target)),
                          ("custom Metric(fn, reads=pi.last)", pi.metrics.Metric(last_rows, reads=pi.last)),
                          ("custom Metric(fn), positions not declared", pi.metrics.Metric(last_rows))):
        base = reset_peak()
        sweep, secs = _best(2, lambda: pi.patch_sweep(subject, clean=clean, corrupt=corrupt, metric=metric))
        ours = {(s.layer, s.positions): e.mean for s, e in sweep.items()}
        rows.append((f"L2 last-position resid patching 8 x 32, {label}", f"{secs:.2f} s; {t_naive / secs:.2f}x "
                     f"faster than one forward per site ({t_naive:.2f} s); max |diff| "
                     f"{peers.max_abs_diff(ours, naive):.1e}; {peak_since(base)}"))
    return rows


def feature_rows() -> list[tuple[str, str]]:
    """F: the attribution screen over all 256 features of the addition fixture's block-0 SAE against exact
    zero-ablation of each feature (64 problems, logit difference of s1 against s1 - 1 at the last position)."""
    fixtures = HERE.parent / "fixtures"
    sys.path.insert(0, str(fixtures))
    from train_addition_gpt2 import make_problems

    subject = pi.load(fixtures / "addition-gpt2")
    sae = pi.load_sae(fixtures / "addition-gpt2" / "saes" / "blocks.0.hook_resid_post")
    p = make_problems("heldout", seed=0)
    tokens, s1 = p["ids"][:64, :9], p["ids"][:64, 9]
    metric = pi.metrics.logit_diff(s1, torch.where(s1 == 1, torch.tensor(10), s1 - 1), position=pi.last)
    pi.sweep(subject, [sae.feature(0).at(pi.last)], inputs=tokens, metric=metric, how=pi.Zero())  # warm-up
    base = reset_peak()
    t = time.perf_counter()
    est = pi.attribution_sweep(subject, [sae.features().at(pi.last)], inputs=tokens, metric=metric, how=pi.Zero())
    t_est = time.perf_counter() - t
    t = time.perf_counter()
    exact = pi.sweep(subject, [sae.feature(i).at(pi.last) for i in range(sae.d_sae)], inputs=tokens, metric=metric,
                     how=pi.Zero())
    t_exact = time.perf_counter() - t
    return [("F feature screen (256 SAE features) vs exact feature ablation", f"{t_est:.2f} s vs {t_exact:.2f} s: "
             f"{t_exact / t_est:.1f}x faster; Spearman {pi.rank_agreement(est, exact):.3f}; {peak_since(base)}")]


def edge_rows() -> list[tuple[str, str]]:
    """E: the edge screen (one forward and one backward pass) against exact path ablation of every layer-0 head
    into every layer-1 head through q, k and v (48 paths) on fixtures/induction-llama; 128 sequences BOS + A + A,
    in-context loss."""
    subject = pi.load(HERE.parent / "fixtures" / "induction-llama")
    data = pi.repeated_tokens(subject, n=128, seed=0, layout="halves")
    metric = pi.metrics.loss(mask=data.second_half)
    senders, receivers = [pi.head(0, h) for h in range(4)], [pi.head(1, h) for h in range(4)]
    pi.ablate_path(subject, pi.path(senders[0], receivers[0], via="q"), inputs=data.tokens, metric=metric)  # warm-up
    rows = []
    base = reset_peak()
    t = time.perf_counter()
    exact = pi.composition(subject, senders, receivers, inputs=data.tokens, metric=metric)
    t_exact = time.perf_counter() - t
    for steps in (1, 8):
        t = time.perf_counter()
        est = pi.edge_screen(subject, senders, receivers, inputs=data.tokens, metric=metric, steps=steps)
        t_est = time.perf_counter() - t
        rows.append((f"E edge screen (steps={steps}) vs exact path ablation, 48 paths", f"{t_est:.2f} s vs "
                     f"{t_exact:.2f} s: {t_exact / t_est:.1f}x faster; Spearman {pi.rank_agreement(est, exact):.3f}; "
                     f"{peak_since(base)}"))
    return rows


def b6() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", "--help"], capture_output=True,
                         text=True, cwd=tempfile.gettempdir())
    imported = any(line.split("|")[-1].strip().split(".")[0] == "torch" for line in out.stderr.splitlines()
                   if line.startswith("import time:"))
    return [("B6 pytest --help", f"torch imported: {imported}; --interp options listed: "
             f"{'--interp-model' in out.stdout}")]


class _Rows(list):
    """The result rows; each is also written to stderr as soon as it exists, so a failure later keeps them."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"{row[0]}: {row[1]}", file=sys.stderr, flush=True)
        super().append(row)

    def __iadd__(self, rows: list[tuple[str, str]]) -> _Rows:  # type: ignore[override]
        for row in rows:
            self.append(row)
        return self


def main(argv: list[str]) -> int:
    wanted = set(argv) or {"B1", "B2", "B2L", "B3", "B4", "B5", "B6", "L", "M", "F", "E"}
    torch.set_num_threads(2)
    model_dir = make_model.build_model()
    tokens = make_model.make_inputs()
    rows = _Rows()
    subject = _pi_subject(model_dir)
    fwd = peers.hf_forward_seconds(model_dir, tokens)
    rows.append(("one forward, 8 x 16 tokens (plain HF)", f"{fwd:.3f} s"))
    if "B1" in wanted:
        pi.sweep(subject, [pi.head(0, 0)], inputs=tokens, metric=pi.metrics.loss())  # warm-up
        base = reset_peak()
        ours, t_ours, frac = pi_b1(subject, tokens)
        rows.append(("B1 all-heads mean-ablation sweep: pytest-interp", f"{t_ours:.2f} s ({frac:.1%} of the naive "
                     f"layer x token evaluations); {peak_since(base)}"))
        for name, fn in (("plain HF hooks", peers.hf_b1), ("TransformerLens", peers.tl_b1),
                         ("nnsight", peers.nnsight_b1)):
            base = reset_peak()
            try:
                theirs, t = fn(model_dir, tokens)
            except Exception as exc:  # noqa: BLE001 - a peer that is missing is reported, not fatal
                rows.append((f"B1 {name}", f"unavailable: {type(exc).__name__}: {str(exc)[:90]}"))
                continue
            rows.append((f"B1 {name}", f"{t:.2f} s; pytest-interp is {t / t_ours:.2f}x faster; max |diff| "
                         f"{peers.max_abs_diff(ours, theirs):.1e}; {peak_since(base)} (loading its model "
                         "included)"))
    if "B4" in wanted:
        base = reset_peak()
        t = time.perf_counter()
        est = pi.attribution_sweep(subject, inputs=tokens, metric=pi.metrics.loss())
        t_est = time.perf_counter() - t
        t = time.perf_counter()
        exact = pi.sweep(subject, inputs=tokens, metric=pi.metrics.loss())
        t_exact = time.perf_counter() - t
        rows.append(("B4 attribution screen vs exact B1 sweep", f"{t_est:.2f} s vs {t_exact:.2f} s: "
                     f"{t_exact / t_est:.1f}x faster; Spearman rank correlation {pi.rank_agreement(est, exact):.3f}; "
                     f"{peak_since(base)}"))
    if "B2" in wanted or "B2L" in wanted:
        # seed 1: with seed 0 the corrupted prompts happen to score better than the clean ones (random weights)
        clean = make_model.make_inputs(seed=1)
        corrupt = make_model.make_corrupt(clean)
        variants = []
        if "B2" in wanted:
            variants.append(("B2 resid patching 12 layers x 16 positions (next-token log-prob, all positions)",
                             None, peers.metric))
        if "B2L" in wanted:
            # an IOI-style last-position metric: log-prob of the clean run's top prediction at the last position
            with torch.no_grad():
                target = subject.model(input_ids=clean, use_cache=False).logits[:, -1].argmax(-1)

            def last(logits: torch.Tensor, tokens: torch.Tensor, target: torch.Tensor = target) -> torch.Tensor:
                return torch.log_softmax(logits[:, -1].float(), -1).gather(-1, target[:, None])[:, 0]

            variants.append(("B2L resid patching 12 layers x 16 positions (log-prob at the last position)",
                             pi.metrics.logprob(target), last))
        for label, ours_metric, peer_metric in variants:
            tag = label.split()[0]
            base = reset_peak()
            ours, t_ours = pi_b2(subject, clean, corrupt, ours_metric)
            rows.append((f"{label}: pytest-interp", f"{t_ours:.2f} s; {peak_since(base)}"))
            for name, fn in (("plain HF hooks", peers.hf_b2), ("TransformerLens", peers.tl_b2),
                             ("nnsight", peers.nnsight_b2)):
                base = reset_peak()
                try:
                    theirs, t = fn(model_dir, clean, corrupt, peer_metric)
                except Exception as exc:  # noqa: BLE001
                    rows.append((f"{tag} {name}", f"unavailable: {type(exc).__name__}: {str(exc)[:90]}"))
                    continue
                rows.append((f"{tag} {name}", f"{t:.2f} s; pytest-interp is {t / t_ours:.2f}x faster; max |diff| "
                             f"{peers.max_abs_diff(ours, theirs):.1e}; {peak_since(base)} (loading its model "
                             "included)"))
    if "B3" in wanted:
        rows += b3(model_dir)
    if "B5" in wanted:
        rows += b5(subject)
    if "L" in wanted:
        rows += llama_rows()
    if "M" in wanted:
        rows += memory(model_dir)
    if "F" in wanted:
        rows += feature_rows()
    if "E" in wanted:
        rows += edge_rows()
    if "B6" in wanted:
        rows += b6()
    if os.environ.get("PI_BENCH_CHILD") == "1":  # a fresh process run for some rows: hand them back
        print(json.dumps(rows[1:]))
        return 0
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {platform.python_version()}")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
