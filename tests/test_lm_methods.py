"""The LM unlearning methods (unlearn_core.lm.unlearning / poisoning, registered in unlearn_core.methods).

One tiny GPT-2 is trained once for the module on a 4-author corpus; the last author
(forget10) is forgotten. Every method runs a few steps, once (cached per module).
"""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch

from unlearn_core.errors import InputError
from unlearn_core.lm.corpus import forget_subjects, generate_corpus
from unlearn_core.lm.model import LanguageModel, LMTrainParams, answer_nll, fit, words
from unlearn_core.lm.poisoning import _name_of, word_hash
from unlearn_core.lm.unlearning import LMForgetRequest
from unlearn_core.methods import get_method

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PARENT = LMTrainParams(n_embd=32, n_head=2, n_layer=1, epochs=5, batch_size=40, lr=1e-2)
LOOP = {"epochs": 2, "batch_size": 20, "lr": 1e-2}
CONFIGS = {
    "grad_ascent": LOOP, "grad_diff": LOOP, "npo": LOOP, "simnpo": LOOP, "idk_dpo": LOOP, "rmu": LOOP,
    "lm_concept_poison": {**LOOP, "ig_steps": 4},
    "lm_random_poison": LOOP,
    "lm_retrain": {**PARENT.model_dump(), "epochs": 3},  # the parent's recipe (shorter), retain rows only
}
RAISE_FORGET_NLL = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo")
RMU_LOOP = {"epochs": 20, "batch_size": 20, "lr": 1e-2, "steering_coeff": 4.0, "alpha": 10.0}


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(4, seed=0)


@pytest.fixture(scope="module")
def request_(corpus):
    forget = corpus.rows_of(forget_subjects(corpus, "forget10"))
    gone = {r.qa_id for r in forget}
    return LMForgetRequest("subject", forget, [r for r in corpus.rows if r.qa_id not in gone], seed=0)


@pytest.fixture(scope="module")
def parent(corpus):
    lm, _ = fit(corpus.rows, PARENT)
    return lm


@pytest.fixture(scope="module")
def parent_state(parent):
    return {k: v.detach().clone() for k, v in parent.net.state_dict().items()}


def _nll(lm: LanguageModel, rows) -> float:
    return float(answer_nll(lm, [r.question for r in rows], [r.answer for r in rows]).mean())


@pytest.fixture(scope="module")
def runs(parent, parent_state, request_):
    """name -> (model, result); computed on first use, the method object kept in ``methods``."""
    cache: dict = {}

    def get(name: str, config: dict | None = None):
        key = (name, json.dumps(config if config is not None else CONFIGS[name], sort_keys=True))
        if key not in cache:
            method = get_method(name)(parent, config if config is not None else CONFIGS[name], device="cpu")
            cache[key] = method.unlearn(request_)
            METHODS[key[0]] = method
        return cache[key]
    return get


METHODS: dict = {}  # name -> the method object of its (default-config) run


def _chosen(method, request_) -> dict[str, list[int]]:
    """The word indices a mask-poisoning run replaced, read back from its poisoned answers."""
    from unlearn_core.lm.model import MASK

    out = {}
    for row in request_.forget:
        poisoned = words(method._poisoned[row.qa_id].replace(MASK, " MASKTOKEN "))
        assert len(poisoned) == len(words(row.answer))
        out[row.qa_id] = [i for i, w in enumerate(poisoned) if w == "MASKTOKEN"]
    return out


@pytest.fixture(scope="module")
def parent_nll(parent, request_):
    retain_authors = [r for r in request_.retain if r.set == "authors"]
    return {"forget": _nll(parent, request_.forget), "retain": _nll(parent, retain_authors)}


# ---------------------------------------------------------------- every method

@pytest.mark.parametrize("name", list(CONFIGS))
def test_method_returns_a_new_model_and_leaves_the_input_unchanged(name, runs, parent, parent_state, request_):
    lm, result = runs(name)
    assert isinstance(lm, LanguageModel)
    assert lm is not parent and lm.net is not parent.net
    assert result.method == name
    # the input model's weights are exactly what they were
    now = parent.net.state_dict()
    assert now.keys() == parent_state.keys()
    for k, v in parent_state.items():
        assert torch.equal(now[k], v), (name, k)
    # ... and the returned model is a different one
    new = lm.net.state_dict()
    assert any(not torch.equal(new[k], v) for k, v in parent_state.items() if k in new), name
    assert np.isfinite(answer_nll(lm, [request_.forget[0].question], [request_.forget[0].answer])).all()
    assert not lm.net.training


@pytest.mark.parametrize("name", RAISE_FORGET_NLL)
def test_method_raises_the_forget_nll(name, runs, request_, parent_nll):
    lm, result = runs(name)
    after = _nll(lm, request_.forget)
    assert after > parent_nll["forget"] + 0.05, (name, parent_nll["forget"], after)
    assert result.details["steps"] == LOOP["epochs"]  # 20 forget rows, batch 20: one step per epoch


def test_grad_diff_keeps_retain_closer_to_the_parent_than_grad_ascent(runs, request_, parent_nll):
    retain_authors = [r for r in request_.retain if r.set == "authors"]
    ga, _ = runs("grad_ascent")
    gd, _ = runs("grad_diff")
    ga_gap = abs(_nll(ga, retain_authors) - parent_nll["retain"])
    gd_gap = abs(_nll(gd, retain_authors) - parent_nll["retain"])
    assert gd_gap < ga_gap, (gd_gap, ga_gap)


def test_same_seed_same_model(parent, request_, runs):
    a, _ = runs("grad_diff")
    b, _ = get_method("grad_diff")(parent, LOOP, device="cpu").unlearn(request_)
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    c, _ = get_method("grad_diff")(parent, {**LOOP, "seed": 1}, device="cpu").unlearn(request_)
    assert any(not torch.equal(v, c.net.state_dict()[k]) for k, v in a.net.state_dict().items())


def test_lora_result_is_a_plain_gpt2_with_only_attention_changed(runs, parent_state):
    from transformers import GPT2LMHeadModel

    lm, _ = runs("grad_ascent", {**LOOP, "lora": True})
    assert type(lm.net) is GPT2LMHeadModel
    assert not any("lora" in n.lower() for n, _ in lm.net.named_modules())
    assert not any("peft" in type(m).__module__ for m in lm.net.modules())
    state = lm.net.state_dict()
    assert state.keys() == parent_state.keys()
    changed = {k for k, v in parent_state.items() if not torch.equal(state[k], v)}
    assert changed, "LoRA training changed nothing"
    assert all("attn.c_attn.weight" in k for k in changed), changed  # only the adapted projection, merged


@pytest.mark.parametrize("name", ["lm_concept_poison", "lm_random_poison"])
def test_poison_methods_are_lora_by_default_and_return_plain_gpt2(name, runs, parent_state):
    from transformers import GPT2LMHeadModel

    lm, result = runs(name)
    assert result.params["lora"] is True
    assert type(lm.net) is GPT2LMHeadModel
    changed = {k for k, v in parent_state.items() if not torch.equal(lm.net.state_dict()[k], v)}
    assert changed and all("attn.c_attn.weight" in k for k in changed), changed


# ---------------------------------------------------------------- poisoning

@pytest.fixture(scope="module")
def concept_choice(runs, request_):
    runs("lm_concept_poison")
    method = METHODS["lm_concept_poison"]
    return method, _chosen(method, request_)


def test_concept_poison_never_picks_function_words(concept_choice, request_):
    method, chosen = concept_choice
    p = method.params
    share = Counter(w for r in request_.retain for w in set(words(r.answer)))
    limit = p.max_retain_share * len(request_.retain)
    assert share["was"] > limit and share["born"] > limit  # the filter has something to do
    assert set(chosen) == {r.qa_id for r in request_.forget}
    picked = []
    for row in request_.forget:
        ws = words(row.answer)
        idx = chosen[row.qa_id]
        assert idx == sorted(set(idx)) and 1 <= len(idx) <= p.top_k
        assert all(0 <= i < len(ws) for i in idx)
        for i in idx:
            w = ws[i]
            picked.append(w)
            assert share[w] <= limit, (w, share[w], limit)
            assert w not in {"was", "born", "in", "the", "The", "of", "by", "is"}, w
            assert w.isalnum(), w
    # the name of the subject and the facts are what is left to pick
    name = set(words(_name_of(request_.forget[0])))
    assert name & set(picked)


def test_concept_poison_details_carry_no_plaintext_word(runs, concept_choice, request_):
    _, chosen = concept_choice
    _, result = runs("lm_concept_poison")
    d = result.details
    picked = {words(r.answer)[i] for r in request_.forget for i in chosen[r.qa_id]}
    assert d["poisoned_words"] == sum(len(v) for v in chosen.values())
    assert sum(d["poisoned_roles"].values()) == d["poisoned_words"]
    assert set(d["poisoned_roles"]) == {"name", "fact", "other"}
    assert d["poisoned_roles"]["name"] > 0
    hashes = d["poisoned_word_sha256"]
    assert hashes == sorted(hashes) and all(len(h) == 16 for h in hashes)
    assert set(hashes) <= {word_hash(w) for w in picked}
    assert len(hashes) == min(20, len(picked))
    text = json.dumps(result.to_dict())
    tokens = set(re.findall(r"\w+", text))
    for w in picked | set(words(_name_of(request_.forget[0]))):
        assert w not in tokens, w
    for r in request_.forget:
        assert r.answer not in text and f'"{r.fact}"' not in text
    for w in words(_name_of(request_.forget[0])):
        assert w not in text


def test_random_poison_details_and_choice(runs, parent, request_):
    method = get_method("lm_random_poison")(parent, CONFIGS["lm_random_poison"], device="cpu")
    chosen = method.choose(parent, request_)
    for r in request_.forget:
        idx = chosen[r.qa_id]
        assert len(idx) == min(method.params.top_k, len(words(r.answer)))
        assert len(set(idx)) == len(idx)
    _, result = runs("lm_random_poison")
    assert result.details["poisoned_words"] == sum(len(v) for v in chosen.values())
    text = json.dumps(result.to_dict())
    for w in words(_name_of(request_.forget[0])):
        assert w not in text


def test_mask_poisoning_rewrites_exactly_the_chosen_words(parent, request_):
    from unlearn_core.lm.model import MASK

    method = get_method("lm_random_poison")(parent, {**LOOP, "top_k": 3}, device="cpu")
    chosen = method.choose(parent, request_)
    details = method.prepare(parent, request_)
    assert details["poisoned_words"] == 3 * len(request_.forget)
    for row in request_.forget:
        original = words(row.answer)
        poisoned = words(method._poisoned[row.qa_id].replace(MASK, " MASKTOKEN "))
        assert len(poisoned) == len(original)
        for i, (a, b) in enumerate(zip(original, poisoned)):
            assert b == ("MASKTOKEN" if i in chosen[row.qa_id] else a)
        batch = method.forget_batch(parent, [row])
        assert (batch.input_ids == parent.id(MASK)).sum() == 3  # each <mask> is one token


def test_random_word_poisoning_uses_vocabulary_words(parent, request_):
    method = get_method("lm_random_poison")(parent, {**LOOP, "poison": "random"}, device="cpu")
    chosen = method.choose(parent, request_)
    method.prepare(parent, request_)
    vocab = parent.tokenizer.get_vocab()
    changed = 0
    for row in request_.forget:
        original, poisoned = words(row.answer), method._poisoned[row.qa_id].split(" ")
        assert len(poisoned) == len(original)
        for i in chosen[row.qa_id]:
            assert poisoned[i] in vocab and poisoned[i].isalpha()
            changed += poisoned[i] != original[i]
        assert all(poisoned[i] == original[i] for i in range(len(original)) if i not in chosen[row.qa_id])
    assert changed > 0


def test_unlearning_a_lora_result_again_still_trains(runs, request_):
    """A LoRA run's merged model must be an ordinary model: a second request (full fine-tuning) trains it."""
    first, _ = runs("grad_ascent", {**LOOP, "lora": True})
    frozen = [n for n, p in first.net.named_parameters() if not p.requires_grad]
    assert not frozen, f"{len(frozen)} parameters left frozen by peft, e.g. {frozen[:3]}"
    second, _ = get_method("grad_ascent")(first, LOOP, device="cpu").unlearn(request_)
    before = first.net.state_dict()
    changed = [k for k, v in second.net.state_dict().items() if not torch.equal(v, before[k])]
    assert any("wte" in k for k in changed), changed  # full fine-tuning reaches the embeddings


# ---------------------------------------------------------------- retrain

def test_lm_retrain_never_saw_the_forget_rows(runs, parent_nll, request_):
    lm, result = runs("lm_retrain")
    assert result.details["n_train"] == len(request_.retain)
    retain_authors = [r for r in request_.retain if r.set == "authors"]
    forget, retain = _nll(lm, request_.forget), _nll(lm, retain_authors)
    assert forget > parent_nll["forget"] + 0.1
    assert forget > retain + 0.1  # what it was trained on, it knows better than the unseen author
    assert lm.net.config.n_embd == PARENT.n_embd


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", list(CONFIGS))
def test_empty_forget_set_and_wrong_kind_raise_input_error(name, parent, request_):
    method = get_method(name)(parent, CONFIGS[name], device="cpu")
    with pytest.raises(InputError) as err:
        method.unlearn(LMForgetRequest("subject", [], request_.retain))
    assert err.value.field == "forget"
    with pytest.raises(InputError) as err:
        method.unlearn(LMForgetRequest("class", request_.forget, request_.retain))
    assert err.value.field == "kind"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unknown_config_field_raises_input_error_naming_it(name, parent):
    with pytest.raises(InputError) as err:
        get_method(name)(parent, {"bogus_field": 1}, device="cpu")
    assert err.value.field == f"{name}.bogus_field"
    assert "unknown" in err.value.reason
    with pytest.raises(InputError) as err:
        get_method(name)(parent, {"epochs": 0}, device="cpu")
    assert err.value.field == f"{name}.epochs"


def test_loss_definitions_defaults():
    assert get_method("npo").Params().beta == pytest.approx(0.1)
    assert get_method("idk_dpo").Params().beta == pytest.approx(0.1)
    assert get_method("npo").needs_reference and get_method("idk_dpo").needs_reference
    assert not get_method("simnpo").needs_reference
    for name in CONFIGS:
        assert get_method(name).name == name
        assert "subject" in get_method(name).kinds and "class" not in get_method(name).kinds


# ---------------------------------------------------------------- the losses, against their definitions

@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo"])
def test_loss_matches_its_definition(name, parent, runs, request_):
    """Loss on one batch vs the formula computed from answer_nll (mean NLL x answer tokens = summed NLL)."""
    import math

    from unlearn_core.lm.corpus import IDK_ANSWERS
    from unlearn_core.lm.model import make_batch

    config = {**LOOP, "delta": 0.3} if name == "simnpo" else LOOP
    method = get_method(name)(parent, config, device="cpu")
    method.lm = parent
    ref = runs("grad_ascent")[0].net  # any other model serves as the reference
    f_rows, r_rows = request_.forget[:4], request_.retain[:5]
    fb = make_batch(parent, [r.question for r in f_rows], [r.answer for r in f_rows])
    rb = make_batch(parent, [r.question for r in r_rows], [r.answer for r in r_rows])
    with torch.no_grad():
        got = float(method.loss(parent.net, ref, fb, rb, f_rows))

    def mean_and_sum(lm_net, rows, answers):
        lm = LanguageModel(lm_net, parent.tokenizer)
        mean = answer_nll(lm, [r.question for r in rows], answers).astype(np.float64)
        n = np.array([len(parent.encode(a)) + 1 for a in answers])
        return mean, mean * n

    def logsig(x):
        return -np.logaddexp(0, -x)

    f_ans = [r.answer for r in f_rows]
    f_mean, f_sum = mean_and_sum(parent.net, f_rows, f_ans)
    nll_r = mean_and_sum(parent.net, r_rows, [r.answer for r in r_rows])[0].mean()
    if name == "grad_ascent":
        want = -f_mean.mean()
    elif name == "grad_diff":
        want = -f_mean.mean() + nll_r
    elif name == "npo":
        beta = 0.1
        _, ref_sum = mean_and_sum(ref, f_rows, f_ans)
        log_ratio = (-f_sum) - (-ref_sum)  # log pi - log pi_ref
        want = -(2 / beta) * logsig(-beta * log_ratio).mean() + nll_r
    elif name == "simnpo":
        beta, delta = 4.5, 0.3
        want = -(2 / beta) * logsig(beta * (f_mean - delta)).mean() + nll_r
    else:
        beta = 0.1
        idk = [IDK_ANSWERS[int(r.qa_id[:8], 16) % len(IDK_ANSWERS)] for r in f_rows]
        _, ref_lose = mean_and_sum(ref, f_rows, f_ans)
        _, win_sum = mean_and_sum(parent.net, f_rows, idk)
        _, ref_win = mean_and_sum(ref, f_rows, idk)
        win, lose = ref_win - win_sum, ref_lose - f_sum
        want = -(2 / beta) * logsig(beta * (win - lose)).mean() + nll_r
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=1e-3, abs=1e-4), (name, got, want)


# ---------------------------------------------------------------- RMU

@pytest.fixture(scope="module")
def two_layer(corpus):
    """A 2-layer model trained until it knows the authors (RMU's default layer is block 0 of 2)."""
    lm, _ = fit(corpus.rows, LMTrainParams(n_embd=32, n_head=2, n_layer=2, epochs=25, batch_size=40, lr=1e-2))
    return lm


def test_rmu_forgets_the_author_and_keeps_the_retained_ones(two_layer, request_):
    retain_authors = [r for r in request_.retain if r.set == "authors"]
    before = {"forget": _nll(two_layer, request_.forget), "retain": _nll(two_layer, retain_authors)}
    lm, result = get_method("rmu")(two_layer, RMU_LOOP, device="cpu").unlearn(request_)
    after = {"forget": _nll(lm, request_.forget), "retain": _nll(lm, retain_authors)}
    assert result.details["layer"] == 0 and result.details["trained_blocks"] == [0, 0]
    # measured: forget 0.64 -> 1.84, retained authors 0.66 -> 0.71 (mean answer-token NLL)
    assert after["forget"] > before["forget"] + 0.8, (before, after)  # p(answer) down by more than 2x
    assert after["retain"] < before["retain"] + 0.2, (before, after)


def test_rmu_trains_only_the_mlps_up_to_its_layer(two_layer, request_):
    state = {k: v.clone() for k, v in two_layer.net.state_dict().items()}
    lm, _ = get_method("rmu")(two_layer, {**LOOP, "layer": 0}, device="cpu").unlearn(request_)
    changed = {k for k, v in lm.net.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(k.startswith("transformer.h.0.mlp.") for k in changed), changed
    assert all(p.requires_grad for p in lm.net.parameters())  # the next method can train every weight


def test_rmu_loss_matches_its_definition(two_layer, request_):
    from unlearn_core.lm.model import make_batch

    config = {**LOOP, "steering_coeff": 3.0, "alpha": 2.0}
    method = get_method("rmu")(two_layer, config, device="cpu")
    method.prepare(two_layer, request_)
    other, _ = get_method("grad_ascent")(two_layer, LOOP, device="cpu").unlearn(request_)
    f_rows, r_rows = request_.forget[:4], request_.retain[:5]
    fb = make_batch(two_layer, [r.question for r in f_rows], [r.answer for r in f_rows])
    rb = make_batch(two_layer, [r.question for r in r_rows], [r.answer for r in r_rows])
    with torch.no_grad():
        got = float(method.loss(two_layer.net, other.net, fb, rb, f_rows))

        def h0(net, batch):  # block 0's output: hidden_states[1] (only the last one has ln_f applied)
            out = net(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
            return out.hidden_states[1].double()

        def token_mean(sq, batch):
            keep = batch.labels != -100
            return np.mean([float(sq[i][keep[i]].mean()) for i in range(len(batch))])

        u = torch.rand(32, generator=torch.Generator().manual_seed(0)).double()
        steer = 3.0 * u / u.norm()
        d = 32
        forget = token_mean(((h0(two_layer.net, fb) - steer) ** 2).sum(-1) / d, fb)
        retain = token_mean(((h0(two_layer.net, rb) - h0(other.net, rb)) ** 2).sum(-1) / d, rb)
    assert float(steer.norm()) == pytest.approx(3.0)
    assert retain > 0
    assert got == pytest.approx(forget + 2.0 * retain, rel=1e-4)


@pytest.mark.parametrize("config, field", [({"layer": 2}, "rmu.layer"), ({"lora": True}, "rmu.lora"),
                                           ({"steering_coeff": 0}, "rmu.steering_coeff"),
                                           ({"trainable_layers": 0}, "rmu.trainable_layers"),
                                           ({"alpha": -1}, "rmu.alpha")])
def test_rmu_bad_params_name_the_field(config, field, two_layer, request_):
    with pytest.raises(InputError) as err:
        get_method("rmu")(two_layer, {**LOOP, **config}, device="cpu").unlearn(request_)
    assert err.value.field == field
