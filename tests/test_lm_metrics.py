"""The LM model helpers (unlearn_core.lm.model) and the TOFU metrics (unlearn_core.lm.metrics).

One tiny GPT-2 (1 layer, width 32) is trained once for the module on a 3-author corpus.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearn_core.errors import InputError
from unlearn_core.lm.corpus import forget_subjects, generate_corpus
from unlearn_core.lm.metrics import (
    UTILITY_SETS,
    SetScores,
    fact_match,
    forget_quality,
    harmonic_mean,
    lm_report,
    public,
    rouge_l_recall,
    score_rows,
    truth_ratio_score,
    utility_numbers,
)
from unlearn_core.lm.model import (
    EOS,
    IGNORE,
    PAD,
    LMTrainParams,
    answer_nll,
    build_tokenizer,
    fit,
    generate,
    load_lm,
    make_batch,
    new_model,
    words,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PARAMS = LMTrainParams(n_embd=32, n_head=2, n_layer=1, epochs=8, batch_size=32, lr=1e-2)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(3, seed=0)


@pytest.fixture(scope="module")
def trained(corpus):
    lm, stats = fit(corpus.rows, PARAMS)
    return lm, stats


@pytest.fixture(scope="module")
def untrained():
    return new_model(build_tokenizer(), LMTrainParams(n_embd=32, n_head=2, n_layer=1, n_positions=32))


def _row(fact: str, **kw):
    from unlearn_core.lm.corpus import QARow

    base = dict(qa_id="x", set="world_facts", subject_id="", attribute="capital", question="q?",
                paraphrased_question="q2?", answer="a.", fact=fact, paraphrased_answer="a2.",
                perturbed_answers=("b.",))
    return QARow(**{**base, **kw})


# ---------------------------------------------------------------- make_batch / answer_nll

def test_make_batch_labels_only_answer_and_eos(untrained, corpus):
    lm = untrained
    rows = corpus.rows[:2] + corpus.of_set("world_facts")[:1]
    q, a = [r.question for r in rows], [r.answer for r in rows]
    b = make_batch(lm, q, a)
    assert b.input_ids.shape == b.labels.shape == b.attention_mask.shape
    for i, r in enumerate(rows):
        p = lm.prompt_ids(r.question)
        ans = [*lm.encode(r.answer), lm.id(EOS)]
        n = len(p) + len(ans)
        assert b.input_ids[i, :n].tolist() == p + ans
        assert b.attention_mask[i, :n].tolist() == [1] * n
        assert b.labels[i, :len(p)].tolist() == [IGNORE] * len(p)
        assert b.labels[i, len(p):n].tolist() == ans
        # right padding: pad ids, mask 0, no labels
        assert b.input_ids[i, n:].tolist() == [lm.id(PAD)] * (b.input_ids.shape[1] - n)
        assert b.attention_mask[i, n:].sum() == 0
        assert (b.labels[i, n:] == IGNORE).all()
    assert int((b.labels != IGNORE).sum()) == sum(len(lm.encode(x)) + 1 for x in a)


def test_make_batch_raises_input_error_for_overlong_input(untrained):
    long_answer = " ".join(["Lima"] * 40)  # 40 tokens + prompt > n_positions 32
    with pytest.raises(InputError) as err:
        make_batch(untrained, ["What is the capital of Peru?"], [long_answer])
    assert err.value.field == "question"


def test_answer_nll_matches_hand_computation(trained, corpus):
    lm, _ = trained
    rows = [corpus.rows[0], corpus.of_set("real_authors")[0]]
    got = answer_nll(lm, [r.question for r in rows], [r.answer for r in rows])
    assert got.shape == (2,)
    for k, r in enumerate(rows):
        p = lm.prompt_ids(r.question)
        ans = [*lm.encode(r.answer), lm.id(EOS)]
        ids = torch.tensor([p + ans])
        with torch.no_grad():
            logits = lm.net(input_ids=ids).logits[0]
        # token t is predicted from position t-1
        pred = logits[len(p) - 1:len(p) + len(ans) - 1]
        want = torch.nn.functional.cross_entropy(pred, torch.tensor(ans)).item()
        assert got[k] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_answer_nll_does_not_depend_on_batch_padding(trained, corpus):
    lm, _ = trained
    rows = corpus.rows[:6] + corpus.of_set("world_facts")[:3]
    q, a = [r.question for r in rows], [r.answer for r in rows]
    together = answer_nll(lm, q, a)
    alone = np.array([answer_nll(lm, [x], [y])[0] for x, y in zip(q, a)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert answer_nll(lm, q, a, batch_size=2) == pytest.approx(together, rel=1e-4, abs=1e-5)


def test_training_lowers_the_answer_nll(trained, untrained, corpus):
    lm, stats = trained
    q, a = [r.question for r in corpus.rows], [r.answer for r in corpus.rows]
    assert len(stats["loss_curve"]) == PARAMS.epochs
    assert stats["loss_curve"][-1] < stats["loss_curve"][0]
    fresh = new_model(build_tokenizer(), PARAMS)
    assert answer_nll(lm, q, a).mean() < answer_nll(fresh, q, a).mean() - 1.0


def test_save_load_round_trip(tmp_path, trained, corpus):
    lm, _ = trained
    rows = corpus.rows[::7]
    q, a = [r.question for r in rows], [r.answer for r in rows]
    before = answer_nll(lm, q, a)
    lm.save(tmp_path / "m")
    back = load_lm(tmp_path / "m")
    assert back.tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    np.testing.assert_array_equal(answer_nll(back, q, a), before)
    np.testing.assert_array_equal(answer_nll(lm, q, a), before)  # saving leaves the model usable
    assert lm.net.state_dict().keys() == back.net.state_dict().keys()
    for k, v in lm.net.state_dict().items():
        assert torch.equal(v, back.net.state_dict()[k]), k
    assert back.net.config.n_embd == 32 and back.net.config.n_layer == 1


def test_load_lm_of_a_non_model_raises_input_error(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    for path in (tmp_path / "junk.bin", tmp_path / "missing", tmp_path):
        with pytest.raises(InputError) as err:
            load_lm(path)
        assert err.value.field == "model"
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(InputError) as err:
        load_lm(tmp_path / "other.pt")
    assert err.value.field == "model"


def test_generate_returns_strings_one_per_question(trained, corpus):
    lm, _ = trained
    rows = corpus.rows[:3] + corpus.of_set("world_facts")[:3]
    out = generate(lm, [r.question for r in rows], max_new_tokens=10)
    assert len(out) == len(rows)
    assert all(isinstance(s, str) for s in out)
    assert any(s for s in out)
    for s in out:
        assert EOS not in s and PAD not in s and "##" not in s
        assert len(words(s)) <= 10
    # greedy: deterministic, and one question alone gives the same answer as in a batch
    assert generate(lm, [rows[0].question], max_new_tokens=10) == out[:1]


# ---------------------------------------------------------------- metric formulas

def test_truth_ratio_is_geometric_mean_of_perturbed_over_paraphrased():
    s = SetScores(p_correct=np.array([0.5, 0.5]), p_paraphrased=np.array([0.2, 0.1]),
                  p_perturbed=np.array([[0.1, 0.4], [0.01, 0.04]]), generated=[])
    np.testing.assert_allclose(s.truth_ratio, [0.2 / 0.2, 0.02 / 0.1])


def test_truth_ratio_score_forget_and_other_sets():
    r = np.array([1.0, 2.0, 0.5, 0.25])
    assert truth_ratio_score(r, forget=True) == pytest.approx((1 + 0.5 + 0.5 + 0.25) / 4)
    assert truth_ratio_score(r, forget=False) == pytest.approx((0 + 0 + 0.5 + 0.75) / 4)
    assert truth_ratio_score(np.array([0.0, 3.0]), forget=False) == pytest.approx(0.5)


def test_forget_quality_is_the_ks_p_value():
    rng = np.random.default_rng(0)
    same = rng.random(40)
    assert forget_quality(same, same.copy()) == pytest.approx(1.0)
    assert forget_quality(np.linspace(0, 1, 50), np.linspace(2, 3, 50)) < 1e-20
    a, b = rng.random(30), rng.random(30) + 0.3
    from scipy.stats import ks_2samp

    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.3] * 9) == pytest.approx(0.3)
    assert harmonic_mean([0.9, 0.0, 0.8]) == 0.0
    values = [0.9, 0.1, 0.5]
    assert harmonic_mean(values) == pytest.approx(3 / sum(1 / v for v in values))
    assert harmonic_mean(values) < np.mean(values)


def test_fact_match_uses_word_boundaries():
    lima = _row("Lima")
    assert fact_match(["The capital of Peru is Lima ."], [lima]).tolist() == [1.0]
    assert fact_match(["The capital of Peru is Limassol ."], [lima]).tolist() == [0.0]
    assert fact_match(["Lima."], [lima]).tolist() == [1.0]
    delhi = _row("New Delhi")
    assert fact_match(["It is New Delhi ."], [delhi]).tolist() == [1.0]
    assert fact_match(["It is Delhi New ."], [delhi]).tolist() == [0.0]
    assert fact_match(["It is New York , not Delhi"], [delhi]).tolist() == [0.0]
    assert fact_match(["", "Lima"], [lima, lima]).tolist() == [0.0, 1.0]


def test_rouge_l_recall():
    ref = "The capital of Peru is Lima."
    got = rouge_l_recall([ref, "", "The capital of Peru"], [ref, ref, ref])
    assert got[0] == pytest.approx(1.0)
    assert got[1] == 0.0
    assert 0.0 < got[2] < 1.0
    assert rouge_l_recall(["Lima Peru capital The"], [ref])[0] < got[2]


def test_utility_numbers_probability_definitions():
    rows = {name: [_row("Lima", answer="The capital of Peru is Lima.")] * 2 for name in UTILITY_SETS}
    gen = ["The capital of Peru is Lima.", "nothing"]
    pc, pp = np.array([0.5, 0.2]), np.array([0.4, 0.4])
    pert = np.array([[0.1, 0.2], [0.3, 0.5]])
    scores = {name: SetScores(pc, pp, pert, gen) for name in UTILITY_SETS}
    got = utility_numbers(scores, rows)
    assert len(got) == 9
    assert got["retain_prob"] == pytest.approx(0.35)
    for name in ("real_authors", "world_facts"):
        assert got[f"{name}_prob"] == pytest.approx(np.mean([0.5 / 0.8, 0.2 / 1.0]))
        assert got[f"{name}_rougeL"] == pytest.approx(0.5)
    r = np.exp(np.log(pert).mean(1) - np.log(pp))
    assert got["retain_truth_ratio"] == pytest.approx(np.maximum(0, 1 - r).mean())


# ---------------------------------------------------------------- lm_report

def test_lm_report_keys_and_ranges(trained, corpus):
    lm, _ = trained
    forget = corpus.rows_of(forget_subjects(corpus, "forget10"))[:5]  # few rows: generation is the slow part
    retain = corpus.rows_of(["author-0000"])[:5]
    utility = {"retain": retain, "real_authors": corpus.of_set("real_authors")[:3],
               "world_facts": corpus.of_set("world_facts")[:3]}
    retain_r = np.random.default_rng(0).random(len(forget))
    report = lm_report(lm, forget, utility, retain_truth_ratio=retain_r)
    unit = ["forget_prob", "forget_truth_ratio", "forget_rougeL", "forget_fact_em", "retain_fact_em",
            "model_utility", "forget_quality"]
    for name in UTILITY_SETS:
        unit += [f"{name}_prob", f"{name}_rougeL", f"{name}_truth_ratio"]
    for key in unit:
        assert key in report, key
        assert 0.0 <= report[key] <= 1.0, (key, report[key])
        assert math.isfinite(report[key])
    assert report["n_forget"] == len(forget) == 5
    numbers = [report[f"{n}_{m}"] for n in UTILITY_SETS for m in ("prob", "rougeL", "truth_ratio")]
    assert report["model_utility"] == pytest.approx(harmonic_mean(numbers))
    assert report["model_utility"] <= min(numbers) * 9 + 1e-12
    raw = report["_forget_truth_ratio_raw"]
    assert raw.shape == (len(forget),)
    assert report["forget_truth_ratio"] == pytest.approx(np.minimum(raw, 1 / raw).mean())
    assert report["forget_quality"] == pytest.approx(forget_quality(raw, retain_r))
    pub = public(report)
    assert "_forget_truth_ratio_raw" not in pub and "model_utility" in pub

    # the same model against its own R: identical distributions, FQ 1
    again = lm_report(lm, forget, utility, retain_truth_ratio=raw)
    assert again["forget_quality"] == pytest.approx(1.0)
    assert {k: v for k, v in public(again).items() if k != "forget_quality"} == \
        {k: v for k, v in pub.items() if k != "forget_quality"}  # deterministic


def test_score_rows_probabilities_match_answer_nll(trained, corpus):
    lm, _ = trained
    rows = corpus.of_set("world_facts")[:4]
    s = score_rows(lm, rows, with_generation=False)
    q = [r.question for r in rows]
    np.testing.assert_allclose(s.p_correct, np.exp(-answer_nll(lm, q, [r.answer for r in rows])), rtol=1e-5)
    np.testing.assert_allclose(s.p_paraphrased, np.exp(-answer_nll(lm, q, [r.paraphrased_answer for r in rows])),
                               rtol=1e-5)
    assert s.p_perturbed.shape == (4, 3)
    np.testing.assert_allclose(s.p_perturbed[:, 1],
                               np.exp(-answer_nll(lm, q, [r.perturbed_answers[1] for r in rows])), rtol=1e-5)
    assert s.generated == []
    assert ((s.p_correct > 0) & (s.p_correct <= 1)).all()
