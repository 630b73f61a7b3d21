"""Encoder-decoder models (T5, BART): stacked sites and cross-attention heads edited where a hand-written hook edits
them, cross-attention read as output_attentions returns it, encoder-side segments, and the bad input they refuse."""

from __future__ import annotations

import pytest
import torch

import pytest_interp as pi
from tests.helpers import ENCDEC_ARCHS, INDUCTION, tiny_model, word_tokenizer

WORDS = ["<pad>", "</s>", "[DOC]", "[Q]", "[OLD]"] + [f"k{i}" for i in range(20)] + [f"v{i}" for i in range(23)]


@pytest.fixture(scope="module", params=ENCDEC_ARCHS)
def encdec(request):
    model = tiny_model(request.param)
    return pi.load(model, word_tokenizer(WORDS))


@pytest.fixture(scope="module")
def llama():
    return pi.load(INDUCTION)


def _x(n=16, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 48, (n, t), generator=g)


def _start(subject, n):
    return torch.full((n, 1), subject.decoder_start_id, dtype=torch.long)


def _modules(subject, arch):
    m = subject.model
    if arch == "t5":
        return {"cross_o": lambda l: m.decoder.block[l].layer[1].EncDecAttention.o,
                "enc_o": lambda l: m.encoder.block[l].layer[0].SelfAttention.o,
                "dec_o": lambda l: m.decoder.block[l].layer[0].SelfAttention.o,
                "dec_mlp": lambda l: m.decoder.block[l].layer[2].DenseReluDense,
                "enc_block": lambda l: m.encoder.block[l]}
    return {"cross_o": lambda l: m.model.decoder.layers[l].encoder_attn.out_proj,
            "enc_o": lambda l: m.model.encoder.layers[l].self_attn.out_proj,
            "dec_o": lambda l: m.model.decoder.layers[l].self_attn.out_proj,
            "dec_mlp": lambda l: m.model.decoder.layers[l].fc2,
            "enc_block": lambda l: m.model.encoder.layers[l]}


def _logprob_by_hand(subject, x, answer, handle_fn):
    handle = handle_fn()
    try:
        with torch.no_grad():
            out = subject.model(input_ids=x, decoder_input_ids=_start(subject, x.shape[0]), use_cache=False)
    finally:
        handle.remove()
    return torch.log_softmax(out.logits[:, -1].float(), -1)[:, answer]


def _zero_slice(h, d):
    def pre(module, args):
        y = args[0].clone()
        y[..., h * d:(h + 1) * d] = 0
        return (y, *args[1:])
    return pre


def test_cross_attention_is_what_output_attentions_returns(encdec):
    x = _x()
    with torch.no_grad():
        out = encdec.model(input_ids=x, decoder_input_ids=_start(encdec, len(x)), output_attentions=True,
                           use_cache=False)
    for layer in range(encdec.n_decoder_layers):
        got = pi.explain.attention_weights(encdec, x, layer)  # the default for an encoder-decoder model: cross
        assert torch.equal(got, out.cross_attentions[layer].float())
        assert got.shape == (len(x), encdec.n_heads, 1, x.shape[1])
    for layer in range(encdec.n_layers):
        assert torch.equal(pi.explain.attention_weights(encdec, x, layer, which="encoder"),
                           out.encoder_attentions[layer].float())
    att = pi.explain.attention(encdec, x, layer=1, head=2)
    assert att.method == "attention (cross, head 1.2)"
    assert torch.allclose(torch.as_tensor(att.scores), out.cross_attentions[1][:, 2, 0].double(), atol=1e-7)
    whole = pi.explain.attention(encdec, x)
    mean = torch.stack([a[:, :, 0] for a in out.cross_attentions], 1).double().mean((1, 2))
    assert torch.allclose(torch.as_tensor(whole.scores), mean, atol=1e-7)


def test_cross_heads_and_stacked_sites_are_edited_where_a_hand_hook_edits_them(encdec):
    arch = encdec.adapter_spec.name
    mods = _modules(encdec, arch)
    d = encdec.adapter.head_dim
    x, ans = _x(), 7
    metric = pi.metrics.logprob(ans)
    clean = _logprob_by_hand(encdec, x, ans, lambda: mods["enc_o"](0).register_forward_pre_hook(lambda m, a: None))
    cases = [
        (pi.cross_head(2, 1), lambda: mods["cross_o"](2).register_forward_pre_hook(_zero_slice(1, d))),
        (pi.head(1, 3, stack="encoder"), lambda: mods["enc_o"](1).register_forward_pre_hook(_zero_slice(3, d))),
        (pi.head(0, 0, stack="decoder"), lambda: mods["dec_o"](0).register_forward_pre_hook(_zero_slice(0, d))),
        (pi.cross_attn(1), lambda: mods["cross_o"](1).register_forward_hook(lambda m, a, o: torch.zeros_like(o))),
        (pi.mlp(2, stack="decoder"), lambda: mods["dec_mlp"](2).register_forward_hook(
            lambda m, a, o: torch.zeros_like(o))),
    ]
    for site, hook in cases:
        eff = pi.ablate(encdec, site, inputs=x, metric=metric, how=pi.Zero())
        want = clean - _logprob_by_hand(encdec, x, ans, hook)
        assert torch.allclose(torch.as_tensor(eff.values, dtype=torch.float32), want, atol=1e-5), site
        assert eff.mean != 0.0, site
    # a position-restricted encoder site edits those encoder tokens only
    site = pi.resid(1, stack="encoder").at([2, 3])

    def pre(module, args, kwargs):
        h = (args[0] if args else kwargs["hidden_states"]).clone()
        h[:, 2:4] = 0
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
    eff = pi.ablate(encdec, site, inputs=x, metric=metric, how=pi.Zero())
    want = clean - _logprob_by_hand(encdec, x, ans, lambda: mods["enc_block"](1).register_forward_pre_hook(
        pre, with_kwargs=True))
    assert torch.allclose(torch.as_tensor(eff.values, dtype=torch.float32), want, atol=1e-5)


def test_a_sweep_of_an_encoder_decoder_model_covers_every_stack_and_equals_single_ablations(encdec):
    x = _x(n=12)
    metric = pi.metrics.logprob(5)
    sw = pi.sweep(encdec, inputs=x, metric=metric, how=pi.Zero())
    n, nd, h = encdec.n_layers, encdec.n_decoder_layers, encdec.n_heads
    assert len(sw) == (n + 2 * nd) * h
    for site in (pi.cross_head(1, 2), pi.head(0, 1, stack="encoder"), pi.head(2, 3, stack="decoder")):
        assert sw[site].mean == pytest.approx(pi.ablate(encdec, site, inputs=x, metric=metric, how=pi.Zero()).mean,
                                              abs=1e-6)
    values, rows, cols = sw.grid()
    assert rows[0] == "encoder L0" and rows[-1] == f"cross L{nd - 1}" and cols == [f"H{i}" for i in range(h)]
    assert values.shape == (n + 2 * nd, h)


def _prompts(subject, n=12, seed=0, decoder=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = torch.randperm(20, generator=g)[:3].tolist()
        v = torch.randperm(23, generator=g)[:3].tolist()
        q = int(torch.randint(0, 3, (1,), generator=g))
        docs = [("doc", f"[DOC] k{k[j]} v{v[j]}") for j in range(3)]
        out.append(pi.Prompt(*docs, ("question", f"[Q] k{k[q]}"), answer=f"v{v[q]}",
                             choices=[f"v{x}" for x in v], decoder=decoder))
    return out


def _answer_lp(subject, enc_ids, answer_id, mask=None, decoder=()):
    dec = torch.tensor([[subject.decoder_start_id, *decoder]])
    with torch.no_grad():
        out = subject.model(input_ids=torch.tensor([enc_ids]), decoder_input_ids=dec, use_cache=False,
                            attention_mask=None if mask is None else torch.tensor([mask]))
    return float(torch.log_softmax(out.logits[0, -1].float(), -1)[answer_id])


def test_segments_live_on_the_encoder_side_and_leave_out_equals_deleting_them_by_hand(encdec):
    tok = encdec.tokenizer
    prompts = _prompts(encdec)
    for method in ("delete", "mask"):
        eff = pi.leave_out(encdec, prompts, 1, method=method)
        want = []
        for p in prompts:
            ids = tok(" ".join(s.text for s in p.segments))["input_ids"]
            a = tok(p.answer)["input_ids"][0]
            if method == "delete":
                cut = ids[:3] + ids[6:]
                want.append(_answer_lp(encdec, ids, a) - _answer_lp(encdec, cut, a))
            else:
                mask = [1] * len(ids)
                mask[3:6] = [0, 0, 0]
                want.append(_answer_lp(encdec, ids, a) - _answer_lp(encdec, ids, a, mask))
        assert eff.values == pytest.approx(want, abs=1e-5), method
    # a decoder prefix is the decoder's input after its start token
    pre = _prompts(encdec, decoder="[Q]")
    got = pi.leave_out(encdec, pre, 0)
    p = pre[0]
    ids = tok(" ".join(s.text for s in p.segments))["input_ids"]
    a, q = tok(p.answer)["input_ids"][0], tok("[Q]")["input_ids"][0]
    assert got.values[0] == pytest.approx(_answer_lp(encdec, ids, a, decoder=(q,)) -
                                          _answer_lp(encdec, ids[3:], a, decoder=(q,)), abs=1e-5)


def test_provenance_reads_cross_attention_beside_removal_damage(encdec):
    prompts = _prompts(encdec, n=10)
    table = pi.provenance(encdec, prompts)
    tok = encdec.tokenizer
    want = []
    for p in prompts:
        ids = tok(" ".join(s.text for s in p.segments))["input_ids"]
        with torch.no_grad():
            out = encdec.model(input_ids=torch.tensor([ids]), decoder_input_ids=_start(encdec, 1),
                               output_attentions=True, use_cache=False)
        per_layer = [float(a[0, :, 0, 3:6].sum(-1).mean()) for a in out.cross_attentions]
        want.append(per_layer)
    assert table["document 1"].attention_by_layer == pytest.approx(torch.tensor(want).mean(0).tolist(), abs=1e-6)
    mass = pi.attention_mass(encdec, prompts, 1)
    assert mass.mean == pytest.approx(float(torch.tensor(want).mean()), abs=1e-6)
    assert mass.metric == "cross-attention from the answer position"
    assert table["document 1"].effect.mean == pytest.approx(pi.leave_out(encdec, prompts, 1).mean)


def test_encoder_decoder_bad_input_is_refused_clearly(encdec, llama):
    x = _x()
    metric = pi.metrics.logprob(5)
    with pytest.raises(pi.InterpError, match="does not say which stack"):
        pi.ablate(encdec, pi.head(0, 0), inputs=x, metric=metric)
    with pytest.raises(pi.InterpError, match="out of range"):
        pi.ablate(encdec, pi.cross_head(encdec.n_decoder_layers, 0), inputs=x, metric=metric)
    with pytest.raises(pi.InterpError, match="unknown stack"):
        pi.mlp(0, stack="middle")
    with pytest.raises(pi.InterpError, match="rollout is defined for a model with one stack"):
        pi.explain.rollout(encdec, x)
    with pytest.raises(pi.InterpError, match="several attentions"):
        pi.explain.attention_weights(encdec, x, 0, which="self")
    with pytest.raises(pi.InterpError, match="generation of encoder-decoder models is not supported"):
        pi.ablate(encdec, pi.cross_head(0, 0), inputs=x, metric=pi.metrics.generates("v1"))
    with pytest.raises(pi.InterpError, match="decoder side"):  # a segment on the wrong side
        pi.leave_out(encdec, _prompts(encdec, decoder=("question", "[Q]", "dq")), "dq")
    with pytest.raises(pi.InterpError, match="not in the prompt"):  # a choice the prompt does not list
        bad = [pi.Prompt(("doc", "[DOC] k1 v1"), ("doc", "[DOC] k2 v2"), ("question", "[Q] k1"), answer="v1",
                         choices=["v1", "v9"]) for _ in range(12)]
        pi.leave_out(encdec, bad, 1, metric="choice")
    t = llama.tokens(torch.randint(1, 40, (12, 10), generator=torch.Generator().manual_seed(1)))
    with pytest.raises(pi.InterpError, match="no cross-attention"):  # a decoder-only model given a cross site
        pi.ablate(llama, pi.cross_head(0, 0), inputs=t, metric=metric)
    with pytest.raises(pi.InterpError, match="no cross-attention"):
        pi.ablate(llama, pi.cross_attn(1), inputs=t, metric=metric)
    with pytest.raises(pi.InterpError, match="one stack"):
        pi.ablate(llama, pi.head(0, 0, stack="encoder"), inputs=t, metric=metric)
    with pytest.raises(pi.InterpError, match="needs an encoder-decoder model"):
        pi.explain.attention_weights(llama, t, 0, which="cross")
    with pytest.raises(pi.InterpError, match="one stack"):  # a decoder side on a decoder-only model
        pi.leave_out(llama, [pi.Prompt(("doc", "t1 t2"), ("text", "t3"), answer="t4", decoder="t5")] * 12, 0)


def test_the_run_cache_tells_the_stacks_apart(encdec):
    from pytest_interp.core.cache import site_key

    assert len({site_key(s) for s in (pi.head(0, 1, stack="encoder"), pi.head(0, 1, stack="decoder"),
                                     pi.cross_head(0, 1))}) == 3
    assert site_key(pi.head(0, 1)) == "head:0:1:None"  # one-stack models keep their keys


def test_leave_one_token_out_masks_encoder_tokens_and_faithfulness_removes_any_of_them(encdec):
    x, ans = _x(n=12, t=6), 9
    loo = pi.explain.leave_one_token_out(encdec, x, ans)
    for j in (0, 5):
        mask = torch.ones_like(x)
        mask[:, j] = 0
        with torch.no_grad():
            full = encdec.model(input_ids=x, decoder_input_ids=_start(encdec, len(x)), use_cache=False).logits
            cut = encdec.model(input_ids=x, attention_mask=mask, decoder_input_ids=_start(encdec, len(x)),
                               use_cache=False).logits
        want = torch.log_softmax(full[:, -1].double(), -1)[:, ans] - torch.log_softmax(cut[:, -1].double(), -1)[:, ans]
        assert torch.allclose(torch.as_tensor(loo.scores[:, j]), want, atol=1e-5)
    # the decoder predicts, so no encoder token is held fixed: an attribution that swaps the first and the last
    # token's scores ranks the tokens differently (on a causal model those two are fixed and the rank would be 1)
    swapped = loo.scores.copy()
    swapped[:, [0, 5]] = swapped[:, [5, 0]]
    assert pi.faithfulness(encdec, loo.scores, inputs=x, answer=ans, k=2).rank.mean == pytest.approx(1.0)
    assert pi.faithfulness(encdec, swapped, inputs=x, answer=ans, k=2).rank.mean < 0.99


def test_reports_name_both_stacks(encdec):
    assert encdec.identity()["decoder_layers"] == encdec.n_decoder_layers == 3
    assert "2 encoder + 3 decoder layers x 4 heads" in repr(encdec)
    assert str(pi.head(1, 2, stack="encoder")) == "encoder head 1.2"
    assert str(pi.mlp(0, stack="decoder").at(-1)) == "decoder mlp 0 @ -1"
    assert str(pi.cross_head(1, 0)) == "cross head 1.0" and str(pi.cross_attn(2)) == "cross attn 2"


def test_patch_sweeps_name_a_stack_and_equal_single_patches(encdec):
    clean, corrupt = _x(n=32, seed=1), _x(n=32, seed=2)
    with torch.no_grad():  # each clean input's own top prediction, so the clean run scores better
        top = encdec.model(input_ids=clean, decoder_input_ids=_start(encdec, 32), use_cache=False).logits[:, -1]
    metric = pi.metrics.logprob(top.argmax(-1).tolist())
    sw = pi.patch_sweep(encdec, clean=clean, corrupt=corrupt, metric=metric, stack="encoder", layers=[1],
                        positions=[0, 8])
    site = pi.resid(1, stack="encoder").at(8)
    assert sw[site].mean == pytest.approx(pi.patch(encdec, site, clean=clean, corrupt=corrupt, metric=metric).mean,
                                          abs=1e-6)
    dec = pi.patch_sweep(encdec, clean=clean, corrupt=corrupt, metric=metric, stack="decoder", kind="mlp")
    assert len(dec) == encdec.n_decoder_layers  # one decoder position: the start token
    with pytest.raises(pi.InterpError, match="does not say which stack"):
        pi.patch_sweep(encdec, clean=clean, corrupt=corrupt, metric=metric)


def test_methods_defined_for_one_stack_refuse_encoder_decoder_models(encdec):
    x = _x()
    with pytest.raises(pi.InterpError, match="causal tracing is not supported for encoder-decoder models"):
        pi.trace(encdec, x, [1, 2], 5)
    with pytest.raises(pi.InterpError, match="path patching is not supported"):
        pi.ablate_path(encdec, pi.path(pi.head(0, 0, stack="encoder"), pi.head(1, 0, stack="encoder"), via="k"),
                       inputs=x,
                       metric=pi.metrics.logprob(5))
    with pytest.raises(pi.InterpError, match="probing decoder mlp 0 is not supported"):
        pi.probe(encdec, pi.mlp(0, stack="decoder"), x, [i % 2 for i in range(len(x))])


def test_mean_and_resample_of_a_decoder_side_site_use_the_decoders_positions(encdec):
    arch = encdec.adapter_spec.name
    cross_o = _modules(encdec, arch)["cross_o"](1)
    d, h, ans = encdec.adapter.head_dim, 2, 7
    rag = [list(range(3, 8 + i % 3)) for i in range(16)]  # encoder inputs of 5 to 7 tokens
    x = encdec.tokens(rag)
    mask = pi.real(x).long()
    xin = x.masked_fill(~pi.real(x), 0)

    def lp(hook=None):
        handle = cross_o.register_forward_pre_hook(hook) if hook else None
        try:
            with torch.no_grad():
                out = encdec.model(input_ids=xin, attention_mask=mask, decoder_input_ids=_start(encdec, 16),
                                   use_cache=False)
        finally:
            if handle:
                handle.remove()
        return torch.log_softmax(out.logits[:, -1].float(), -1)[:, ans]

    seen = []
    lp(lambda m, a: seen.append(a[0][..., h * d:(h + 1) * d].clone()))
    own = seen[0]  # [16, 1, d]: one decoder position, whatever each encoder input's length

    def put(value):
        def pre(m, a):
            y = a[0].clone()
            y[..., h * d:(h + 1) * d] = value
            return (y, *a[1:])
        return pre
    metric = pi.metrics.logprob(ans)
    eff = pi.ablate(encdec, pi.cross_head(1, h), inputs=rag, metric=metric, how=pi.Mean(exclude_self=False))
    want = lp() - lp(put(own.mean(0, keepdim=True)))
    assert torch.allclose(torch.as_tensor(eff.values, dtype=torch.float32), want, atol=1e-5)
    shift = torch.randint(1, 16, (16,), generator=torch.Generator().manual_seed(3))
    donor = (torch.arange(16) + shift) % 16
    eff = pi.ablate(encdec, pi.cross_head(1, h), inputs=rag, metric=metric, how=pi.Resample(seed=3))
    want = lp() - lp(put(own[donor]))
    assert torch.allclose(torch.as_tensor(eff.values, dtype=torch.float32), want, atol=1e-5)
