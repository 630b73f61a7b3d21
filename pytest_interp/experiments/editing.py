"""Rank-one knowledge editing (ROME, Meng et al. 2022) and whether localisation predicts where a fact can be
edited (Hase et al. 2023).

An edit at ``pi.mlp(l)`` changes the MLP's output projection ``W`` (GPT-2 ``c_proj``, Llama ``down_proj``, BERT
``output.dense``) of an edited COPY of the subject; the original and its fingerprint are never touched:

* the key ``k*``: the projection's input at the edit position (the subject's last token, or the site's own
  position, e.g. ``pi.mlp(0).at(pi.last)``), averaged over the edit prompts;
* the value ``v*``: the projection's output there plus one vector ``delta`` fitted by Adam so that every edit
  prompt predicts the new answer (``-log p(new)`` plus ``weight_decay * |delta| / |v|``, the size of the change
  relative to the output it changes);
* the covariance ``C = E[k k^T]`` of the projection's inputs over every real token of a stated ``sample`` of the
  model's own inputs, plus ``ridge * mean(diag C) * I``, kept in the run cache;
* the update ``W' k = W k + r * (C^-1 k*)^T k / (k*^T C^-1 k*)`` with ``r = v* - W k* - b``: ``W' k* + b = v*``
  exactly, and keys uncorrelated with ``k*`` under ``C`` are left alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.cache import current as current_cache
from ..core.cache import tensor_digest
from ..core.batch import real
from ..core.errors import InterpError
from ..core.sites import Site
from ..core.stats import Effect, wilson_interval
from ..engine.runner import fit_delta, logits, module_inputs
from ..model.checks import as_subject, check_site, one_stack
from ..model.subject import Subject
from .common import stat_args
from .tracing import subject_mask


def projection(subject: Subject, site: Site) -> tuple[Any, str]:
    """The MLP output projection of ``site``'s layer and its kind (``"linear"``: y = x W^T + b, or ``"conv1d"``:
    y = x W + b, GPT-2); an InterpError for a site that is not a dense MLP."""
    if site.kind != "mlp":
        raise InterpError(f"a rank-one edit needs an MLP site, not {site}", expected="pi.mlp(layer), optionally "
                          ".at(position)", seen=str(site), fix="edit the MLP whose output projection stores the fact")
    if subject.n_experts:
        raise InterpError(f"{site} is a mixture-of-experts block", expected="a dense MLP with one output projection",
                          seen=f"{subject.n_experts} experts", fix="edit a dense model's MLP (ROME edits one matrix)")
    mlp = subject.adapter.mlp(site.layer)
    cands = [mlp] if _kind(mlp) else [m for n, m in mlp.named_children()
                                      if n in ("c_proj", "down_proj", "fc2", "dense_4h_to_h", "w2", "fc_out")]
    found = [(m, _kind(m)) for m in cands if _kind(m)]
    if len(found) != 1:
        raise InterpError(f"no single output projection in the MLP of layer {site.layer}",
                          expected="one of c_proj, down_proj, fc2, dense_4h_to_h, w2 (a Linear or Conv1D)",
                          seen=", ".join(n for n, _ in mlp.named_children()) or type(mlp).__name__,
                          fix="register an adapter whose mlp= is the output projection")
    return found[0][0], str(found[0][1])


def _kind(m: Any) -> str | None:
    if isinstance(m, torch.nn.Linear):
        return "linear"
    if type(m).__name__ == "Conv1D" and hasattr(m, "weight") and m.weight.dim() == 2:
        return "conv1d"
    return None


def covariance(subject: Subject, site: Site, sample: Any, *, ridge: float = 1e-3) -> torch.Tensor:
    """``E[k k^T] + ridge * mean(diag) * I`` of the MLP output projection's inputs over the real tokens of
    ``sample`` (float64; cached across sessions in the run cache)."""
    proj, _ = projection(subject, site)
    tokens = subject.tokens(sample, name="covariance sample")
    d = _in_dim(proj)

    def parts() -> dict[str, Any]:
        return {"kind": "edit-covariance", "model": subject.fingerprint, "layer": site.layer,
                "sample": tensor_digest(tokens), "ridge": ridge, "dtype": subject.dtype_key}

    memo_key = repr(sorted(parts().items()))
    if memo_key in _COVARIANCES:
        return _COVARIANCES[memo_key]

    def compute() -> torch.Tensor:
        keys = module_inputs(subject, tokens, proj).double()[real(tokens).to(tokens.device)]
        if keys.shape[0] < 2:
            raise InterpError("the covariance sample has too few tokens", expected="many real tokens (hundreds)",
                              seen=f"{keys.shape[0]}", fix="pass a larger sample of the model's inputs")
        c = keys.T @ keys / keys.shape[0]
        return c + ridge * float(c.diagonal().mean()) * torch.eye(d, dtype=c.dtype, device=c.device)
    c = current_cache().scores(parts, compute, rows=d).double()
    if len(_COVARIANCES) >= 16:
        _COVARIANCES.pop(next(iter(_COVARIANCES)))
    _COVARIANCES[memo_key] = c
    return c


_COVARIANCES: dict[str, torch.Tensor] = {}  # this process's covariances (the run cache keeps them across sessions)


def _in_dim(proj: Any) -> int:
    return int(proj.weight.shape[1] if _kind(proj) == "linear" else proj.weight.shape[0])


def _out_dim(proj: Any) -> int:
    return int(proj.weight.shape[0] if _kind(proj) == "linear" else proj.weight.shape[1])


def _positions(subject: Subject, site: Site, tokens: torch.Tensor, subject_tokens: Any) -> torch.Tensor:
    """Bool ``[batch, seq]``: one edit position per prompt (the site's position, else the subject's last token)."""
    n, t = tokens.shape
    if site.positions is None:
        if subject_tokens is None:
            raise InterpError("where to edit: the site has no position and no subject_tokens were given",
                              expected="subject_tokens= (the edit reads the subject's last token) or a site "
                                       "position such as pi.mlp(l).at(pi.last)", seen="neither",
                              fix="pass subject_tokens='the subject as written in the prompts'")
        m = subject_mask(subject, tokens, subject_tokens)
        last = torch.zeros_like(m)
        idx = m.long().cumsum(1).argmax(1)  # the last True of each row
        last[torch.arange(n), idx] = True
        return last
    pos = site.positions
    if isinstance(pos, bool) or not isinstance(pos, int):
        raise InterpError(f"an edit reads one position per prompt, not {pos!r}", expected="one int position "
                          "(e.g. pi.last)", seen=repr(pos), fix="use pi.mlp(l).at(pi.last) or subject_tokens=")
    lens = real(tokens).sum(1)
    at = lens + pos if pos < 0 else torch.full_like(lens, pos)
    if bool(((at < 0) | (at >= lens)).any()):
        raise InterpError(f"position {pos} is outside a prompt", expected="a position every prompt has",
                          seen=f"prompt lengths {sorted(set(lens.tolist()))}", fix="use pi.last")
    out = torch.zeros(n, t, dtype=torch.bool)
    out[torch.arange(n), at.cpu()] = True
    return out.to(tokens.device)


@dataclass
class EditRecord:
    """What one edit did: ``key`` k*, ``value`` v*, ``before`` (W k* + b), ``direction`` C^-1 k*, the fitted
    ``delta`` and its losses, the new answer's id and the answers the prompts gave before."""

    site: Site
    key: torch.Tensor
    value: torch.Tensor
    before: torch.Tensor
    direction: torch.Tensor
    delta: torch.Tensor
    losses: list[float]
    new_answer: int
    old_answers: list[int]
    kind: str
    details: dict[str, Any] = field(default_factory=dict)


def edit(subject: Subject, site: Site, *, prompts: Any, new_answer: Any, sample: Any,
         subject_tokens: Any = None, steps: int = 40, lr: float = 0.5, weight_decay: float = 0.01,
         ridge: float = 1e-3, stop_below: float = 0.05) -> Subject:
    """A rank-one edit of the MLP at ``site`` so that ``prompts`` (about one subject) predict ``new_answer``
    (one token) at their last position. Returns an edited COPY (``copy.edit`` holds its :class:`EditRecord`); the
    original model, its weights and its fingerprint are unchanged. See the module docstring for the method.

    Args:
        site: ``pi.mlp(layer)`` (the edit reads the subject's last token: pass ``subject_tokens``) or
            ``pi.mlp(layer).at(position)``.
        prompts: the edit prompts (strings or token ids), each ending where the answer comes next.
        new_answer: the new answer, one token (a string or an id).
        sample: the model's own inputs whose MLP keys give the covariance (hundreds of tokens or more).
        steps, lr, weight_decay, stop_below: the fit of ``delta`` (Adam; it stops once the loss is below
            ``stop_below``, which includes the weight decay term).
        ridge: added to the covariance's diagonal, times its mean diagonal.
    """
    subject = as_subject(subject)
    one_stack(subject, "rank-one editing")
    tokens = subject.tokens(prompts, name="edit prompts")
    check_site(subject, site, tokens)
    proj, kind = projection(subject, site)
    new_ids = subject.token_ids(new_answer, name="new_answer").reshape(-1)
    if new_ids.numel() != 1:
        raise InterpError("the new answer must be one token", expected="a single-token string or one id",
                          seen=f"{new_ids.numel()} tokens", fix="edit towards a one-token answer")
    new_id = int(new_ids[0])
    lens = real(tokens).sum(1)
    rows = torch.arange(tokens.shape[0])
    before_logits = logits(subject, tokens, what="edit prompts")
    old = before_logits[rows, (lens - 1).to(before_logits.device)].argmax(-1).tolist()
    if any(o == new_id for o in old):
        raise InterpError("the new answer is what the model already answers", expected="a new answer that differs "
                          "from the current one", seen=f"new answer id {new_id} == the current argmax of "
                          f"{sum(o == new_id for o in old)} prompt(s)", fix="choose another answer")
    where = _positions(subject, site, tokens, subject_tokens)
    keys = module_inputs(subject, tokens, proj).double()
    k_star = keys[where.to(keys.device)].mean(0)
    w, b = proj.weight.detach().double(), proj.bias.detach().double() if proj.bias is not None else None
    before = (w @ k_star if kind == "linear" else k_star @ w) + (b if b is not None else 0.0)
    target = torch.full((tokens.shape[0],), new_id, device=tokens.device)
    scale = float(before.norm()) or 1.0

    def objective(lg: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        last = lg[rows.to(lg.device), (lens - 1).to(lg.device)].float()
        nll = -torch.log_softmax(last, -1).gather(-1, target[:, None].to(lg.device))[:, 0].mean()
        return nll + weight_decay * delta.float().norm() / scale
    delta, losses = fit_delta(subject, tokens, subject.adapter.mlp(site.layer), where, objective, _out_dim(proj),
                              steps=steps, lr=lr, stop_below=stop_below)
    value = before + delta.double()
    c = covariance(subject, site, sample, ridge=ridge).to(k_star.device)
    direction = torch.linalg.solve(c, k_star)
    out = as_subject(_copy_with_update(subject, site, proj, kind, k_star, value - before, direction))
    out.edit = EditRecord(site, k_star, value, before, direction, delta, losses, new_id, old, kind)  # type: ignore[attr-defined]
    return out


def _copy_with_update(subject: Subject, site: Site, proj: Any, kind: str, k_star: torch.Tensor, r: torch.Tensor,
                      direction: torch.Tensor) -> Subject:
    """A new Subject on a deep copy of the model whose projection weight has the rank-one update."""
    from ..model.subject import load

    model = copy.deepcopy(subject.model)
    u = direction / float(direction @ k_star)
    target = _same_module(subject.model, model, proj)
    with torch.no_grad():
        upd = torch.outer(r, u) if kind == "linear" else torch.outer(u, r)
        target.weight += upd.to(target.weight.dtype).to(target.weight.device)
    return load(model, tokenizer=subject.tokenizer)


def _same_module(original: Any, clone: Any, module: Any) -> Any:
    for (n1, m1), (_, m2) in zip(original.named_modules(), clone.named_modules()):
        if m1 is module:
            return m2
    raise InterpError("the edited module was not found in the model's copy", expected="a module of the model",
                      seen=type(module).__name__, fix="report this model's architecture")


# ----------------------------------------------------------------------------------------------------------------
# measuring edits: efficacy, generalisation, specificity
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Fact:
    """One edit request: ``prompts`` about ``subject`` should answer ``new_answer`` after the edit;
    ``paraphrases`` (other prompts about the same fact) should follow; ``neighbours`` ((prompt, answer) pairs
    about other facts) should not change."""

    prompts: list[str]
    subject: str
    new_answer: str
    paraphrases: list[str] = field(default_factory=list)
    neighbours: list[tuple[str, str]] = field(default_factory=list)


def _answers(subject: Subject, prompts: list[str]) -> list[int]:
    tokens = subject.tokens(prompts, name="prompts")
    lens = real(tokens).sum(1)
    lg = logits(subject, tokens, what="edit evaluation")
    return lg[torch.arange(len(prompts), device=lg.device), (lens - 1).to(lg.device)].argmax(-1).tolist()


@dataclass
class Editing:
    """Per-fact edit outcomes at one site: ``efficacy`` (the share of a fact's prompts whose argmax is now the
    new answer), ``generalisation`` (the same on its paraphrases; None without any), ``specificity`` (the share
    of its neighbours whose argmax is unchanged), each an Effect over facts with a Wilson interval."""

    site: Site
    efficacy: Effect
    specificity: Effect
    generalisation: Effect | None
    records: list[EditRecord] = field(repr=False, default_factory=list)


def rate_p_value(values: np.ndarray, bound: float) -> float:
    """One-sided p-value of H0: rate <= ``bound``, by the score test whose inversion is the Wilson interval."""
    from statistics import NormalDist

    v = np.asarray(values, dtype=float)
    b = min(max(bound, 1e-9), 1 - 1e-9)
    z = (float(v.mean()) - b) / np.sqrt(b * (1 - b) / v.size)
    return float(1 - NormalDist().cdf(z))


def _rate(values: list[float], what: str, site: Site, st: dict[str, Any], model: dict[str, Any],
          bound: float = 0.5) -> Effect:
    """A rate over facts with its Wilson interval; p-value: the score test of rate <= ``bound``."""
    v = np.asarray(values, dtype=float)
    ci = wilson_interval(v, st["alpha"])
    return Effect(mean=float(v.mean()), ci=ci, n=int(v.size), p_value=rate_p_value(v, bound), values=v,
                  sites=(site,), method="edit", intervention="rank-one edit (ROME)", metric=what,
                  higher_is_better=True, seed=st["seed"], alpha=st["alpha"], n_boot=0, model=model,
                  ci_method="Wilson score interval over facts")


def editing(subject: Subject, site: Site, facts: list[Fact], *, sample: Any, alpha: float | None = None,
            seed: int | None = None, **kwargs: Any) -> Editing:
    """Edit each fact in its own copy of ``subject`` at ``site`` and measure efficacy, generalisation and
    specificity over the facts (``kwargs`` go to :func:`edit`)."""
    subject = as_subject(subject)
    one_stack(subject, "rank-one editing")
    st = stat_args(alpha, seed)
    if not facts:
        raise InterpError("no facts to edit", expected="a list of pi.Fact", seen="[]", fix="pass facts=[...]")
    eff, gen, spec, recs = [], [], [], []
    for f in facts:
        if not f.neighbours:
            raise InterpError("a fact without neighbours cannot show specificity", expected="neighbours=[(prompt, "
                              "answer), ...] about other facts", seen=f"fact about {f.subject!r}",
                              fix="add prompts whose answers the edit must not change")
        before = _answers(subject, [p for p, _ in f.neighbours])
        edited = edit(subject, site, prompts=f.prompts, new_answer=f.new_answer, sample=sample,
                      subject_tokens=f.subject, **kwargs)
        rec = edited.edit  # type: ignore[attr-defined]
        recs.append(rec)
        eff.append(float(np.mean([a == rec.new_answer for a in _answers(edited, f.prompts)])))
        if f.paraphrases:
            gen.append(float(np.mean([a == rec.new_answer for a in _answers(edited, f.paraphrases)])))
        after = _answers(edited, [p for p, _ in f.neighbours])
        spec.append(float(np.mean([a == b for a, b in zip(after, before)])))
    if gen and len(gen) != len(facts):
        raise InterpError("some facts have paraphrases and some do not", expected="paraphrases for every fact or "
                          "none", seen=f"{len(gen)} of {len(facts)}", fix="give every fact its paraphrases")
    model = subject.identity()
    return Editing(site, _rate(eff, "efficacy (new answer is the argmax)", site, st, model),
                   _rate(spec, "specificity (neighbours unchanged)", site, st, model),
                   _rate(gen, "generalisation (paraphrases give the new answer)", site, st, model) if gen else None,
                   recs)


# ----------------------------------------------------------------------------------------------------------------
# does localisation predict editability? (Hase et al. 2023)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Localisation:
    """Per layer: the causal-tracing effect of the MLP at the edit position (``tracing[l]``, restored fraction of
    the answer-probability gap) and the success of a rank-one edit there (``rewrite[l]``: per fact
    ``(p_new_after - p_new_before) / (1 - p_new_before)``; ``efficacy[l]``: the new answer is the argmax).
    ``rho``: per fact, the Spearman correlation over layers of its tracing effect and its rewrite score (a
    constant profile counts 0), averaged over facts with a bootstrap-t CI: does the layer where tracing finds the
    fact coincide with the layer where it is best edited?"""

    layers: list[int]
    position: str
    tracing: dict[int, Effect]
    rewrite: dict[int, Effect]
    efficacy: dict[int, Effect]
    rho: Effect

    def table(self) -> str:
        rows = [f"{'layer':>5}  {'tracing':>22}  {'rewrite score':>22}  {'efficacy':>22}"]
        for l in self.layers:
            t, r, e = self.tracing[l], self.rewrite[l], self.efficacy[l]
            rows.append(f"{l:>5}  {t.mean:>7.3f} [{t.ci[0]:.3f}, {t.ci[1]:.3f}]  {r.mean:>7.3f} [{r.ci[0]:.3f}, "
                        f"{r.ci[1]:.3f}]  {e.mean:>7.3f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}]")
        rows.append(f"per-fact Spearman over layers (tracing, rewrite): {self.rho.mean:.3f} "
                    f"[{self.rho.ci[0]:.3f}, {self.rho.ci[1]:.3f}]")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"<Localisation {self.position}: rho {self.rho.mean:.3f} [{self.rho.ci[0]:.3f}, {self.rho.ci[1]:.3f}]>"


def _p_answer(subject: Subject, prompts: list[str], answer: int) -> float:
    tokens = subject.tokens(prompts, name="prompts")
    lens = real(tokens).sum(1)
    lg = logits(subject, tokens, what="edit evaluation")
    last = lg[torch.arange(len(prompts), device=lg.device), (lens - 1).to(lg.device)].float()
    return float(torch.softmax(last, -1)[:, answer].mean())


def localisation_vs_editing(subject: Subject, facts: list[Fact], *, answers: list[str], sample: Any,
                            layers: list[int] | None = None, position: int | None = None, noise: float = 3.0,
                            samples: int = 5, alpha: float | None = None, seed: int | None = None,
                            **kwargs: Any) -> Localisation:
    """For each layer: trace the MLP at the edit position (the subject's last token, or ``position`` such as
    ``pi.last``) and edit each fact there; ``answers``: each fact's current answer (what tracing restores).
    The rewrite scores' intervals are Student t (descriptive: they decide no claim); ``rho`` decides
    :func:`~pytest_interp.assert_localisation_predicts_editing`."""
    from ..core.sites import mlp
    from ..core.stats import mean_effect
    from .stability import spearman
    from .tracing import restore

    subject = as_subject(subject)
    one_stack(subject, "rank-one editing")
    st = stat_args(alpha, seed)
    memo = repr((subject.fingerprint, [(f.prompts, f.subject, f.new_answer) for f in facts], answers,
                 tensor_digest(subject.tokens(sample, name="covariance sample")), layers, position, noise, samples,
                 sorted(st.items()), sorted(kwargs.items())))
    if memo in _LOCALISATIONS:
        return _LOCALISATIONS[memo]
    if len(answers) != len(facts):
        raise InterpError("one current answer per fact is needed", expected=f"{len(facts)} answers",
                          seen=str(len(answers)), fix="pass answers=[each fact's answer before the edit]")
    layers_l = list(range(subject.n_layers)) if layers is None else list(layers)
    prompts = [f.prompts[0] for f in facts]
    tracing, rewrite, efficacy, per_fact_t, per_fact_r = {}, {}, {}, [], []
    model = subject.identity()
    for layer in layers_l:
        site = mlp(layer) if position is None else mlp(layer).at(position)
        t = restore(subject, site, prompts=prompts, subject_tokens=[f.subject for f in facts], answer=answers,
                    noise=noise, samples=samples, alpha=st["alpha"], seed=st["seed"])
        scores, wins = [], []
        for f in facts:
            new_id = int(subject.token_ids(f.new_answer, name="new_answer").reshape(-1)[0])
            before = _p_answer(subject, f.prompts, new_id)
            edited = edit(subject, site, prompts=f.prompts, new_answer=f.new_answer, sample=sample,
                          subject_tokens=f.subject, **kwargs)
            after = _p_answer(edited, f.prompts, new_id)
            scores.append((after - before) / max(1e-12, 1 - before))
            wins.append(float(np.mean([a == new_id for a in _answers(edited, f.prompts)])))
        tracing[layer] = t
        rewrite[layer] = mean_effect(np.asarray(scores), method="edit", metric="rewrite score", sites=(site,),
                                     intervention="rank-one edit (ROME)", model=model, estimate=True, **st)
        efficacy[layer] = _rate(wins, "efficacy (new answer is the argmax)", site, st, model)
        per_fact_t.append(np.asarray(t.values, dtype=float))
        per_fact_r.append(np.asarray(scores))
    tr, rw = np.stack(per_fact_t, 1), np.stack(per_fact_r, 1)  # [facts, layers]
    if len(layers_l) < 3:
        raise InterpError("ranking layers needs at least three of them", expected=">= 3 layers",
                          seen=str(layers_l), fix="trace and edit more layers")
    rhos = [spearman(tr[i], rw[i]) for i in range(len(facts))]
    flat = sum(r is None for r in rhos)
    where = "subject's last token" if position is None else f"position {position}"
    rho = mean_effect(np.array([0.0 if r is None else r for r in rhos]), method="localisation vs editing",
                      metric="Spearman over layers(tracing effect, rewrite score)", sites=tuple(mlp(l) for l in layers_l),
                      intervention="causal tracing; rank-one edit (ROME)", model=model,
                      details={"layers": len(layers_l), "position": where, "constant_profiles": flat}, **st)
    out = Localisation(layers_l, where, tracing, rewrite, efficacy, rho)
    if len(_LOCALISATIONS) >= 8:
        _LOCALISATIONS.pop(next(iter(_LOCALISATIONS)))
    _LOCALISATIONS[memo] = out
    return out


_LOCALISATIONS: dict[str, Localisation] = {}  # this process's results: a claim and its counterpart share one
