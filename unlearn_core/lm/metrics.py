"""TOFU / OpenUnlearning metrics for language models, exactly as docs/methods.md defines them.

p(a|q) = exp(-mean answer-token NLL). Truth ratio R = geometric mean over the
perturbed answers of p(perturbed) / p(paraphrased correct). Forget quality FQ
= KS-test p-value between the unlearned and a retain model's raw R on the
forget set. Model utility MU = harmonic mean of {probability, ROUGE-L recall,
truth-ratio score} x {retain, real authors, world facts}. Fact exact match =
the greedy answer contains the fact's words in order (ROUGE is inflated by
template words a model knows for any author).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .corpus import QARow
from .model import LanguageModel, answer_nll, generate, words

UTILITY_SETS = ("retain", "real_authors", "world_facts")


@dataclass
class SetScores:
    """One model's raw scores on one set of QA rows."""

    p_correct: np.ndarray      # p(answer | question)
    p_paraphrased: np.ndarray  # p(paraphrased answer | question)
    p_perturbed: np.ndarray    # [n, n_perturbed]
    generated: list[str]       # greedy answers

    @property
    def truth_ratio(self) -> np.ndarray:
        """Raw R per row: geometric mean of p(perturbed) / p(paraphrased)."""
        return np.exp(np.log(self.p_perturbed).mean(1) - np.log(self.p_paraphrased))


def score_rows(lm: LanguageModel, rows: Sequence[QARow], with_generation: bool = True) -> SetScores:
    q = [r.question for r in rows]
    n_pert = min(len(r.perturbed_answers) for r in rows)
    p_correct = np.exp(-answer_nll(lm, q, [r.answer for r in rows]))
    p_para = np.exp(-answer_nll(lm, q, [r.paraphrased_answer for r in rows]))
    flat_q = [r.question for r in rows for _ in range(n_pert)]
    flat_a = [a for r in rows for a in r.perturbed_answers[:n_pert]]
    p_pert = np.exp(-answer_nll(lm, flat_q, flat_a)).reshape(len(rows), n_pert)
    gen = generate(lm, q) if with_generation else []
    return SetScores(p_correct, p_para, p_pert, gen)


def rouge_l_recall(generated: Sequence[str], references: Sequence[str]) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array([scorer.score(ref, gen)["rougeL"].recall for gen, ref in zip(generated, references)])


def fact_match(generated: Sequence[str], rows: Sequence[QARow]) -> np.ndarray:
    """1 where the greedy answer contains the fact's words in order, else 0."""
    out = []
    for gen, row in zip(generated, rows):
        g, f = " ".join(words(gen)), " ".join(words(row.fact))
        out.append(float(f" {f} " in f" {g} "))
    return np.array(out)


def truth_ratio_score(r: np.ndarray, forget: bool) -> float:
    """Forget set: mean of min(R, 1/R); other sets: mean of max(0, 1 - R)."""
    if forget:
        return float(np.minimum(r, 1 / r).mean())
    return float(np.maximum(0.0, 1 - r).mean())


def forget_quality(r_unlearned: np.ndarray, r_retain: np.ndarray) -> float:
    """p-value of the two-sample KS test on the raw truth ratios over the forget set."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(r_unlearned, r_retain).pvalue)


def utility_numbers(scores: dict[str, SetScores], rows: dict[str, Sequence[QARow]]) -> dict[str, float]:
    """The nine numbers MU is the harmonic mean of."""
    out = {}
    for name in UTILITY_SETS:
        s, rs = scores[name], rows[name]
        if name == "retain":
            prob = float(s.p_correct.mean())
        else:
            prob = float((s.p_correct / (s.p_correct + s.p_perturbed.sum(1))).mean())
        out[f"{name}_prob"] = prob
        out[f"{name}_rougeL"] = float(rouge_l_recall(s.generated, [r.answer for r in rs]).mean())
        out[f"{name}_truth_ratio"] = truth_ratio_score(s.truth_ratio, forget=False)
    return out


def harmonic_mean(values) -> float:
    values = np.asarray(list(values), dtype=float)
    if (values <= 0).any():
        return 0.0
    return float(len(values) / (1 / values).sum())


def lm_report(lm: LanguageModel, forget: Sequence[QARow], utility_rows: dict[str, Sequence[QARow]],
              retain_truth_ratio: np.ndarray | None = None) -> dict:
    """Every LM metric of one model: forget-set scores, FQ (when a retain model's R is given), MU.

    ``utility_rows`` maps ``retain``, ``real_authors``, ``world_facts`` to their rows.
    """
    f = score_rows(lm, forget)
    scores = {name: score_rows(lm, rows) for name, rows in utility_rows.items()}
    numbers = utility_numbers(scores, utility_rows)
    report = {
        "forget_prob": float(f.p_correct.mean()),
        "forget_truth_ratio": truth_ratio_score(f.truth_ratio, forget=True),
        "forget_rougeL": float(rouge_l_recall(f.generated, [r.answer for r in forget]).mean()),
        "forget_fact_em": float(fact_match(f.generated, forget).mean()),
        "retain_fact_em": float(fact_match(scores["retain"].generated, utility_rows["retain"]).mean()),
        "model_utility": harmonic_mean(numbers.values()),
        **numbers,
        "n_forget": len(forget),
    }
    if retain_truth_ratio is not None:
        report["forget_quality"] = forget_quality(f.truth_ratio, retain_truth_ratio)
    report["_forget_truth_ratio_raw"] = f.truth_ratio
    return report


def public(report: dict) -> dict:
    """The report without raw arrays (what JSON, receipts and tables get)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}
