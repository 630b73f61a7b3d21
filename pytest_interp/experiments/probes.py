"""Linear probes with control tasks (Hewitt & Liang 2019): what a site's activations linearly encode, and how much
of that is the probe's own memorisation.

A probe is a logistic regression trained on a seeded train split of the examples and scored on the rest. Its
control task gives every input *type* (by default the token at the probed position) one label drawn at random,
so a probe can only score on it by memorising types; *selectivity* = accuracy - control accuracy. Decodable is
not used: :func:`pytest_interp.assert_direction_used` ablates a probe's direction and measures the damage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.batch import real
from ..core.errors import InterpError
from ..core.sites import Site
from ..core.stats import Effect, sign_flip_p
from ..engine.runner import capture
from ..model.checks import as_subject, check_site
from ..model.subject import Subject
from .common import stat_args

#: the fewest examples of each class a split must hold
MIN_PER_CLASS = 4


@dataclass(frozen=True, eq=False)
class Probe:
    """A trained probe and its scores on the held-out split.

    Attributes:
        accuracy: held-out accuracy (Effect: mean over test examples, bootstrap CI).
        control: the control task's held-out accuracy.
        selectivity: accuracy - control accuracy on the same test examples (paired bootstrap CI).
        direction: unit vector in the site's activation space separating the classes (binary labels: class 1
            minus class 0; more classes: the first principal direction of the class weights).
        mean_difference: for two classes, the unit vector from the train split's class-0 mean activation to
            its class-1 mean. Measured on fixtures/addition-gpt2: projecting out the logistic probe's direction
            damaged the carry digit anywhere from 0.09 to 4.6 nats depending on the number of examples and the
            L2 penalty (a separable variable has many separating directions), while the mean difference was
            damaging at every size tried (0.6 to 3.4 nats); prefer it for direction claims.
        weights, bias: the probe (original activation units), ``[d, classes]`` and ``[classes]``.
    """

    accuracy: Effect
    control: Effect
    selectivity: Effect
    direction: torch.Tensor = field(repr=False)
    weights: torch.Tensor = field(repr=False)
    bias: torch.Tensor = field(repr=False)
    mean_difference: torch.Tensor | None = field(default=None, repr=False)
    site: Site | None = None
    position: int = -1

    def describe(self) -> str:
        a, c, s = self.accuracy, self.control, self.selectivity
        return (f"accuracy {a.mean:.3f} [{a.ci[0]:.3f}, {a.ci[1]:.3f}], control {c.mean:.3f}, selectivity "
                f"{s.mean:.3f} [{s.ci[0]:.3f}, {s.ci[1]:.3f}] (n test = {a.n})")


def activations_at(subject: Subject, site: Site, tokens: torch.Tensor, position: int) -> torch.Tensor:
    """``site``'s activation at one position of every example ``[n, d]`` (negative: from each example's end)."""
    check_site(subject, site.unrestricted, tokens)
    acts = capture(subject, tokens, [site.unrestricted])[site.unrestricted].float()
    lengths = real(tokens).sum(1).to(acts.device)
    idx = lengths + position if position < 0 else torch.full_like(lengths, position)
    if bool((idx < 0).any()) or bool((idx >= lengths).any()):
        raise InterpError(f"position {position} is outside some example", expected="a position every example has",
                          seen=f"lengths {int(lengths.min())}..{int(lengths.max())}",
                          fix="use pi.last or a position inside the shortest example")
    return acts[torch.arange(len(idx)), idx].reshape(len(idx), -1)


def probe(subject: Subject, site: Site, inputs: Any, labels: Any, *, position: int = -1, types: Any = None,
          train: float = 0.5, l2: float = 1e-3, alpha: float | None = None, seed: int | None = None) -> Probe:
    """Train a linear probe for ``labels`` on ``site``'s activation at ``position`` (see the module docstring).

    Args:
        labels: one class label per example (ints or strings).
        types: one input type per example for the control task (default: the token at ``position``).
        train: the share of examples in the train split (seeded, stratified by label).
        l2: the L2 penalty on the (standardised) probe weights.
    """
    subject = as_subject(subject)
    if site.decoder_side:
        raise InterpError(f"probing {site} is not supported", expected="a site of one stack, or of an "
                          "encoder-decoder model's encoder (whose positions are the inputs' tokens)",
                          seen="a decoder site: its positions are the decoder's, not the inputs'",
                          fix="probe the encoder (stack='encoder'), or read decoder activations yourself")
    st = stat_args(alpha, seed)
    tokens = subject.tokens(inputs)
    y = _labels(labels, len(tokens), "labels")
    classes = np.unique(y)
    if classes.size < 2:
        raise InterpError("a probe needs at least two classes", expected="labels with 2 or more values",
                          seen=f"only {classes[0]!r}", fix="pass examples of every class")
    if not 0 < train < 1:
        raise InterpError("train must be a share of the examples", expected="0 < train < 1", seen=str(train),
                          fix="e.g. train=0.5")
    if types is None:
        lengths = real(tokens).sum(1)
        at = lengths + position if position < 0 else torch.full_like(lengths, position)
        t = tokens[torch.arange(len(tokens)), at.clamp(0, tokens.shape[1] - 1)].tolist()
    else:
        t = _labels(types, len(tokens), "types").tolist()
    x = activations_at(subject, site, tokens, position)
    rng = np.random.default_rng(st["seed"])
    tr, te = _split(y, train, rng)
    ctrl = _control(y, np.asarray(t, dtype=object), rng)
    acc, w, b = _fit_score(x, y, tr, te, l2)
    acc_c, _, _ = _fit_score(x, ctrl, tr, te, l2)
    what = dict(sites=(site,), method="probe", intervention="none (linear probe)", seed=st["seed"], alpha=st["alpha"],
                n_boot=st["n_boot"], model=subject.identity())
    majority = float(max(np.mean(y[te] == c) for c in classes))  # what always answering one class scores
    return Probe(accuracy=_mean_ci(acc, majority, st, "probe accuracy", what),
                 control=_mean_ci(acc_c, majority, st, "control accuracy", what),
                 selectivity=_mean_ci(acc - acc_c, 0.0, st, "selectivity", what), direction=_direction(w),
                 weights=w, bias=b, mean_difference=_mean_difference(x, y, tr), site=site, position=position)


def _labels(values: Any, n: int, name: str) -> np.ndarray:
    v = np.asarray(values.tolist() if isinstance(values, torch.Tensor) else list(values), dtype=object)
    if v.shape != (n,):
        raise InterpError(f"{name} must give one value per example", expected=f"{n} values", seen=f"{v.shape}",
                          fix=f"pass a list or 1-d tensor of {n} {name}")
    return v


def _split(y: np.ndarray, train: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(train * idx.size))
        if k < MIN_PER_CLASS or idx.size - k < MIN_PER_CLASS:
            raise InterpError(f"too few examples of class {c!r} for a train and a test split",
                              expected=f">= {MIN_PER_CLASS} of each class in each split",
                              seen=f"{idx.size} examples of class {c!r} ({k} would train)",
                              fix="pass more examples of that class")
        tr.append(idx[:k])
        te.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


def _control(y: np.ndarray, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each input type gets one label, drawn from the labels' empirical distribution (seeded)."""
    out = np.empty_like(y)
    for t in sorted(set(types.tolist()), key=repr):
        out[types == t] = y[rng.integers(0, y.size)]
    return out


def _fit_score(x: torch.Tensor, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
               l2: float) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L-BFGS on standardised activations); per-example test correctness and
    the weights in the original units."""
    classes = sorted(set(y.tolist()), key=repr)
    index = {c: i for i, c in enumerate(classes)}
    yi = torch.tensor([index[c] for c in y.tolist()])
    xt = x[torch.as_tensor(tr)].double()
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mu) / sd
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64)
    b = torch.zeros(len(classes), dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=300, line_search_fn="strong_wolfe")
    onehot = torch.nn.functional.one_hot(yi[torch.as_tensor(tr)], len(classes)).double()

    def closure() -> torch.Tensor:
        # the cross-entropy and its gradient in closed form: (softmax - onehot) / n, plus the L2 term
        logits = z @ w + b
        err = (logits.softmax(-1) - onehot) / len(z)
        w.grad, b.grad = z.T @ err + 2 * l2 * w, err.sum(0)
        return -(logits.log_softmax(-1) * onehot).sum() / len(z) + l2 * (w ** 2).sum()

    opt.step(closure)
    w_orig = w / sd[:, None]
    b_orig = b - (mu / sd) @ w
    pred = (x[torch.as_tensor(te)].double() @ w_orig + b_orig).argmax(-1)
    correct = (pred == yi[torch.as_tensor(te)]).double().numpy()
    return correct, w_orig.float(), b_orig.float()


def _mean_difference(x: torch.Tensor, y: np.ndarray, tr: np.ndarray) -> torch.Tensor | None:
    classes = sorted(set(y.tolist()), key=repr)
    if len(classes) != 2:
        return None
    xt, yt = x[torch.as_tensor(tr)].double(), y[tr]
    d = xt[torch.as_tensor(yt == classes[1])].mean(0) - xt[torch.as_tensor(yt == classes[0])].mean(0)
    return (d / d.norm().clamp_min(1e-12)).float()


def _direction(w: torch.Tensor) -> torch.Tensor:
    d = w[:, 1] - w[:, 0] if w.shape[1] == 2 else torch.linalg.svd(w - w.mean(1, keepdim=True))[0][:, 0]
    return (d / d.norm().clamp_min(1e-12)).float()


def _mean_ci(values: np.ndarray, baseline: float, st: dict[str, Any], metric: str, what: dict[str, Any]) -> Effect:
    """Mean of per-test-example values with a seeded percentile bootstrap CI (accuracies are bounded) and a
    sign-flip p-value against ``baseline``."""
    rng = np.random.default_rng(st["seed"])
    n = values.size
    reps = values[rng.integers(0, n, size=(min(st["n_boot"], 4000), n))].mean(1)
    lo, hi = np.quantile(reps, [st["alpha"] / 2, 1 - st["alpha"] / 2])
    p = sign_flip_p(values - baseline, n_perm=st["n_perm"], seed=st["seed"])
    return Effect(mean=float(values.mean()), ci=(float(lo), float(hi)), n=int(n), p_value=p, values=values,
                  metric=metric, ci_method="bootstrap", details={"baseline": baseline}, **what)
