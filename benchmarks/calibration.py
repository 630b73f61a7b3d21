"""Calibration of pytest-interp's verdicts on a shipped model: false-positive rates, interval coverage, the
family-wise error of assert_only, and power, over many independent trials (a fresh random batch per trial).

    python benchmarks/calibration.py                 # 1000 trials per n in 8, 16, 32, 128 (about an hour on 2 threads)
    python benchmarks/calibration.py --trials 200    # a quicker look

Model: fixtures/induction-llama; inputs: BOS + A + A repeated-segment sequences (``layout="halves"``); metric:
in-context loss (the second copy's predictions); intervention: the default mean ablation (each example replaced by
the mean of the other examples, size-corrected). "Truth" is each head's effect on 8,000 sequences (four batches of
2,000; its standard error is printed). Prints a Markdown
table (the README's Statistics section shows one run) and, for comparison, what the percentile bootstrap and the
mean that includes the example itself gave on the same trials, and what Student's t interval (the default before the
studentized bootstrap) gave.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import pytest_interp as pi
from pytest_interp.core.stats import bootstrap_ci, t_interval

ROOT = Path(__file__).resolve().parents[1]
HEADS = [pi.head(layer, h) for layer in range(2) for h in range(4)]
NULL = pi.head(1, 3)  # attends nearly uniformly; its true effect is slightly below zero
SMALL = pi.head(0, 2)  # a small real effect (~0.06 nats): the boundary cases use it
STRONG = pi.head(0, 3)  # the previous-token head whose effect depends most on the size of the mean
ALPHA = 0.05


def _batch(subject: pi.Subject, n: int, seed: int) -> pi.RepeatedTokens:
    return pi.repeated_tokens(subject, n=n, seed=seed, layout="halves")


def _metric(data: pi.RepeatedTokens) -> pi.metrics.Metric:
    return pi.metrics.loss(mask=data.second_half)


def _tol(p: float, trials: int) -> float:
    """Three binomial standard errors around a rate p."""
    return 3 * float(np.sqrt(p * (1 - p) / trials))


def _rate(x: float) -> str:
    return "refused (n < MIN_N)" if np.isnan(x) else f"{x:.3f}"


def truth(subject: pi.Subject, batches: int = 4, n: int = 2000) -> tuple[dict[pi.Site, float], dict[pi.Site, float]]:
    """Each head's effect on ``batches`` x ``n`` sequences, and its standard error."""
    values: dict[pi.Site, list[np.ndarray]] = {s: [] for s in HEADS}
    for b in range(batches):
        data = _batch(subject, n, seed=10_000_019 + b)
        for s, e in pi.sweep(subject, HEADS, inputs=data.tokens, metric=_metric(data)).items():
            values[s].append(e.values)
    v = {s: np.concatenate(a) for s, a in values.items()}
    return ({s: float(a.mean()) for s, a in v.items()},
            {s: float(a.std(ddof=1) / np.sqrt(a.size)) for s, a in v.items()})


def trial(subject: pi.Subject, n: int, seed: int, true: dict[pi.Site, float]) -> dict[str, object]:
    data = _batch(subject, n, seed)
    m = _metric(data)
    out: dict[str, object] = {}
    # a family with one false statement at its boundary: head 0.2 claimed unnecessary within its true effect
    try:
        pi.assert_only(subject, necessary=[pi.head(1, 0), pi.head(1, 1)],
                       among=[pi.head(1, 0), pi.head(1, 1), SMALL, NULL], inputs=data.tokens, metric=m,
                       at_least=2.5, within=abs(true[SMALL]))
        out["fwe_only"] = 1.0
    except pi.ClaimFailed:
        out["fwe_only"] = 0.0
    except pi.InterpError:  # below the claims' minimum n: the row still shows what the intervals would do
        out["fwe_only"] = float("nan")
    # every head's effect and interval from one sweep: the numbers pi.ablate and the claims give at each site
    # (tests/unit/test_sweeps.py checks they are equal), so each claim's verdict is its rule applied to them
    sweep = pi.sweep(subject, HEADS, inputs=data.tokens, metric=m, seed=seed)
    for s, e in sweep.items():
        pct = bootstrap_ci((e.values,), lambda x: x, alpha=ALPHA, n_boot=1000, seed=seed)
        t = t_interval(e.values, ALPHA)
        out[str(s)] = (e.mean, e.ci[0], e.ci[1], pct[0], pct[1], t[0], t[1])
    # the strongest head under the earlier defaults: a mean that includes the example itself, and the
    # leave-one-out mean without the size correction
    for key, how in (("inclusive", pi.Mean(exclude_self=False)), ("uncorrected", pi.Mean(debias=False))):
        out[key] = pi.ablate(subject, STRONG, inputs=data.tokens, metric=m, how=how).mean
    return out


def rates(rows: list[dict[str, object]], true: dict[pi.Site, float]) -> dict[str, float]:
    """Verdict and coverage rates over the trials of one n."""
    r: dict[str, float] = {"fwe_only": float(np.mean([row["fwe_only"] for row in rows]))}
    arr = {str(s): np.array([row[str(s)] for row in rows]) for s in HEADS}  # [trials, 7]
    for s in HEADS:
        a, k = arr[str(s)], str(s)
        expected = float(a[:, 0].mean())  # the estimand at this n: the effect's expectation over batches
        r[f"bias {k}"] = expected - true[s]
        r[f"cover_true {k}"] = float(np.mean((a[:, 1] <= true[s]) & (true[s] <= a[:, 2])))
        r[f"cover_n {k}"] = float(np.mean((a[:, 1] <= expected) & (expected <= a[:, 2])))
        r[f"above_n {k}"] = float(np.mean(a[:, 1] > expected))
        r[f"below_n {k}"] = float(np.mean(a[:, 2] < expected))
        r[f"pct_cover_n {k}"] = float(np.mean((a[:, 3] <= expected) & (expected <= a[:, 4])))
        r[f"pct_above_n {k}"] = float(np.mean(a[:, 3] > expected))
        r[f"pass0 {k}"] = float(np.mean(a[:, 1] >= 0.0))  # assert_necessary(at_least=0) passes
        r[f"pct_pass0 {k}"] = float(np.mean(a[:, 3] >= 0.0))
        r[f"t_cover_n {k}"] = float(np.mean((a[:, 5] <= expected) & (expected <= a[:, 6])))
        r[f"t_miss_n {k}"] = float(max(np.mean(a[:, 5] > expected), np.mean(a[:, 6] < expected)))
    small = arr[str(SMALL)]
    w = abs(true[SMALL])
    r["fp_equiv_boundary"] = float(np.mean((-w <= small[:, 1]) & (small[:, 2] <= w)))
    r["t_fp_equiv_boundary"] = float(np.mean((-w <= small[:, 5]) & (small[:, 6] <= w)))
    for key in ("inclusive", "uncorrected"):
        r[f"bias_{key}"] = float(np.mean([row[key] for row in rows])) - true[STRONG]
    return r


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--n", type=int, nargs="*", default=[8, 16, 32, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw rates here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    pi.configure(n_perm=200)  # permutation p-values do not enter these verdicts; the intervals use the default
    subject = pi.load(ROOT / "fixtures" / "induction-llama")
    true, se = truth(subject)
    print("truth (n = 8000): " + ", ".join(f"{s} {v:.4f} (se {se[s]:.4f})" for s, v in true.items()), flush=True)
    results: dict[int, dict[str, float]] = {}
    for n in args.n:
        t0 = time.perf_counter()
        rows = [trial(subject, n, 1_000_003 * n + i, true) for i in range(args.trials)]
        results[n] = rates(rows, true)
        print(f"n = {n}: {args.trials} trials in {time.perf_counter() - t0:.0f} s", flush=True)
    t = args.trials
    k0, k2, k12, k03 = str(NULL), str(SMALL), str(pi.head(1, 2)), str(STRONG)
    lines = [f"| n | FP: null head 1.3, at_least=0 | FP: not_necessary at its boundary | FWE: assert_only | "
             "coverage of the effect at this n (min over heads) | worst one-sided miss | coverage of the n = 8000 "
             "effect (min over heads) | bias at this n (max over heads) | power at_least=0: head 0.2 (0.06) / "
             "head 1.2 (0.49) | Student's t: FP boundary / coverage / worst miss | percentile bootstrap: FP null / "
             "coverage / worst miss | head 0.3 bias: inclusive "
             "mean / leave-one-out / size-corrected (default) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        cover_n = min(r[f"cover_n {s}"] for s in HEADS)
        miss = max(max(r[f"above_n {s}"], r[f"below_n {s}"]) for s in HEADS)
        cover_true = min(r[f"cover_true {s}"] for s in HEADS)
        bias = max((r[f"bias {s}"] for s in HEADS), key=abs)
        pct_cover = min(r[f"pct_cover_n {s}"] for s in HEADS)
        pct_miss = max(r[f"pct_above_n {s}"] for s in HEADS)
        t_cover = min(r[f"t_cover_n {s}"] for s in HEADS)
        t_miss = max(r[f"t_miss_n {s}"] for s in HEADS)
        lines.append(f"| {n} | {r[f'pass0 {k0}']:.3f} | {r['fp_equiv_boundary']:.3f} | {_rate(r['fwe_only'])} | "
                     f"{cover_n:.3f} | {miss:.3f} | {cover_true:.3f} | {bias:+.3f} | {r[f'pass0 {k2}']:.3f} / "
                     f"{r[f'pass0 {k12}']:.3f} | {r['t_fp_equiv_boundary']:.3f} / {t_cover:.3f} / {t_miss:.3f} | "
                     f"{r[f'pct_pass0 {k0}']:.3f} / {pct_cover:.3f} / {pct_miss:.3f} | "
                     f"{r['bias_inclusive']:+.3f} / {r['bias_uncorrected']:+.3f} / {r[f'bias {k03}']:+.3f} |")
    lines.append(f"\n{t} trials per n; alpha = {ALPHA}; binomial tolerance (3 s.e.) at alpha/2: "
                 f"{_tol(ALPHA / 2, t):.3f}, at 95% coverage: {_tol(0.05, t):.3f}")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"truth": {str(s): v for s, v in true.items()},
                                         "truth_se": {str(s): v for s, v in se.items()}, "trials": t,
                                         "rates": {str(n): r for n, r in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
