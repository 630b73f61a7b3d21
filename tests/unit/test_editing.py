"""Rank-one knowledge editing (pi.edit, pi.editing, pi.assert_editable) and localisation vs editability."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from pytest_interp.experiments.editing import covariance, projection
from tests.helpers import tiny_model


def _sample():
    return torch.randint(1, 48, (64, 16), generator=torch.Generator().manual_seed(5))


def _prompts():
    return torch.randint(1, 48, (3, 10), generator=torch.Generator().manual_seed(6))


def _new_answer(subject, prompts):
    lg = subject.model(input_ids=prompts).logits[:, -1]
    taken = set(lg.argmax(-1).tolist())
    return next(i for i in range(1, 48) if i not in taken)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_edit_is_the_rank_one_update_recomputed_by_hand(arch):
    subject = pi.load(tiny_model(arch))
    site = pi.mlp(1).at(pi.last)
    prompts = _prompts()
    before_fp = subject.fingerprint
    proj, kind = projection(subject, site)
    w0 = proj.weight.detach().clone().double()
    new = _new_answer(subject, prompts)
    edited = pi.edit(subject, site, prompts=prompts, new_answer=new, sample=_sample())
    rec = edited.edit
    # by hand: C from the projection's inputs over the sample, k* the mean input at the prompts' last tokens
    keys = []
    h = proj.register_forward_pre_hook(lambda m, a: keys.append(a[0].detach().double()))
    with torch.no_grad():
        subject.model(input_ids=_sample())
        subject.model(input_ids=prompts)
    h.remove()
    ks = keys[0].reshape(-1, keys[0].shape[-1])
    c = ks.T @ ks / ks.shape[0]
    c = c + 1e-3 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
    k_star = keys[1][:, -1].mean(0)
    assert torch.allclose(rec.key, k_star, atol=1e-6)
    assert torch.allclose(covariance(subject, site, _sample()), c, rtol=1e-6, atol=1e-9)
    b = proj.bias.detach().double() if proj.bias is not None else 0.0
    now = (w0 @ k_star if kind == "linear" else k_star @ w0) + b
    u = torch.linalg.solve(c, k_star)
    u = u / (u @ k_star)
    r = rec.value - now
    want = w0 + (torch.outer(r, u) if kind == "linear" else torch.outer(u, r))
    got = projection(edited, site)[0].weight.detach().double()
    assert torch.allclose(got, want.to(got.dtype).double(), atol=1e-5)
    assert torch.linalg.matrix_rank(got - w0, atol=1e-5) == 1
    out = (got @ k_star if kind == "linear" else k_star @ got) + b
    assert torch.allclose(out, rec.value, atol=1e-3)  # W' k* + b = v*
    # the original model is untouched: weights and fingerprint
    assert torch.equal(proj.weight.detach().double(), w0) and subject.fingerprint == before_fp
    assert edited.fingerprint != before_fp and edited.model is not subject.model
    # and an edit of one prompt does what it was fitted for: the prompt now answers the new token
    one = pi.edit(subject, site, prompts=prompts[:1], new_answer=_new_answer(subject, prompts[:1]), sample=_sample())
    assert int(one.model(input_ids=prompts[:1]).logits[0, -1].argmax()) == one.edit.new_answer


def test_an_edit_at_the_subjects_last_token_reads_that_token(tiny_gpt2):
    prompts = _prompts()
    edited = pi.edit(tiny_gpt2, pi.mlp(0), prompts=prompts, subject_tokens=[[3, 4]] * 3, sample=_sample(),
                     new_answer=_new_answer(tiny_gpt2, prompts))
    proj, _ = projection(tiny_gpt2, pi.mlp(0))
    keys = []
    h = proj.register_forward_pre_hook(lambda m, a: keys.append(a[0].detach().double()))
    with torch.no_grad():
        tiny_gpt2.model(input_ids=prompts)
    h.remove()
    assert torch.allclose(edited.edit.key, keys[0][:, 4].mean(0), atol=1e-6)  # position 4: the subject's last


def test_bad_edits_are_refused(tiny_gpt2):
    prompts = _prompts()
    new = _new_answer(tiny_gpt2, prompts)
    with pytest.raises(pi.InterpError, match="needs an MLP site"):
        pi.edit(tiny_gpt2, pi.attn(0), prompts=prompts, new_answer=new, sample=_sample())
    current = int(tiny_gpt2.model(input_ids=prompts[:1]).logits[0, -1].argmax())
    with pytest.raises(pi.InterpError, match="already answers"):
        pi.edit(tiny_gpt2, pi.mlp(0).at(pi.last), prompts=prompts[:1], new_answer=current, sample=_sample())
    with pytest.raises(pi.InterpError, match="one token"):
        pi.edit(tiny_gpt2, pi.mlp(0).at(pi.last), prompts=prompts, new_answer=[new, new], sample=_sample())
    with pytest.raises(pi.InterpError, match="where to edit"):
        pi.edit(tiny_gpt2, pi.mlp(0), prompts=prompts, new_answer=new, sample=_sample())
    moe = pi.load(tiny_model("mixtral"))
    with pytest.raises(pi.InterpError, match="mixture-of-experts"):
        pi.edit(moe, pi.mlp(0).at(pi.last), prompts=prompts, new_answer=new, sample=_sample())
    with pytest.raises(pi.InterpError, match="is a rate"):
        pi.assert_editable(tiny_gpt2, pi.mlp(0).at(pi.last), [], sample=_sample(), efficacy=1.5, specificity=0.5)
    with pytest.raises(pi.InterpError, match="no facts"):
        pi.editing(tiny_gpt2, pi.mlp(0).at(pi.last), [], sample=_sample())
