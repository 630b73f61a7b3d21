"""The run cache: hits after misses, invalidation, corrupt entries, concurrent writers, read-only mode."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

import pytest_interp as pi
from pytest_interp.core import cache as _cache
from tests.helpers import tiny_model


@pytest.fixture
def cache(tmp_path):
    c = _cache.use(_cache.RunCache(tmp_path / "cache", "readwrite"))
    yield c
    _cache.use(_cache.RunCache())


def ablate(subject, tokens):
    return pi.ablate(subject, pi.head(1, 2), inputs=tokens, metric=pi.metrics.loss(), how=pi.Zero())


def test_hit_after_miss(cache, tiny_llama, tokens):
    first = ablate(tiny_llama, tokens)
    assert (cache.hits, cache.misses, cache.writes) == (0, 2, 2)  # the clean run and the ablated run
    second = ablate(tiny_llama, tokens)
    assert (cache.hits, cache.misses) == (2, 2)
    assert second.mean == first.mean and second.ci == first.ci
    assert cache.size()[0] == 2


def test_every_key_part_matters(cache, tiny_llama, tokens):
    ablate(tiny_llama, tokens)
    pi.ablate(tiny_llama, pi.head(1, 3), inputs=tokens, metric=pi.metrics.loss(), how=pi.Zero())  # other site
    pi.ablate(tiny_llama, pi.head(1, 2), inputs=tokens, metric=pi.metrics.loss(), how=pi.Mean())  # other how
    pi.ablate(tiny_llama, pi.head(1, 2), inputs=tokens, metric=pi.metrics.loss(), how=pi.Noise(seed=1))
    pi.ablate(tiny_llama, pi.head(1, 2), inputs=tokens, metric=pi.metrics.loss(), how=pi.Noise(seed=2))
    pi.ablate(tiny_llama, pi.head(1, 2), inputs=tokens[:, :-1], metric=pi.metrics.loss(), how=pi.Zero())
    assert cache.hits == 4 and cache.writes == 8  # only the shared clean runs hit


def test_a_one_element_weight_change_never_hits(cache, tokens, tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "original")
    subject = pi.load(model)
    before = ablate(subject, tokens)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[0, 20] += 1.0  # an input column of head 1.2
    after = ablate(subject, tokens)
    assert cache.hits == 0 and after.mean != before.mean
    # and through from_pretrained: a checkpoint with one changed element is another model
    model.save_pretrained(tmp_path / "changed")
    original, changed = pi.load(tmp_path / "original"), pi.load(tmp_path / "changed")
    assert original.fingerprint != changed.fingerprint
    assert ablate(original, tokens).mean == pytest.approx(before.mean, abs=1e-6)
    assert ablate(changed, tokens).mean == pytest.approx(after.mean, abs=1e-6)
    assert original.loaded and changed.loaded
    # loading the checkpoint again (as a warm run does): served from the cache without reading the weights
    hits = cache.hits
    again = pi.load(tmp_path / "changed")
    assert ablate(again, tokens).mean == pytest.approx(after.mean, abs=1e-6)
    assert cache.hits == hits + 2 and not again.loaded
    # editing a loaded checkpoint's weights in place makes it another model again
    with torch.no_grad():
        again.model.model.layers[1].self_attn.o_proj.weight[0, 20] -= 1.0
    assert again.fingerprint != changed.fingerprint
    assert ablate(again, tokens).mean == pytest.approx(before.mean, abs=1e-6)


def test_corrupt_entry_is_recomputed_with_a_warning(cache, tiny_llama, tokens):
    first = ablate(tiny_llama, tokens)
    for f in (cache.directory).glob("*/*.safetensors"):
        f.write_bytes(f.read_bytes()[:20])  # truncated
    with pytest.warns(pi.InterpWarning, match="not used"):
        again = ablate(tiny_llama, tokens)
    assert again.mean == first.mean and cache.bad == 2
    assert ablate(tiny_llama, tokens).mean == first.mean and cache.hits == 2  # rewritten, readable again


def test_read_only_mode_never_writes(tmp_path, tiny_llama, tokens):
    c = _cache.use(_cache.RunCache(tmp_path / "ro", "read"))
    try:
        ablate(tiny_llama, tokens)
        ablate(tiny_llama, tokens)
        assert c.writes == 0 and not (tmp_path / "ro").exists()
    finally:
        _cache.use(_cache.RunCache())


def test_user_metric_without_cache_key_is_not_cached(cache, tiny_llama, tokens):
    m = pi.metrics.Metric(lambda logits, toks: logits[:, -1, 0], name="first-logit")
    pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=m, how=pi.Zero())
    assert cache.writes == 0
    keyed = pi.metrics.Metric(lambda logits, toks: logits[:, -1, 0], name="first-logit", cache_key="v1")
    pi.ablate(tiny_llama, pi.mlp(0), inputs=tokens, metric=keyed, how=pi.Zero())
    assert cache.writes == 2


def _writer(directory: str, worker: int, rounds: int) -> None:
    c = _cache.RunCache(_cache.Path(directory), "readwrite")
    for i in range(rounds):
        c.put("ab" * 32, torch.arange(1000, dtype=torch.float64) * (i % 2), {"worker": worker})


def test_concurrent_writers_never_tear_an_entry(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 200)) for w in range(2)]
    for p in procs:
        p.start()
    reader = _cache.RunCache(tmp_path, "read")
    seen = 0
    while any(p.is_alive() for p in procs):
        value = reader.get("ab" * 32)
        if value is not None:
            assert value.shape == (1000,) and (value.sum() in (0.0, float(sum(range(1000)))))
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reader.bad == 0 and reader.get("ab" * 32) is not None
    assert not [f for f in os.listdir(tmp_path / "ab") if f.endswith(".tmp")]


def test_tracing_and_context_runs_are_cached(cache, induction):
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 64, (8, 9), generator=g)
    toks[:, 0] = 0
    toks[:, 7:9] = toks[:, 2:4]
    first = pi.restore(induction, pi.resid(1).at(4), prompts=toks, subject_tokens=[2, 3], answer=toks[:, 4],
                       samples=2)
    writes = cache.writes
    again = pi.restore(induction, pi.resid(1).at(4), prompts=toks, subject_tokens=[2, 3], answer=toks[:, 4],
                       samples=2)
    assert writes == 3 and cache.hits == 3 and again.mean == first.mean  # clean, corrupted, restored
    other_seed = pi.restore(induction, pi.resid(1).at(4), prompts=toks, subject_tokens=[2, 3],
                            answer=toks[:, 4], samples=2, seed=1)
    assert cache.writes == writes + 2 and other_seed.mean != first.mean  # the clean run is shared
    prompts = [pi.Prompt(("text", "<bos>"), ("doc", "t5 t6 t7"), ("question", "t5 t6"), answer="t7")] * 3
    a = pi.leave_out(induction, prompts, 0)
    hits = cache.hits
    b = pi.leave_out(induction, prompts, 0)
    assert cache.hits > hits and a.mean == b.mean


def test_integrated_gradients_are_cached(cache, induction):
    import numpy as np

    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 64, (4, 9), generator=g)
    toks[:, 0] = 0
    first = pi.explain.integrated_gradients(induction, toks, toks[:, 3], steps=8, baseline=1, fixed=[0])
    assert cache.writes == 1 and cache.hits == 0
    again = pi.explain.integrated_gradients(induction, toks, toks[:, 3], steps=8, baseline=1, fixed=[0])
    assert cache.hits == 1
    np.testing.assert_array_equal(again.scores, first.scores)
    np.testing.assert_array_equal(again.details["delta"], first.details["delta"])
    pi.explain.integrated_gradients(induction, toks, toks[:, 3], steps=16, baseline=1, fixed=[0])
    pi.explain.integrated_gradients(induction, toks, toks[:, 3], steps=8, baseline=2, fixed=[0])
    pi.explain.integrated_gradients(induction, toks, toks[:, 3], steps=8, baseline=1)
    assert cache.writes == 4 and cache.hits == 1  # steps, baseline and fixed tokens are part of the key


def test_routing_logs_are_cached(cache, tokens):
    subject = pi.load(tiny_model("mixtral"))
    first = pi.routing(subject, tokens, record=False)
    assert cache.writes == 1
    again = pi.routing(subject, tokens, record=False)
    assert cache.hits == 1
    for layer in first.layers:
        assert torch.equal(again.index[layer], first.index[layer])
        assert torch.equal(again.weights[layer], first.weights[layer])
        assert torch.equal(again.probs[layer], first.probs[layer])
    assert again.index[0].dtype == torch.long and again.index[0].shape == (*tokens.shape, 2)
    pi.routing(subject, tokens, layers=[1], record=False)
    assert cache.writes == 2  # the layers are part of the key
    with pytest.raises(pi.InterpError):
        pi.routing(pi.load(tiny_model("llama")), tokens)  # a dense model still fails, cache or not


# tampering: nothing in the cache changes a verdict without a warning ------------------------------------------

def _entries(cache):
    return sorted(cache.directory.glob("*/*.safetensors"), key=lambda f: f.stat().st_mtime_ns)


def _rewrite(path, value, key=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if key is not None:
        meta["key"] = key
    save_file({"scores": value}, str(path), metadata=meta)


def _scores(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("scores")


def test_a_flipped_bit_is_a_miss_with_a_warning(cache, tiny_llama, tokens):
    first = ablate(tiny_llama, tokens)
    entry = _entries(cache)[-1]
    raw = bytearray(entry.read_bytes())
    raw[-3] ^= 0x10  # one bit of the stored scores
    entry.write_bytes(bytes(raw))
    with pytest.warns(pi.InterpWarning, match="digest"):
        again = ablate(tiny_llama, tokens)
    assert again.mean == first.mean and cache.bad == 1


@pytest.mark.parametrize("tamper", ["replace", "copy", "shape", "nan"])
def test_a_tampered_entry_never_changes_a_verdict(cache, tiny_llama, claim_tokens, tamper):
    tokens = claim_tokens
    ok = pi.assert_necessary(tiny_llama, pi.head(1, 2), inputs=tokens, metric=pi.metrics.loss(), how=pi.Zero(),
                             at_least=-10.0)
    pi.ablate(tiny_llama, pi.head(1, 3), inputs=tokens, metric=pi.metrics.loss(), how=pi.Zero())
    clean, ablated, other = _entries(cache)
    if tamper == "replace":  # a tensor that would flip the verdict, metadata kept
        _rewrite(ablated, _scores(clean) - 100.0)
    elif tamper == "copy":  # another key's entry copied in, its metadata key rewritten
        from safetensors import safe_open

        with safe_open(str(ablated), framework="pt") as f:
            key = f.metadata()["key"]
        ablated.write_bytes(other.read_bytes())
        _rewrite(ablated, _scores(ablated), key=key)
    elif tamper == "shape":
        _rewrite(ablated, _scores(ablated)[:3])
    else:
        bad = _scores(ablated).clone()
        bad[0] = float("nan")
        _rewrite(ablated, bad)
    with pytest.warns(pi.InterpWarning, match="not used"):
        again = pi.assert_necessary(tiny_llama, pi.head(1, 2), inputs=tokens, metric=pi.metrics.loss(),
                                    how=pi.Zero(), at_least=-10.0)
    assert again.mean == ok.mean and again.ci == ok.ci


@pytest.mark.parametrize("how", ["read-only directory", "a file in the way"])
def test_an_unwritable_cache_falls_back_to_computing(tmp_path, tiny_llama, tokens, how):
    # a read-only cache directory on a cold run used to fail every claim with OSError
    if how == "read-only directory":
        root = tmp_path / "ro"
        root.mkdir()
        os.chmod(root, 0o555)
        if os.access(root, os.W_OK):
            os.chmod(root, 0o755)
            pytest.skip("this user can write to a read-only directory (root)")
        where = root / "cache"
    else:  # unwritable for every user: the cache path runs through a regular file
        (tmp_path / "afile").write_text("")
        where = tmp_path / "afile" / "cache"
    try:
        c = _cache.use(_cache.RunCache(where, "readwrite"))
        with pytest.warns(pi.InterpWarning, match="cannot write its run cache") as seen:
            eff = ablate(tiny_llama, tokens)
            ablate(tiny_llama, tokens)
        assert sum("cannot write" in str(w.message) for w in seen) == 1  # warned once
        assert eff.n == tokens.shape[0] and c.writes == 0 and c.mode == "read"
    finally:
        if how == "read-only directory":
            os.chmod(tmp_path / "ro", 0o755)
        _cache.use(_cache.RunCache())


def test_a_weight_file_rewritten_in_place_with_its_mtime_restored_is_hashed_again(cache, tmp_path):
    from pytest_interp.model.subject import _files_fingerprint

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    before = _files_fingerprint(tmp_path / "m")
    st = os.stat(weights)
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # same size, one bit of the last weight
    weights.write_bytes(bytes(raw))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # modification time restored
    assert os.stat(weights).st_size == st.st_size and os.stat(weights).st_mtime_ns == st.st_mtime_ns
    assert _files_fingerprint(tmp_path / "m") != before
