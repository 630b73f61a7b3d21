"""Pre-registered claims about fixtures/facts-gpt2 (ground truth: fixtures/facts-gpt2/CARD.md).

A 4-layer GPT-2 that memorised 600 made-up facts (`<bos> n3 n17 n5 lives in` -> `city4`). Causal tracing: the
subject's token embeddings get Gaussian noise (3 x the embedding std), then one site's clean state is restored.
This model looks facts up at the LAST token in layer 0 (attention reads the subject, the MLP does the lookup), not
with MLPs at the last subject token as large models do; the false claims below say what a ROME-style reading
would have expected.
"""

import pytest
from conftest import fixture_module
from hypothesis import strategies as st

import pytest_interp as pi

pytestmark = pytest.mark.interp_model("../fixtures/facts-gpt2")


def test_trace_localises_recall_at_the_last_token_in_layer_0(subject, lives_in):
    trace = pi.trace(subject, **lives_in, window=1)
    values, rows, cols = trace.grid("mlp")
    layer, position = divmod(int(values.argmax()), values.shape[1])
    assert (layer, position) == (0, 5), f"strongest MLP cell {rows[layer]} @ {cols[position]}\n{trace}"


def test_layer_0_mlp_at_the_last_token_mediates(subject, lives_in):
    pi.assert_mediates(subject, pi.mlp(0).at(5), **lives_in, at_least=0.5)


def test_layer_0_attention_at_the_last_token_mediates(subject, lives_in):
    pi.assert_mediates(subject, pi.attn(0).at(5), **lives_in, at_least=0.5)


def test_stream_entering_layer_3_at_the_last_token_mediates(subject, lives_in):
    pi.assert_mediates(subject, pi.resid(3).at(5), **lives_in, at_least=0.8)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the ROME pattern (MLP at the last subject token) is absent: mlp 1 @ 3 restores ~0")
def test_false_mlp_1_at_the_last_subject_token_mediates(subject, lives_in):
    pi.assert_mediates(subject, pi.mlp(1).at(3), **lives_in, at_least=0.1)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="for 'works as a' the layer-0 MLP at the last token restores only ~0.2 of the gap; "
                          "layers 1-2 carry the rest")
def test_false_layer_0_mlp_mediates_every_relation(subject, works_as):
    pi.assert_mediates(subject, pi.mlp(0).at(6), **works_as, at_least=0.5)


# stability across relations and subject lengths ----------------------------------------------------------------
# One family is one relation with one subject length (100 facts each): the last token moves with the subject's
# length, so the sites are read at pi.last. The vocabulary has no filler words and one phrasing per relation.

FACT_FAMILIES = [(relation, length) for relation in ("lives in", "works as a", "plays the") for length in (2, 3)]


def fact_family(spec):
    relation, length = spec
    fs = [f for f in fixture_module("train_facts_gpt2").facts()
          if f["relation"] == relation and f["subject_len"] == length]
    return pi.Family([f["prompt"] for f in fs], f"{relation}, {length}-token subjects",
                     answers=tuple(f["answer"] for f in fs), params=(("subject_tokens", [f["subject"] for f in fs]),))


def recall(family):
    return {"prompts": family.inputs, "subject_tokens": dict(family.params)["subject_tokens"],
            "answer": list(family.answers)}


def test_the_stream_entering_layer_3_at_the_last_token_mediates_every_relation(subject):
    pi.assert_stable(lambda f: pi.assert_mediates(subject, pi.resid(3).at(pi.last), **recall(f), at_least=0.7),
                     st.sampled_from(FACT_FAMILIES).map(fact_family))


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the layer-0 MLP at the last token restores 0.74 for 'lives in' but 0.19-0.47 for the "
                          "other relations: where recall happens depends on the relation")
def test_false_the_layer_0_mlp_at_the_last_token_mediates_every_relation(subject):
    pi.assert_stable(lambda f: pi.assert_mediates(subject, pi.mlp(0).at(pi.last), **recall(f), at_least=0.5),
                     st.sampled_from(FACT_FAMILIES).map(fact_family))


# generated text, and stability across decoding settings ------------------------------------------------------
# The answer must appear in what the model writes (3 new tokens; the model has 8 positions). Each run generates
# with the edit installed; a site restricted to a prompt position edits that position only, never the tokens
# generated after it.

DECODINGS = [pi.Greedy(max_new_tokens=3), pi.Sample(temperature=0.7, n=8, seed=0, max_new_tokens=3),
             pi.Sample(temperature=1.0, top_p=0.9, n=8, seed=0, max_new_tokens=3)]


def answer_generated(facts, decoding=DECODINGS[0]):
    return pi.metrics.generates(facts["answer"], decoding=decoding)


def test_the_layer_0_mlp_at_the_last_token_is_needed_to_write_the_answer(subject, lives_in):
    pi.assert_necessary(subject, pi.mlp(0).at(5), inputs=lives_in["prompts"], metric=answer_generated(lives_in),
                        how=pi.Zero(), at_least=0.4)


def test_that_holds_when_sampling_too(subject, lives_in):
    pi.assert_stable(lambda d: pi.assert_necessary(subject, pi.mlp(0).at(5), inputs=lives_in["prompts"],
                                                   metric=answer_generated(lives_in, d), how=pi.Zero(),
                                                   at_least=0.4), DECODINGS, spread=0.5)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="zeroing the layer-0 MLP at the last prompt token alone leaves the answer in 43% of "
                          "greedy texts: attention at that token and later layers also carry it")
def test_false_the_layer_0_mlp_at_the_last_token_is_all_that_writes_the_answer(subject, lives_in):
    pi.assert_stable(lambda d: pi.assert_necessary(subject, pi.mlp(0).at(5), inputs=lives_in["prompts"],
                                                   metric=answer_generated(lives_in, d), how=pi.Zero(),
                                                   at_least=0.9), DECODINGS)


# knowledge editing (ROME) -----------------------------------------------------------------------------------
# 16 'lives in' facts, each rewritten to another city (seeded) in its own edited copy of the model. Neighbours: 10
# other 'lives in' facts and the subject's two other relations, which must keep their answers. The covariance of
# MLP keys comes from all 600 training facts written out. Rates have Wilson intervals over the 16 facts.

@pytest.fixture(scope="module")
def rewrites():
    import random

    rng = random.Random(0)
    everything = fixture_module("train_facts_gpt2").facts()
    lives = [f for f in everything if f["relation"] == "lives in" and f["subject_len"] == 3]
    cities = sorted({f["answer"] for f in lives})
    facts, answers = [], []
    for f in lives[:16]:
        own = [(g["prompt"], g["answer"]) for g in everything if g["subject"] == f["subject"] and g is not f]
        facts.append(pi.Fact([f["prompt"]], f["subject"], rng.choice([c for c in cities if c != f["answer"]]),
                             neighbours=[(g["prompt"], g["answer"]) for g in lives[16:26]] + own))
        answers.append(f["answer"])
    return {"facts": facts, "answers": answers, "sample": [f["prompt"] + " " + f["answer"] for f in everything]}


def test_an_edit_of_the_layer_0_mlp_at_the_last_token_rewrites_a_fact(subject, rewrites):
    pi.assert_editable(subject, pi.mlp(0).at(pi.last), rewrites["facts"], sample=rewrites["sample"],
                       efficacy=0.8, specificity=0.8)


def test_an_edit_at_layer_3_rewrites_it_too_where_tracing_finds_little(subject, rewrites):
    # tracing restores 0.06 at mlp 3 @ last (CARD), yet a rank-one edit there rewrites every fact
    pi.assert_editable(subject, pi.mlp(3).at(pi.last), rewrites["facts"], sample=rewrites["sample"],
                       efficacy=0.8, specificity=0.8)


def test_tracing_does_not_predict_the_layer_where_a_fact_is_best_edited(subject, rewrites):
    pi.assert_localisation_does_not_predict_editing(subject, rewrites["facts"], answers=rewrites["answers"],
                                                    sample=rewrites["sample"], position=pi.last, below=0.3)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="the ROME location: an edit of the MLP at the subject's last token rewrites few facts "
                          "here (recall happens at the last token)")
def test_false_an_edit_at_the_subjects_last_token_rewrites_a_fact(subject, rewrites):
    pi.assert_editable(subject, pi.mlp(1), rewrites["facts"], sample=rewrites["sample"], efficacy=0.8,
                       specificity=0.8)


@pytest.mark.xfail(strict=True, raises=pi.ClaimFailed,
                   reason="tracing peaks at layer 0 but edits succeed at every layer: per fact, the two profiles "
                          "are anti-correlated (Hase et al. 2023 found localisation a poor guide as well)")
def test_false_tracing_predicts_the_layer_where_a_fact_is_best_edited(subject, rewrites):
    pi.assert_localisation_predicts_editing(subject, rewrites["facts"], answers=rewrites["answers"],
                                            sample=rewrites["sample"], position=pi.last, at_least=0.3)
