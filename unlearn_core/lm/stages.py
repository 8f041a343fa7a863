"""The language model's DVC stages: lm_corpus -> lm_train -> lm_evaluate (``unlearn lm ...``)."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from ..config import Params, typed_section
from .corpus import generate_corpus, load_corpus, write_corpus
from .metrics import fact_match, harmonic_mean, score_rows, utility_numbers
from .model import LMTrainParams, fit, generate, load_lm


def corpus_stage(params: Params, out_dir: str | Path) -> dict:
    from ..families.lm import CorpusParams

    p = typed_section(params, "lm_corpus", CorpusParams)
    corpus = generate_corpus(p.n_authors, p.n_perturbed, p.seed)
    write_corpus(out_dir, corpus)
    return {"rows": len(corpus.rows), "authors": len(corpus.subjects())}


def train_stage(corpus_dir: str | Path, params: Params, model_path: str | Path) -> dict:
    corpus = load_corpus(corpus_dir)
    lm, stats = fit(corpus.rows, typed_section(params, "lm_train", LMTrainParams), progress=True)
    lm.save(model_path)
    return {"final_loss": stats["final_loss"], "n_params": lm.n_params()}


def evaluate_stage(corpus_dir: str | Path, model_path: str | Path, params: Params, metrics_path: str | Path,
                   per_attribute_path: str | Path) -> dict:
    """Fact exact match on the training rows (overall and per attribute), MU, and the probe authors' EM."""
    from ..families.lm import LMFamily

    corpus = load_corpus(corpus_dir)
    lm = load_lm(model_path)
    family = LMFamily(params, "gpt2", Path("."))
    authors = corpus.of_set("authors")
    hits = fact_match(generate(lm, [r.question for r in authors]), authors)
    by_attribute: dict[str, list[float]] = defaultdict(list)
    for row, hit in zip(authors, hits):
        by_attribute[row.attribute].append(float(hit))
    probe = family.probe_rows(corpus)
    utility = {"retain": authors[:family.gates.utility_rows], "real_authors": corpus.of_set("real_authors"),
               "world_facts": corpus.of_set("world_facts")}
    numbers = utility_numbers({name: score_rows(lm, rows) for name, rows in utility.items()}, utility)
    metrics = {"train_fact_em": round(float(hits.mean()), 6),
               "probe_fact_em": round(float(fact_match(score_rows(lm, probe).generated, probe).mean()), 6),
               "model_utility": round(harmonic_mean(numbers.values()), 6), "n_rows": len(corpus.rows)}
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_path).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    with open(per_attribute_path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["attribute", "fact_em"])
        for attribute, values in sorted(by_attribute.items()):
            writer.writerow([attribute, round(sum(values) / len(values), 6)])
    return metrics
