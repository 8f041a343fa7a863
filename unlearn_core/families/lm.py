"""Language models (GPT-2 on the TOFU-like corpus): LM metrics and gates (``lm_gates``).

The corpus lives in the dataset directory as ``corpus/`` (same DVC version as
the images, so one data md5 covers what every model was trained on). An
author is a data subject; a QA row's ``qa_id`` is its sample id.

Gates without a retain model: the pipeline cannot train an exact reference
for every request, but it can ask the candidate about authors nobody ever
trained on (``probe_authors``, generated with another seed). A forgotten
author must be answered no better than those: forget-set fact exact match at
most the probe authors' plus ``max_fact_em_gap`` and ``fact_em_sigmas``
binomial standard errors; and model utility at least ``min_utility_ratio`` of
the parent's, and retained authors' fact exact match at least
``min_retain_em_ratio`` of the parent's (MU alone hardly moves when a method
loses half of the retained facts). The KS p-value between the forget set's and the probe authors'
truth ratios is reported as ``forget_quality_vs_unseen``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from unlearn_core.config import Params, typed_section
from unlearn_core.errors import InputError
from unlearn_core.families.base import floats
from unlearn_core.gates import GateCheck, GateOutcome
from unlearn_core.lm.corpus import Corpus, QARow, generate_corpus, load_corpus, write_corpus

REPORT_KEYS = ("forget_fact_em", "probe_fact_em", "retain_fact_em", "model_utility", "forget_truth_ratio",
               "forget_quality_vs_unseen", "forget_prob")
CORPUS_DIR = "corpus"


class CorpusParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_authors: int = Field(40, ge=2)
    n_perturbed: int = Field(3, ge=1)
    seed: int = 0


class LMGateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_fact_em_gap: float = Field(0.05, ge=0)     # forget fact EM minus the probe authors' fact EM
    fact_em_sigmas: float = Field(2.0, ge=0)       # binomial standard errors on top (small forget sets)
    min_utility_ratio: float = Field(0.9, ge=0, le=1)  # model utility >= this x the parent's
    min_retain_em_ratio: float = Field(0.9, ge=0, le=1)  # retained authors' fact EM >= this x the parent's
    probe_authors: int = Field(10, ge=1)           # never-trained authors the candidate is compared with
    utility_rows: int = Field(100, ge=1)           # retained-author rows in the utility score


class LMFamily:
    name = "lm"
    exact_method = "lm_retrain"
    train_section = "lm_train"
    batches = False
    data_kind = "corpus"

    def __init__(self, params: Params, arch: str, state_dir: Path):
        from unlearn_core.lm.model import LMTrainParams

        self.params, self.arch = params, arch
        self.corpus_params = typed_section(params, "lm_corpus", CorpusParams)
        self.train_params = typed_section(params, "lm_train", LMTrainParams)
        self.gates = typed_section(params, "lm_gates", LMGateParams)

    # ---------------------------------------------------------------- data

    def prepare_data(self, data_dir: Path) -> None:
        """Write the generated corpus into the dataset directory (once)."""
        target = Path(data_dir) / CORPUS_DIR
        if not (target / "shards").exists():
            p = self.corpus_params
            write_corpus(target, generate_corpus(p.n_authors, p.n_perturbed, p.seed))

    def load_data(self, data_dir: Path) -> Corpus:
        return load_corpus(Path(data_dir) / CORPUS_DIR)

    def forget_rows(self, request, data_dir: Path, corpus: Corpus) -> list[dict]:
        """The corpus rows the request deletes, as validation rows (``sample_id`` = ``qa_id``)."""
        if request.kind == "class":
            raise InputError("kind", "language models take subject and samples deletions, not class")
        if request.kind == "subject":
            rows = corpus.rows_of([request.forget.subject])
        else:
            wanted = set(request.forget.sample_ids)
            rows = [r for r in corpus.rows if r.qa_id in wanted]
        if not rows:
            raise InputError("forget", f"the {request.kind} request matches no rows in the current corpus")
        return [{"sample_id": r.qa_id, "subject_id": r.subject_id, "set": r.set,
                 "question_len": len(r.question), "answer_len": len(r.answer)} for r in rows]

    def forget_request(self, request, corpus: Corpus, arch: str, forget_ids: list[str], substitute=None):
        from unlearn_core.lm.unlearning import LMForgetRequest

        gone = set(forget_ids)
        return LMForgetRequest(request.kind, [r for r in corpus.rows if r.qa_id in gone],
                               [r for r in corpus.rows if r.qa_id not in gone])

    def retained_request(self, spec: dict, corpus: Corpus, arch: str, substitute=None):
        """A version's method request rebuilt from its corpus version alone (the deleted rows are gone)."""
        from unlearn_core.lm.unlearning import LMForgetRequest

        return LMForgetRequest(spec["kind"], [], list(corpus.rows), retained_only=True)

    def tombstone(self, data_dir: Path, ids: list[str], request_id: str) -> None:
        from unlearn_core.lm.corpus import delete_rows

        delete_rows(Path(data_dir) / CORPUS_DIR, {i: request_id for i in ids})

    # ---------------------------------------------------------------- models

    def load(self, path):
        from unlearn_core.lm.model import load_lm
        from unlearn_core.models import pick_device

        return load_lm(path, pick_device())

    def save(self, model, path, data) -> None:
        model.save(path)

    def train_base(self, data_dir: Path, workdir: Path, path: Path) -> dict:
        from unlearn_core.lm.metrics import fact_match
        from unlearn_core.lm.model import fit, generate
        from unlearn_core.models import pick_device

        self.prepare_data(data_dir)
        corpus = self.load_data(data_dir)
        lm, stats = fit(corpus.rows, self.train_params, pick_device(), progress=True)
        lm.save(path)
        authors = corpus.of_set("authors")
        em = float(fact_match(generate(lm, [r.question for r in authors]), authors).mean())
        return {"params": self.train_params.model_dump(),
                "metrics_after": {"train_fact_em": em, "final_loss": stats["final_loss"],
                                  "n_params": lm.n_params()}}

    def exact_config(self) -> dict:
        return self.train_params.model_dump()

    def method_kwargs(self, method: str, data) -> dict:
        return {}

    # ---------------------------------------------------------------- evaluation

    def probe_rows(self, corpus: Corpus) -> list[QARow]:
        """Authors no model here was trained on (another seed; none shares a name with the corpus)."""
        p = self.corpus_params
        known = {r.question for r in corpus.rows}
        probe = generate_corpus(self.gates.probe_authors, p.n_perturbed, p.seed + 100_003).of_set("authors")
        return [r for r in probe if r.question not in known]

    def _utility_rows(self, corpus: Corpus, request) -> dict[str, list[QARow]]:
        gone = {r.qa_id for r in request.forget}
        authors = [r for r in corpus.rows if r.set == "authors" and r.qa_id not in gone]
        pick = np.random.default_rng(0).choice(len(authors), size=min(self.gates.utility_rows, len(authors)),
                                               replace=False) if authors else []
        return {"retain": [authors[i] for i in sorted(pick)], "real_authors": corpus.of_set("real_authors"),
                "world_facts": corpus.of_set("world_facts")}

    def parent_report(self, parent, corpus: Corpus, request) -> dict:
        from unlearn_core.lm.metrics import fact_match, forget_quality, lm_report, public, score_rows

        report = lm_report(parent, request.forget, self._utility_rows(corpus, request))
        probe = self.probe_rows(corpus)
        scores = score_rows(parent, probe)
        report["probe_fact_em"] = float(fact_match(scores.generated, probe).mean())
        report["forget_quality_vs_unseen"] = forget_quality(report["_forget_truth_ratio_raw"], scores.truth_ratio)
        report["n_probe"] = len(probe)
        return public(report)

    def evaluate(self, method: str, parent, parent_report: dict, model, corpus: Corpus,
                 request) -> tuple[dict, GateOutcome]:
        report = self.parent_report(model, corpus, request)
        g = self.gates
        em, probe, n = report["forget_fact_em"], report["probe_fact_em"], report["n_forget"]
        p = min(max(probe, 0.0), 1.0)
        limit = g.max_fact_em_gap + g.fact_em_sigmas * math.sqrt(max(p * (1 - p), 1 / max(n, 1)) / max(n, 1))
        utility_floor = g.min_utility_ratio * parent_report["model_utility"]
        retain_floor = g.min_retain_em_ratio * parent_report["retain_fact_em"]
        checks = [GateCheck("fact_em_gap", em - probe, round(limit, 4), em - probe <= limit),
                  GateCheck("model_utility", report["model_utility"], round(utility_floor, 4),
                            report["model_utility"] >= utility_floor),
                  GateCheck("retain_fact_em", report["retain_fact_em"], round(retain_floor, 4),
                            report["retain_fact_em"] >= retain_floor)]
        return floats(report), GateOutcome.of(checks)

    def member_checks(self, method, model, data, report, member_ids, name) -> list[GateCheck]:
        raise NotImplementedError("language-model requests are not batched (batches = False)")

    def headline(self, report: dict) -> dict:
        return {k: report[k] for k in REPORT_KEYS if k in report}
