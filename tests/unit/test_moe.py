"""MoE experts and routing on tiny seeded Mixtral / Qwen2-MoE / OLMoE models (fused experts, router ``mlp.gate``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pytest_interp as pi
from pytest_interp import InterpError
from pytest_interp.engine.hooks import Route
from tests.helpers import tiny_model

MOE = ["mixtral", "qwen2_moe", "olmoe"]


@pytest.fixture(scope="module", params=MOE)
def moe(request):
    return request.param, pi.load(tiny_model(request.param))


def _direct_block(block, h, removed: int | None, renormalise: bool = True):
    """The MoE block's output computed from its weights, with expert ``removed`` dropped after top-k."""
    b, t, d = h.shape
    x = h.reshape(-1, d)
    gate, experts = block.gate, block.experts
    probs = torch.softmax(F.linear(x, gate.weight).float(), -1)
    w, idx = torch.topk(probs, gate.top_k, -1)
    if getattr(gate, "norm_topk_prob", True):
        w = w / w.sum(-1, keepdim=True)
    if removed is not None:
        keep = idx != removed
        kept = torch.where(keep, w, torch.zeros_like(w))
        w = kept * (w.sum(-1, keepdim=True) / kept.sum(-1, keepdim=True)) if renormalise else kept
    out = torch.zeros_like(x)
    inter = experts.down_proj.shape[-1]
    for slot in range(idx.shape[1]):
        for e in range(experts.gate_up_proj.shape[0]):
            rows = idx[:, slot] == e
            if not rows.any():
                continue
            gu = F.linear(x[rows], experts.gate_up_proj[e])
            y = F.linear(experts.act_fn(gu[:, :inter]) * gu[:, inter:], experts.down_proj[e])
            out[rows] += y * w[rows, slot, None].to(y.dtype)
    if hasattr(block, "shared_expert"):
        out = out + torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
    return out.reshape(b, t, d)


@pytest.mark.parametrize("renormalise", [True, False])
def test_expert_removal_equals_direct_computation_on_the_fused_experts(moe, tokens, renormalise):
    arch, subject = moe
    layer, e = 1, 2
    metric = pi.metrics.loss()
    how = pi.Remove() if renormalise else pi.Zero()
    eff = pi.ablate(subject, pi.expert(layer, e), inputs=tokens, metric=metric, how=how)
    block = subject.adapter.mlp(layer)

    def per_example_loss():
        with torch.no_grad():
            logits = subject.model(input_ids=tokens, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                               reduction="none").reshape(tokens.shape[0], -1).mean(1).double().numpy()

    clean = per_example_loss()
    block.forward = lambda hidden_states: _direct_block(block, hidden_states, e, renormalise)
    try:
        direct = per_example_loss()
    finally:
        del block.forward
    # loss is lower-is-better: the damage per example is ablated - clean
    np.testing.assert_allclose(eff.values, direct - clean, atol=1e-5, err_msg=arch)
    assert not np.allclose(direct, clean)
    assert eff.intervention.startswith("remove expert after top-k")


def test_direct_block_without_removal_matches_the_model(moe, tokens):
    _, subject = moe
    block = subject.adapter.mlp(0)
    seen = {}
    h = block.register_forward_hook(lambda m, a, o: seen.update(x=a[0], y=o))
    with torch.no_grad():
        subject.model(input_ids=tokens, use_cache=False)
    h.remove()
    torch.testing.assert_close(_direct_block(block, seen["x"], None), seen["y"], rtol=1e-5, atol=1e-5)


def _routes(subject, tokens, layer):
    log = pi.routing(subject, tokens, layers=[layer], record=False)
    probs = log.probs[layer]
    logits = probs.log()
    return Route(logits, log.weights[layer], log.index[layer], True), log


def test_reroute_changes_the_top_k_choices_only_of_tokens_that_picked_the_expert(moe, tokens):
    _, subject = moe
    route, log = _routes(subject, tokens, 1)
    e = 1
    new = pi.Reroute().apply(route, e)
    picked = (route.index == e).any(-1)
    assert picked.any() and (~picked).any()
    assert not (new.index == e).any()
    assert torch.equal(new.index[~picked], route.index[~picked])
    masked = log.probs[1].clone()
    masked[..., e] = -1
    expected = torch.topk(masked, route.index.shape[-1], -1).indices
    assert torch.equal(new.index[picked], expected[picked])
    changed = (new.index != route.index).any(-1)
    assert torch.equal(changed, picked)


def test_reroute_and_remove_are_different_interventions(moe, tokens):
    _, subject = moe
    metric = pi.metrics.loss()
    a = pi.ablate(subject, pi.expert(1, 1), inputs=tokens, metric=metric, how=pi.Reroute())
    b = pi.ablate(subject, pi.expert(1, 1), inputs=tokens, metric=metric)
    assert a.mean != b.mean and a.intervention != b.intervention


def test_force_puts_the_expert_first_at_the_chosen_positions_only(moe, tokens):
    _, subject = moe
    route, _ = _routes(subject, tokens, 0)
    new = pi.Force().apply(route, 3)
    assert bool((new.index[..., 0] == 3).all())
    assert bool((new.index[..., 1:] != 3).all())
    torch.testing.assert_close(new.weights.sum(-1), route.weights.sum(-1))
    eff_last = pi.ablate(subject, pi.expert(0, 3).at(-1), inputs=tokens, metric=pi.metrics.loss(), how=pi.Force())
    assert eff_last.mean == 0.0  # the loss never reads the prediction made at the last position
    eff_all = pi.ablate(subject, pi.expert(0, 3), inputs=tokens, metric=pi.metrics.loss(), how=pi.Force())
    assert eff_all.mean != 0.0


def test_expert_sweep_equals_single_ablations(moe, tokens):
    _, subject = moe
    metric = pi.metrics.loss()
    sites = [pi.expert(layer, e) for layer in range(2) for e in range(4)]
    result = pi.sweep(subject, sites, inputs=tokens, metric=metric)
    for site in sites:
        single = pi.ablate(subject, site, inputs=tokens, metric=metric)
        np.testing.assert_allclose(result[site].values, single.values, atol=1e-5)


def test_routing_log_frequencies(moe, tokens):
    _, subject = moe
    log = pi.routing(subject, tokens, record=False)
    assert log.layers == [0, 1]
    for layer in log.layers:
        freq = log.frequency(layer)
        assert freq.shape == (4,) and abs(freq.sum() - 2.0) < 1e-6  # top-2: each token counts twice
        last = torch.zeros(tokens.shape, dtype=torch.bool)
        last[:, -1] = True
        per = log.per_example(layer, 0, last)
        assert set(np.unique(per)) <= {0.0, 1.0}
    rows = log.table({"last": last})
    assert len(rows) == 8 and {"layer", "expert", "all", "last"} <= set(rows[0])


def test_routes_to_claim_is_decided_by_the_lower_bound(moe, claim_tokens):
    tokens = claim_tokens
    _, subject = moe
    log = pi.routing(subject, tokens, layers=[1], record=False)
    top = int(np.argmax(log.frequency(1)))
    eff = pi.assert_routes_to(subject, 1, top, inputs=tokens, at_least=0.2)
    assert eff.ci[0] >= 0.2
    with pytest.raises(pi.ClaimFailed, match="routing frequency is not necessity"):
        pi.assert_routes_to(subject, 1, top, inputs=tokens, at_least=0.99)


# bad input --------------------------------------------------------------------------------------------------

def test_expert_index_out_of_range(moe, tokens):
    _, subject = moe
    with pytest.raises(InterpError, match="expert 1.9 is out of range") as exc:
        pi.ablate(subject, pi.expert(1, 9), inputs=tokens, metric=pi.metrics.loss())
    assert "count experts from 0" in str(exc.value)
    with pytest.raises(InterpError, match="out of range"):
        pi.assert_expert_necessary(subject, 0, 4, inputs=tokens, metric=pi.metrics.loss(), at_least=0.1)


def test_moe_intervention_on_a_dense_model(tiny_llama, tokens):
    with pytest.raises(InterpError, match="has no MoE router"):
        pi.ablate(tiny_llama, pi.expert(0, 0), inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="has no MoE router"):
        pi.routing(tiny_llama, tokens)


def test_expert_interventions_only_on_expert_sites(moe, tiny_llama, tokens):
    _, subject = moe
    with pytest.raises(InterpError, match="applies to expert sites only"):
        pi.ablate(tiny_llama, pi.head(0, 0), inputs=tokens, metric=pi.metrics.loss(), how=pi.Reroute())
    with pytest.raises(InterpError, match="not defined on an expert"):
        pi.ablate(subject, pi.expert(0, 0), inputs=tokens, metric=pi.metrics.loss(), how=pi.Mean())
    with pytest.raises(InterpError, match="cannot be ablated"):
        pi.ablate(subject, pi.router(0), inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="expert and non-expert sites"):
        pi.ablate(subject, [pi.expert(0, 0), pi.head(0, 0)], inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="cannot be patched"):
        pi.patch(subject, pi.expert(0, 0), clean=tokens, corrupt=tokens.flip(0), metric=pi.metrics.logprob(3))
    with pytest.raises(InterpError, match="fraction of tokens"):
        pi.assert_routes_to(subject, 0, 0, inputs=tokens, at_least=1.5)
