"""Circuits: path patching against a hand computation of the receiver's q/k/v, attention blocking against a hand
computation of the edited head, causal scrubbing, and the claims on the induction fixture (hold and fail)."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from pytest_interp.core.errors import ClaimFailed, InterpError


def _ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per example: mean next-token cross-entropy (pi.metrics.loss on an unpadded batch)."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -lp.gather(-1, tokens[:, 1:, None])[..., 0].mean(-1)


def _sharpened(arch: str):
    """A tiny seeded model whose block weights are scaled up 8x, so that one path moves the loss by 1e-3
    rather than 1e-5 (the float32 noise of the comparison is ~1e-6)."""
    from tests.helpers import tiny_model

    model = tiny_model(arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not any(k in name for k in ("embed", "wte", "wpe", "lm_head")):
                p.mul_(8.0)
    return model


def _parts(model):
    if hasattr(model, "transformer"):
        return model.transformer.h, "gpt2"
    return model.model.layers, "llama"


def _hand_path(model, tokens, sender: int, layer: int, h: int, via: str) -> torch.Tensor:
    """Zero-ablation of head 0.``sender`` along the path into head ``layer``.``h``'s ``via`` input, by hand:
    the projection's output columns for the receiver recomputed from norm(resid + delta), the receiver head's
    output taken from that pass, every other head's from the clean pass."""
    blocks, arch = _parts(model)
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d = cfg.hidden_size
    dh = d // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", n_heads)
    out_proj = (lambda b: b.attn.c_proj) if arch == "gpt2" else (lambda b: b.self_attn.o_proj)
    norm = (lambda b: b.ln_1) if arch == "gpt2" else (lambda b: b.input_layernorm)
    seen: dict[str, torch.Tensor] = {}
    hs = [out_proj(blocks[0]).register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].clone())),
          norm(blocks[layer]).register_forward_pre_hook(lambda m, a: seen.__setitem__("resid", a[0].clone()))]
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
        for x in hs:
            x.remove()
        z = torch.zeros_like(seen["z"])
        z[..., sender * dh:(sender + 1) * dh] = seen["z"][..., sender * dh:(sender + 1) * dh]
        proj0 = out_proj(blocks[0])
        delta = -(proj0(z) - proj0(torch.zeros_like(z)))
        x_new = norm(blocks[layer])(seen["resid"] + delta)
        if arch == "gpt2":
            proj = blocks[layer].attn.c_attn
            start = {"q": 0, "k": d, "v": 2 * d}[via] + h * dh
        else:
            proj = getattr(blocks[layer].self_attn, f"{via}_proj")
            start = (h if via == "q" else h // (n_heads // n_kv)) * dh
        cols = slice(start, start + dh)
        new_cols = proj(x_new)[..., cols]

        def replace(m, a, out):
            out = out.clone()
            out[..., cols] = new_cols
            return out

        hd = [proj.register_forward_hook(replace),
              out_proj(blocks[layer]).register_forward_pre_hook(lambda m, a: seen.__setitem__("z2", a[0].clone()))]
        model(input_ids=tokens, use_cache=False)
        for x in hd:
            x.remove()

        def head_only(m, a):
            zz = a[0].clone()
            zz[..., h * dh:(h + 1) * dh] = seen["z2"][..., h * dh:(h + 1) * dh]
            return (zz,)

        hk = out_proj(blocks[layer]).register_forward_pre_hook(head_only)
        logits = model(input_ids=tokens, use_cache=False).logits
        hk.remove()
    return logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("via", ["q", "k", "v"])
def test_path_ablation_matches_a_hand_computation_of_the_receivers_input(arch, via, claim_tokens):
    model = _sharpened(arch)
    subject = pi.load(model)
    eff = pi.ablate_path(subject, pi.path(pi.head(0, 1), pi.head(1, 2), via=via), inputs=claim_tokens,
                         metric=pi.metrics.loss(), how=pi.Zero())
    with torch.no_grad():
        clean = _ce(model(input_ids=claim_tokens, use_cache=False).logits, claim_tokens)
    hand = _ce(_hand_path(model, claim_tokens, 1, 1, 2, via), claim_tokens)
    assert torch.allclose(torch.as_tensor(eff.values), hand - clean, atol=1e-5)
    assert float((hand - clean).abs().max()) > 5e-4  # the path does something on this model: the test can fail


def test_a_path_whose_sender_is_replaced_by_itself_reproduces_the_clean_run_exactly(induction):
    tokens = pi.repeated_tokens(induction, n=16, seed=3).tokens
    for receiver, via in ((pi.head(1, 0), "q"), (pi.head(1, 0), "k"), (pi.head(1, 1), "v"), (pi.mlp(1), None),
                          ("logits", None), (pi.mlp(0), None)):
        eff = pi.patch_path(induction, pi.path(pi.head(0, 0), receiver, via=via), clean=tokens, corrupt=tokens,
                            metric=pi.metrics.loss())
        assert float(abs(eff.values).max()) == 0.0, (receiver, via)


def test_an_attention_edit_that_changes_nothing_is_bit_for_bit_the_eager_pass(tiny_llama, tokens):
    from pytest_interp.engine.runner import attention_edits
    from pytest_interp.engine.runner import logits

    before = logits(tiny_llama, tokens, what="clean")
    module = tiny_llama.adapter.attention(1)
    calls = []

    def passthrough(base, mod, q, k, v, mask, **kw):
        calls.append(1)
        return base(mod, q, k, v, mask, **kw)

    with attention_edits(tiny_llama, {module: passthrough}):
        during = logits(tiny_llama, tokens, what="edited")
    assert calls and torch.equal(before, during)
    assert tiny_llama.model.config._attn_implementation == "eager"  # restored


def test_the_attention_implementation_is_restored_when_a_pass_fails(tiny_llama, tokens):
    from pytest_interp.engine.runner import attention_edits
    from pytest_interp.engine.runner import logits

    def boom(base, mod, q, k, v, mask, **kw):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with attention_edits(tiny_llama, {tiny_llama.adapter.attention(0): boom}):
            logits(tiny_llama, tokens, what="edited")
    assert tiny_llama.model.config._attn_implementation == "eager"
    logits(tiny_llama, tokens, what="clean")  # and the model still runs


def test_a_key_path_under_grouped_query_attention_changes_only_the_receiver_head(tiny_llama, claim_tokens):
    """Heads 1.2 and 1.3 share a key/value head: a path into 1.2's keys leaves 1.3's output as it is."""
    from pytest_interp.engine.hooks import Edit, hooks
    from pytest_interp.engine.paths import install_path
    from pytest_interp.engine.runner import attention_edits
    from pytest_interp.engine.runner import forward

    p = pi.path(pi.head(0, 1), pi.head(1, 2), via="k")
    edit = Edit(p.sender, lambda act, rows: torch.zeros_like(act))
    rows = torch.arange(claim_tokens.shape[0])
    seen = {}
    o_proj = tiny_llama.adapter.attn_out(1)
    grab = o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].clone()))
    with hooks([grab]):
        forward(tiny_llama, claim_tokens)
        clean = seen["z"]
        handles, edits, state = install_path(tiny_llama, p, edit, rows, len(rows))
        with hooks(handles), attention_edits(tiny_llama, edits):
            forward(tiny_llama, claim_tokens)
    z = seen["z"]
    dh = tiny_llama.adapter.head_dim
    assert state.used == 1
    assert not torch.equal(z[..., 2 * dh:3 * dh], clean[..., 2 * dh:3 * dh])
    for other in (0, 1, 3):
        assert torch.equal(z[..., other * dh:(other + 1) * dh], clean[..., other * dh:(other + 1) * dh])


def _hand_block(model, tokens, layer: int, h: int, pairs: torch.Tensor, pattern: torch.Tensor | None = None):
    """Head ``layer``.``h`` of a Llama with its attention to ``pairs`` removed (or replaced by ``pattern``),
    computed by hand from its q/k/v."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = model.model.layers[layer].self_attn
    cfg = model.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    seen = {}
    hk = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
        hk.remove()
        x = seen["hidden_states"]
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, -1, dh).transpose(1, 2)[:, h:h + 1]
        k = attn.k_proj(x).view(b, t, -1, dh).transpose(1, 2)[:, h // groups:h // groups + 1]
        v = attn.v_proj(x).view(b, t, -1, dh).transpose(1, 2)[:, h // groups:h // groups + 1]
        cos, sin = seen["position_embeddings"]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = (q @ k.transpose(-1, -2))[:, 0] / dh ** 0.5
        allowed = torch.ones(t, t, dtype=torch.bool).tril() & ~pairs
        w = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) if pattern is None else pattern
        z = w @ v[:, 0]

        def put(m, a):
            zz = a[0].clone()
            zz[..., h * dh:(h + 1) * dh] = z
            return (zz,)

        hp = attn.o_proj.register_forward_pre_hook(put)
        logits = model(input_ids=tokens, use_cache=False).logits
        hp.remove()
    return logits


def test_blocking_attention_matches_a_hand_computation_of_the_head(claim_tokens):
    model = _sharpened("llama")
    subject = pi.load(model)
    g = torch.Generator().manual_seed(1)
    b, t = claim_tokens.shape
    pairs = (torch.rand(b, t, t, generator=g) < 0.3) & torch.ones(t, t, dtype=torch.bool).tril(-1)
    eff = pi.block_attention(subject, pi.head(1, 3), keys=pairs, inputs=claim_tokens, metric=pi.metrics.loss())
    with torch.no_grad():
        clean = _ce(model(input_ids=claim_tokens, use_cache=False).logits, claim_tokens)
    hand = _ce(_hand_block(model, claim_tokens, 1, 3, pairs), claim_tokens)
    assert torch.allclose(torch.as_tensor(eff.values), hand - clean, atol=1e-5)
    assert float((hand - clean).abs().max()) > 5e-4


def test_pattern_patching_matches_a_hand_computation_and_by_itself_changes_nothing(claim_tokens):
    model = _sharpened("llama")
    subject = pi.load(model)
    g = torch.Generator().manual_seed(2)
    corrupt = torch.randint(1, 48, claim_tokens.shape, generator=g)
    eff = pi.patch_pattern(subject, pi.head(1, 1), clean=claim_tokens, corrupt=corrupt, metric=pi.metrics.loss())
    with torch.no_grad():
        pattern = model(input_ids=corrupt, use_cache=False, output_attentions=True).attentions[1][:, 1]
        clean = _ce(model(input_ids=claim_tokens, use_cache=False).logits, claim_tokens)
    hand = _ce(_hand_block(model, claim_tokens, 1, 1, torch.zeros(1, dtype=torch.bool), pattern), claim_tokens)
    assert torch.allclose(torch.as_tensor(eff.values), hand - clean, atol=1e-5)
    assert float((hand - clean).abs().max()) > 5e-4
    same = pi.patch_pattern(subject, pi.head(1, 1), clean=claim_tokens, corrupt=claim_tokens,
                            metric=pi.metrics.loss())
    assert float(abs(same.values).max()) < 1e-6
    with pytest.raises(InterpError, match="different shapes"):
        pi.patch_pattern(subject, pi.head(1, 1), clean=claim_tokens, corrupt=corrupt[:, :8], metric=pi.metrics.loss())


def test_the_matched_control_blocks_as_many_other_visible_keys(induction):
    tokens = pi.repeated_tokens(induction, n=16, seed=0).tokens
    named = pi.induction_keys(tokens)
    control = pi.matched_keys(named, tokens, causal=True, seed=0)
    causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
    assert not bool((control & named).any())
    assert not bool((control & ~causal).any())
    visible_others = (causal & ~named).sum(-1)
    assert torch.equal(control.sum(-1), torch.minimum(named.sum(-1), visible_others))
    assert torch.equal(control, pi.matched_keys(named, tokens, causal=True, seed=0))  # seeded


def test_induction_keys_point_after_each_earlier_occurrence():
    t = torch.tensor([[0, 5, 7, 9, 5, 7]])
    keys = pi.induction_keys(t)
    assert keys[0, 4].nonzero()[:, 0].tolist() == [2]  # the 5 at 4 looks at 2, after the 5 at 1
    assert keys[0, 5].nonzero()[:, 0].tolist() == [3]
    assert keys[0, :4].sum() == 0
    assert pi.induction_target(t)[0].tolist() == [-1, -1, -1, -1, 7, 9]


# ----------------------------------------------------------------------------------------- claims on the fixture


@pytest.fixture(scope="module")
def repeated(induction):
    return pi.repeated_tokens(induction, n=32, seed=0).tokens


def test_layer_0_composes_with_the_induction_head_through_its_keys(induction, repeated):
    eff = pi.assert_composes(induction, pi.attn(0), pi.head(1, 0), via="k", inputs=repeated,
                             metric=pi.metrics.loss(), at_least=0.05)
    assert eff.details["via"] == "k" and eff.method == "path"


def test_a_path_that_carries_nothing_fails_the_composition_claim_and_passes_its_equivalence(induction, repeated):
    with pytest.raises(ClaimFailed, match="composes with head 1.0 through its queries"):
        pi.assert_composes(induction, pi.head(0, 2), pi.head(1, 0), via="q", inputs=repeated,
                           metric=pi.metrics.loss(), at_least=0.05)
    pi.assert_does_not_compose(induction, pi.head(0, 2), pi.head(1, 0), via="v", inputs=repeated,
                               metric=pi.metrics.loss(), within=0.02)
    with pytest.raises(ClaimFailed):
        pi.assert_does_not_compose(induction, pi.attn(0), pi.head(1, 0), via="k", inputs=repeated,
                                   metric=pi.metrics.loss(), within=0.02)


def test_the_induction_heads_attention_to_the_induction_keys_mediates_and_a_non_induction_heads_does_not(
        induction, repeated):
    eff = pi.assert_attention_mediates(induction, pi.head(1, 0), keys=pi.induction_keys, inputs=repeated,
                                       metric=pi.metrics.loss(), at_least=0.2)
    assert eff.details["difference_lo"] > 0 and abs(eff.details["control"]) < 0.01
    with pytest.raises(ClaimFailed, match="matched control"):
        pi.assert_attention_mediates(induction, pi.head(1, 3), keys=pi.induction_keys, inputs=repeated,
                                     metric=pi.metrics.loss(), at_least=0.05)


def _target_and_current(tokens):
    target = pi.induction_target(tokens)
    return torch.where(target >= 0, target * 64 + torch.as_tensor(tokens).long(), -1)


def _position(tokens):
    return torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)


def test_scrubbing_keeps_the_behaviour_under_a_right_hypothesis_and_not_under_a_wrong_one(induction):
    tokens = pi.repeated_tokens(induction, n=512, seed=0).tokens
    heads = [pi.head(1, 0), pi.head(1, 1), pi.head(1, 2)]
    eff = pi.assert_hypothesis_explains(induction, {h: _target_and_current for h in heads}, inputs=tokens,
                                        metric=pi.metrics.loss(), at_least=0.3)
    assert eff.ci[0] >= 0.3
    with pytest.raises(InterpError, match="too few inputs"):  # 25% of tokens alone in their class at n = 64
        pi.scrub(induction, {h: _target_and_current for h in heads}, inputs=tokens[:64], metric=pi.metrics.loss())
    with pytest.raises(ClaimFailed, match="loss recovered"):
        pi.assert_hypothesis_explains(induction, {h: _position for h in heads}, inputs=tokens,
                                      metric=pi.metrics.loss(), at_least=0.3)
    res = pi.scrub(induction, {h: _position for h in heads}, inputs=tokens, metric=pi.metrics.loss())
    assert abs(res.recovered.mean) < 0.05 and res.unscrubbed["head 1.0"] == 0.0


# ----------------------------------------------------------------------------------------------- bad input


def test_paths_that_cannot_exist_are_refused():
    with pytest.raises(InterpError, match="cannot compose"):
        pi.path(pi.head(1, 0), pi.head(1, 2), via="k")
    with pytest.raises(InterpError, match="cannot compose"):
        pi.path(pi.head(1, 0), pi.head(0, 2), via="q")
    with pytest.raises(InterpError, match="via='q', 'k' or 'v'"):
        pi.path(pi.head(0, 0), pi.head(1, 2))
    with pytest.raises(InterpError, match="MLP receiver"):
        pi.path(pi.head(0, 0), pi.mlp(1), via="q")
    with pytest.raises(InterpError, match="cannot reach"):
        pi.path(pi.mlp(1), pi.mlp(1))
    with pytest.raises(InterpError, match="sender must be"):
        pi.path(pi.resid(0), pi.mlp(1))
    with pytest.raises(InterpError, match="receiver must be"):
        pi.path(pi.head(0, 0), pi.resid(2))
    with pytest.raises(InterpError, match="head receivers only"):
        pi.path(pi.head(0, 0), "logits", via="k")
    pi.path(pi.head(1, 0), pi.mlp(1))  # an attention head feeds the MLP of its own layer


def test_path_errors_on_the_model(tiny_llama, claim_tokens):
    with pytest.raises(InterpError, match="head 0.7"):
        pi.ablate_path(tiny_llama, pi.path(pi.head(0, 7), pi.head(1, 0), via="k"), inputs=claim_tokens,
                       metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="layer"):
        pi.ablate_path(tiny_llama, pi.path(pi.head(0, 0), pi.head(5, 0), via="k"), inputs=claim_tokens,
                       metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="expected a path"):
        pi.ablate_path(tiny_llama, (pi.head(0, 0), pi.head(1, 0)), inputs=claim_tokens, metric=pi.metrics.loss())


def test_path_patching_is_refused_on_a_post_norm_model(claim_tokens):
    from tests.helpers import tiny_model

    bert = pi.load(tiny_model("bert"))
    with pytest.raises(InterpError, match="pre-norm"):
        pi.ablate_path(bert, pi.path(pi.head(0, 0), pi.head(1, 0), via="k"), inputs=claim_tokens,
                       metric=pi.metrics.cosine())


def test_attention_edit_errors(tiny_llama, claim_tokens):
    b, t = claim_tokens.shape
    with pytest.raises(InterpError, match="bool tensor"):
        pi.block_attention(tiny_llama, pi.head(1, 0), keys=torch.ones(b, t), inputs=claim_tokens,
                           metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="no query -> key pair"):
        pi.block_attention(tiny_llama, pi.head(1, 0), keys=torch.zeros(b, t, t, dtype=torch.bool),
                           inputs=claim_tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="no key to attend to"):
        pi.block_attention(tiny_llama, pi.head(1, 0), keys=torch.ones(b, t, t, dtype=torch.bool),
                           inputs=claim_tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="one head"):
        pi.block_attention(tiny_llama, pi.mlp(1), keys=pi.induction_keys, inputs=claim_tokens,
                           metric=pi.metrics.loss())


def test_scrubbing_errors(induction):
    tokens = pi.repeated_tokens(induction, n=16, seed=0).tokens
    site = pi.head(1, 0)
    unique = lambda t: torch.arange(t.numel()).view(t.shape)  # noqa: E731
    one = lambda t: torch.zeros(t.shape, dtype=torch.long)  # noqa: E731
    with pytest.raises(InterpError, match="class of its own"):
        pi.scrub(induction, {site: unique}, inputs=tokens, metric=pi.metrics.loss(), max_alone=1.0)
    with pytest.raises(InterpError, match="one class"):
        pi.scrub(induction, {site: one}, inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="wrong shape"):
        pi.scrub(induction, {site: lambda t: t[:, :3]}, inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="not integers"):
        pi.scrub(induction, {site: lambda t: t.float()}, inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="maps sites"):
        pi.scrub(induction, {}, inputs=tokens, metric=pi.metrics.loss())
    with pytest.raises(InterpError, match="restricted to positions"):
        pi.scrub(induction, {site.at(3): one}, inputs=tokens, metric=pi.metrics.loss())


def test_scrub_donors_share_the_label_and_full_resampling_draws_any_token():
    from pytest_interp.experiments.scrubbing import donors

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 40, (8, 12), generator=g)
    labels = tokens % 3
    ex, pos, alone = donors(labels, tokens, seed=0)
    assert torch.equal(labels[ex, pos], labels) and alone == 0.0
    assert not torch.equal(ex * 12 + pos, torch.arange(96).view(8, 12))  # tokens do move
    ex2, pos2, _ = donors(None, tokens, seed=0)
    assert bool((labels[ex2, pos2] != labels).any())


# ---------------------------------------------------------------------------------------------- edge screen


def test_the_edge_screen_matches_exact_path_ablation_where_the_model_is_nearly_linear(claim_tokens):
    """The tiny random model's paths move the loss by ~1e-4, where first order is nearly exact."""
    from tests.helpers import tiny_model

    subject = pi.load(tiny_model("gpt2"))
    senders, receivers = [pi.head(0, h) for h in range(4)], [pi.head(1, h) for h in range(4)]
    exact = pi.composition(subject, senders, receivers, inputs=claim_tokens, metric=pi.metrics.loss(), how=pi.Zero())
    biggest = max(abs(e.mean) for e in exact.values())
    for steps in (1, 3):
        est = pi.edge_screen(subject, senders, receivers, inputs=claim_tokens, metric=pi.metrics.loss(),
                             how=pi.Zero(), steps=steps)
        assert set(est) == set(exact) and len(est) == 48
        worst = max(abs(est[p].mean - exact[p].mean) for p in exact)
        assert worst < 0.05 * biggest, (steps, worst, biggest)
    assert pi.rank_agreement(est, exact) > 0.9


def test_edge_screen_errors(tiny_llama, claim_tokens):
    with pytest.raises(InterpError, match="grouped-query"):
        pi.edge_screen(tiny_llama, inputs=claim_tokens, metric=pi.metrics.loss())
    est = pi.edge_screen(tiny_llama, inputs=claim_tokens, metric=pi.metrics.loss(), via=("q",))
    assert all(p.via == "q" for p in est)
    with pytest.raises(InterpError, match="steps"):
        pi.edge_screen(tiny_llama, inputs=claim_tokens, metric=pi.metrics.loss(), via=("q",), steps=0)
    with pytest.raises(InterpError, match="deterministic"):
        pi.edge_screen(tiny_llama, inputs=claim_tokens, metric=pi.metrics.loss(), via=("q",), how=pi.Resample())
    with pytest.raises(InterpError, match="no path"):
        pi.edge_screen(tiny_llama, [pi.head(1, 0)], [pi.head(1, 1)], inputs=claim_tokens, metric=pi.metrics.loss())


def test_path_tables_go_to_the_report_as_a_sender_by_receiver_grid(induction):
    from pytest_interp.core import records

    tokens = pi.repeated_tokens(induction, n=16, seed=0).tokens
    records.drain_grids()
    pi.composition(induction, [pi.head(0, 0), pi.head(0, 3)], [pi.head(1, 0)], inputs=tokens,
                   metric=pi.metrics.loss(), via=("k", "v"))
    (grid,) = records.drain_grids()
    assert grid["rows"] == ["head 0.0", "head 0.3"] and grid["cols"] == ["head 1.0 k", "head 1.0 v"]
    assert "path ablation" in grid["title"] and all(v is not None for row in grid["values"] for v in row)


def test_attention_edits_work_when_the_modeling_module_left_sys_modules(tiny_gpt2, tokens, monkeypatch):
    """pytester restores sys.modules after an in-process run, dropping modeling modules imported during it."""
    import sys

    from pytest_interp.engine.runner import _base

    attention = tiny_gpt2.adapter.attention(0)
    monkeypatch.delitem(sys.modules, type(attention).__module__, raising=False)
    assert _base(attention) is type(attention).forward.__globals__["eager_attention_forward"]


def test_a_path_on_a_ragged_batch_equals_each_example_run_alone():
    """Padding stays out of path patching: each example's path damage on a right-padded batch of different
    lengths equals its damage in a batch of copies of itself alone."""
    subject = pi.load(_sharpened("llama"))
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(1, 48, (n,), generator=g).tolist() for n in (6, 9, 12, 7)]
    p = pi.path(pi.head(0, 1), pi.head(1, 2), via="k")
    batch = pi.ablate_path(subject, p, inputs=rows, metric=pi.metrics.loss(), how=pi.Zero())
    for i, row in enumerate(rows):
        alone = pi.ablate_path(subject, p, inputs=[row, row], metric=pi.metrics.loss(), how=pi.Zero())
        assert abs(float(batch.values[i]) - float(alone.values[0])) < 1e-5, i
    assert float(abs(batch.values).max()) > 5e-4
