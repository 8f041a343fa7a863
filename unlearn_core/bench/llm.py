"""``unlearn bench llm``: language-model subject deletion on the TOFU-like corpus, every method in one run.

Per run: generate the corpus, train the full model on every row (``original``).
Per forget split (forget01/05/10 = 1/5/10% of the authors): train ``seeds``
retain models without the split's authors (``lm_retrain``: exact unlearning);
retain model seed 0 is the reference whose truth ratios forget quality (FQ)
compares with. The seed floor is FQ between retain models of other seeds and the
reference: no method can be expected to beat two exact retrainings' agreement.
Each unlearning method then runs ``seeds`` times (its own seed) on the full
model. Speedups are retrain wall time / method wall time in this process.

Model utility (MU) is measured on up to ``utility_rows`` retained-author rows
plus the real-author and world-fact sets, the same rows for every model.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..config import Params, method_config, typed_section
from ..lm.corpus import Corpus, forget_subjects, generate_corpus
from ..lm.metrics import forget_quality, lm_report, public, score_rows
from ..lm.model import LMTrainParams, fit
from ..lm.unlearning import LMForgetRequest
from ..methods import get_method
from ..metrics import measure
from ..models import pick_device
from .report import markdown_table, summarize, write_report

METHODS = ("lm_concept_poison", "lm_random_poison", "grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo",
           "rmu")
METRICS = ("forget_quality", "model_utility", "forget_fact_em", "retain_fact_em", "forget_truth_ratio",
           "forget_rougeL", "time_s", "peak_mem_mb", "speedup_vs_retrain")
QUICK = {"n_authors": 20, "splits": ("forget10",), "seeds": 2, "methods": ("lm_concept_poison", "grad_diff")}


def utility_rows(corpus: Corpus, retain, limit: int) -> dict:
    authors = [r for r in retain if r.set == "authors"]
    pick = np.random.default_rng(0).choice(len(authors), size=min(limit, len(authors)), replace=False)
    return {"retain": [authors[i] for i in sorted(pick)], "real_authors": corpus.of_set("real_authors"),
            "world_facts": corpus.of_set("world_facts")}


def run(params: Params, out_dir: str | Path, n_authors: int = 40, splits=("forget01", "forget05", "forget10"),
        seeds: int = 3, methods=METHODS, utility_limit: int = 200, quick: bool = False, progress=None) -> dict:
    device = pick_device()
    train_p = typed_section(params, "lm_train", LMTrainParams)
    corpus = generate_corpus(n_authors, seed=0)
    with measure(device) as base_cost:
        base, base_stats = fit(corpus.rows, train_p, device)
    rows: list[dict] = []
    floors: dict[str, float] = {}
    for split in splits:
        subjects = forget_subjects(corpus, split)
        forget = corpus.rows_of(subjects)
        retain = [r for r in corpus.rows if r.subject_id not in set(subjects)]
        util = utility_rows(corpus, retain, utility_limit)
        retrained, retrain_costs = [], []
        for s in range(seeds):
            with measure(device) as cost:
                model, _ = fit(retain, train_p.model_copy(update={"seed": train_p.seed + s}), device)
            retrained.append(model)
            retrain_costs.append(cost)
        reference = score_rows(retrained[0], forget, with_generation=False).truth_ratio
        retrain_s = float(np.mean([c.time_s for c in retrain_costs]))
        others = [score_rows(m, forget, with_generation=False).truth_ratio for m in retrained[1:]]
        floors[split] = float(np.mean([forget_quality(r, reference) for r in others])) if others else float("nan")

        def add(method, seed, model, time_s, peak, details=None):
            report = public(lm_report(model, forget, util, reference))
            rows.append({"split": split, "method": method, "seed": seed, "n_forget_authors": len(subjects),
                         **report, "time_s": time_s, "peak_mem_mb": peak / 2**20,
                         "speedup_vs_retrain": retrain_s / time_s if time_s > 0 else float("nan"),
                         "details": details or {}})

        add("original", 0, base, base_cost.time_s, base_cost.peak_mem_bytes)
        for s, model in enumerate(retrained[1:], start=1):  # seed 0 is the reference itself
            add("lm_retrain", s, model, retrain_costs[s].time_s, retrain_costs[s].peak_mem_bytes)
        request = LMForgetRequest("subject", forget, retain)
        for method, s in itertools.product(methods, range(seeds)):
            config = {**method_config(params, method), "seed": s}
            model, result = get_method(method)(base, config, device).unlearn(request)
            add(method, s, model, result.time_s, result.peak_mem_bytes,
                {k: v for k, v in result.details.items() if not k.startswith("poisoned_word")})
            if progress:
                progress(split, method, s)
    summary = summarize(rows, ("split", "method"), METRICS)
    for entry in summary:
        entry["seed_floor"] = floors[entry["split"]]
    md = _markdown(summary, floors, train_p, base, base_stats, n_authors, seeds, device, quick)
    meta = {"n_authors": n_authors, "splits": list(splits), "seeds": seeds, "methods": list(methods),
            "quick": quick, "lm_train": train_p.model_dump(), "n_params": base.n_params(),
            "base_final_loss": base_stats["final_loss"],
            "method_params": {m: method_config(params, m) for m in methods}}
    paths = write_report(out_dir, "llm", rows, md, meta)
    paths["plot"] = _plot(summary, floors, Path(out_dir) / "llm.png")
    return {"paths": paths, "summary": summary, "floors": floors}


def auto_method(summary: list[dict], split: str) -> str | None:
    """The benchmark's pick for LM subject deletion: the best FQ among methods that keep MU and the retained
    authors' fact EM at >= 0.9 x retrain's (what the pipeline's LM gates ask of a candidate)."""
    by = {s["method"]: s for s in summary if s["split"] == split}
    retrain = by.get("lm_retrain")
    if retrain is None:
        return None
    ok = [s for m, s in by.items() if m not in ("original", "lm_retrain")
          and s["model_utility"] >= 0.9 * retrain["model_utility"]
          and s["retain_fact_em"] >= 0.9 * retrain["retain_fact_em"]]
    return max(ok, key=lambda s: s["forget_quality"])["method"] if ok else None


def _markdown(summary, floors, train_p, base, base_stats, n_authors, seeds, device, quick) -> str:
    lines = ["# Language-model unlearning benchmark (TOFU-like corpus, GPT-2 from scratch)", "",
             f"{n_authors} fictitious authors x 20 QA rows + 16 real-author and 20 world-fact rows; GPT-2 "
             f"{train_p.n_layer} layers x {train_p.n_embd} ({base.n_params():,} parameters), word-piece vocabulary, "
             f"{train_p.epochs} epochs (final loss {base_stats['final_loss']:.3f}). Seeds {seeds}, device {device}"
             f"{', QUICK run' if quick else ''}. Subject deletion of the split's authors. Mean ± std over seeds.",
             "", "Metric names as in docs/methods.md: forget_quality (FQ, KS-test p-value of truth ratios vs retain "
             "model seed 0), model_utility (MU, harmonic mean of 9), forget_fact_em / retain_fact_em (greedy answer "
             "contains the fact), forget_truth_ratio (mean min(R, 1/R)), forget_rougeL (ROUGE-L recall). "
             "seed_floor = FQ of retain models of other seeds vs the reference.", "",
             markdown_table(summary, ("split", "method", "n_seeds") + METRICS + ("seed_floor",),
                            with_std=("forget_quality", "model_utility", "forget_fact_em", "time_s")),
             "## Targets", ""]
    checks = []
    for split in floors:
        by = {s["method"]: s for s in summary if s["split"] == split}
        orig, retrain = by.get("original"), by.get("lm_retrain")
        if orig:
            checks.append((f"{split}: full model FQ < 1e-10", orig["forget_quality"] < 1e-10, orig["forget_quality"]))
        pick = auto_method(summary, split)
        if retrain and pick:
            a = by[pick]
            checks += [(f"{split}: best method with MU and retain fact EM >= 0.9 x retrain's ({pick}) FQ >= seed "
                        f"floor {floors[split]:.3g}",
                        a["forget_quality"] >= floors[split], a["forget_quality"]),
                       (f"{split}: {pick} MU >= 0.9 x retrain's {retrain['model_utility']:.3f}",
                        a["model_utility"] >= 0.9 * retrain["model_utility"], a["model_utility"]),
                       (f"{split}: {pick} >= 10x faster than retraining", a["speedup_vs_retrain"] >= 10,
                        a["speedup_vs_retrain"])]
        elif retrain:
            checks.append((f"{split}: some method keeps MU and retain fact EM >= 0.9 x retrain's", False,
                           float("nan")))
        cp, rp = by.get("lm_concept_poison"), by.get("lm_random_poison")
        if cp and rp:
            checks.append((f"{split}: lm_concept_poison FQ > lm_random_poison FQ (MU {cp['model_utility']:.3f} vs "
                           f"{rp['model_utility']:.3f})", cp["forget_quality"] > rp["forget_quality"],
                           cp["forget_quality"]))
    lines += [f"- {'PASS' if ok else 'MISS'}: {name} (measured {value:.4g})" for name, ok, value in checks]
    return "\n".join(lines) + "\n"


def _plot(summary, floors, path: Path) -> str:
    """FQ (log) against MU per split, one point per method; the seed floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(floors)
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for s in (s for s in summary if s["split"] == split):
            ax.scatter(s["model_utility"], max(s["forget_quality"], 1e-30), label=s["method"])
        if np.isfinite(floors[split]):
            ax.axhline(floors[split], color="grey", ls="--", lw=1, label="seed floor")
        ax.set_yscale("log")
        ax.set_xlabel("model utility")
        ax.set_ylabel("forget quality (KS p-value)")
        ax.set_title(split)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
