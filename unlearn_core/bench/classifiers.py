"""``unlearn bench classifiers``: every classifier unlearning method side by side
with exact retraining, in one run, on class and random-sample scenarios.

Per seed: train the base model; per scenario (forget class c, or a random
1% / 10% of the training set): retrain on D_r, run each method from the same
base model with its params.yaml defaults, evaluate all with the same metrics.
``speedup_vs_retrain`` is a same-run ratio; ``avg_gap`` is measured against
the same seed's retrained model. Hyperparameters come from params.yaml (picked
on a validation slice of train); the test split is only evaluated.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Params, method_config
from ..data import Dataset
from ..methods import ForgetRequest, get_method
from ..metrics import avg_gap, classifier_report
from ..models import build_model, pick_device
from ..training import train_classifier
from .report import markdown_table, summarize, write_report

CLASS_METHODS = ("concept_poison", "lra_npp", "random_labels", "salun", "finetune", "neggrad", "ssd")
SAMPLE_METHODS = ("salun", "random_labels", "finetune", "neggrad", "ssd")
SEED_METHODS = {"class": ("concept_poison", "lra_npp"), "samples": ("salun",)}
METRICS = ("forget_acc", "UA", "RA", "TA", "TA_retained", "TA_forget", "At", "Ag", "MIA_efficacy", "Fr", "Fr_member",
           "avg_gap", "time_s", "speedup_vs_retrain", "peak_mem_mb", "n_forget")
SHOWN = ("forget_acc", "RA", "TA", "At", "Ag", "MIA_efficacy", "Fr", "Fr_member", "avg_gap", "time_s",
         "speedup_vs_retrain")
CLASS_ONLY = ("At", "Ag", "Fr", "Fr_member")
# Published figures on MNIST beside ours: the LRA-NPP authors' 5-seed run.
PUBLISHED_CLASS = [{"method": "published: lra_npp (authors, MNIST-60k)", "n_seeds": 5, "At": 0.016, "Ag": 0.984,
                    "Fr": 0.985, "time_s": 0.87, "speedup_vs_retrain": 28.7 / 0.87}]


@dataclass(frozen=True)
class Profile:
    """What differs between the benchmark's datasets: the title, the class methods run, the published
    rows shown beside ours, the targets checked, the report's file name, the training settings, the
    split At / Ag are measured on and the table's columns."""
    dataset: str = "MNIST-5k"
    class_methods: tuple[str, ...] = CLASS_METHODS
    published_class: list[dict] = field(default_factory=lambda: PUBLISHED_CLASS)
    targets: Callable[[list[dict]], list[tuple[str, bool, float]]] | None = None  # default: issue 4's
    name: str = "classifiers"
    train_overrides: dict = field(default_factory=dict)  # e.g. {"model": "cifar_cnn", "epochs": 6}
    at_ag_split: str = "test"  # the split of At / Ag as the LRA-NPP authors report them: test (MNIST), train (CIFAR)
    shown: tuple[str, ...] = SHOWN  # the table's metric columns


def scenarios(classes: list[int], fractions: list[float]) -> list[tuple[str, str, float | int]]:
    """Class and sample scenarios interleaved, in the order given."""
    by_class = [("class", f"class-{c}", c) for c in classes]
    by_samples = [("samples", f"samples-{f * 100:g}%", f) for f in fractions]
    return [s for pair in itertools.zip_longest(by_class, by_samples) for s in pair if s is not None]


def run(ds: Dataset, params: Params, classes: list[int], fractions: list[float], seeds: int,
        out_dir: str | Path, quick: bool = False, progress=None, profile: Profile = Profile()) -> dict:
    device = pick_device()
    train_p = params.train.model_copy(update={**profile.train_overrides, **({"epochs": 1} if quick else {})})
    rows: list[dict] = []
    bases = []
    for seed in range(seeds):
        base = build_model(train_p.model, ds.num_classes, ds.image_shape[0]).to(device)
        bases.append(train_classifier(base, ds.train.x, ds.train.y, epochs=train_p.epochs, lr=train_p.lr,
                                      batch_size=train_p.batch_size, seed=seed, weight_decay=train_p.weight_decay))
    # scenario-major: a run stopped early still has every seed of its finished scenarios
    for kind, name, target in scenarios(classes, fractions):
        for seed, base in enumerate(bases):
            if kind == "class":
                forget_mask = (ds.train.y == target).numpy()
                request = ForgetRequest("class", ds.train, forget_mask, ds.num_classes, train_p.model,
                                        forget_class=target, substitute=ds.test.x[ds.test.y == target], seed=seed)
                methods = profile.class_methods
            else:
                rng = np.random.default_rng(1000 + seed)
                forget_mask = np.zeros(len(ds.train), dtype=bool)
                forget_mask[rng.choice(len(ds.train), max(1, int(round(target * len(ds.train)))), replace=False)] = True
                request = ForgetRequest("samples", ds.train, forget_mask, ds.num_classes, train_p.model, seed=seed)
                methods = SAMPLE_METHODS
            forget_class = request.forget_class

            def row(method: str, model, time_s: float, mem: int) -> dict:
                report = classifier_report(model, ds.train, ds.test, forget_mask, forget_class,
                                           original=base if kind == "class" else None, seed=seed,
                                           at_ag_split=profile.at_ag_split)
                report.pop("Fs", None)
                return {"scenario": name, "kind": kind, "method": method, "seed": seed, "n_forget": int(forget_mask.sum()),
                        "forget_acc": 1.0 - report["UA"], **report, "time_s": time_s, "peak_mem_mb": mem / 2**20}

            retrain_model, res = get_method("retrain")(base, train_p, device).unlearn(request)
            group = [row("retrain", retrain_model, res.time_s, res.peak_mem_bytes),
                     row("original", base, float("nan"), 0)]
            for method in methods:
                model, res = get_method(method)(base, method_config(params, method), device).unlearn(request)
                group.append(row(method, model, res.time_s, res.peak_mem_bytes))
                if progress:
                    progress(f"seed {seed} {name} {method} {res.time_s:.2f}s")
            ref = group[0]
            for r in group:
                r["avg_gap"] = avg_gap(r, ref)
                r["speedup_vs_retrain"] = ref["time_s"] / r["time_s"] if r["time_s"] > 0 else float("nan")
                if kind != "class":
                    r.update(dict.fromkeys(CLASS_ONLY))
            rows.extend(group)
            result = _write(rows, out_dir, classes, fractions, seeds, quick, str(device), train_p, params, profile)
    return result


def _write(rows, out_dir, classes, fractions, seeds, quick, device, train_p, params, profile: Profile) -> dict:
    """(Re)write the report from the rows so far: a long run that is stopped keeps its finished scenarios."""
    summary = summarize(rows, ("scenario", "kind", "method"), METRICS)
    targets = (profile.targets or _targets)(summary)
    md = _markdown(summary, classes, fractions, seeds, device, train_p, profile, targets)
    meta = {"classes": classes, "fractions": fractions, "seeds": seeds, "quick": quick,
            "seeds_done": sorted({r["seed"] for r in rows}), "train": train_p.model_dump(),
            "methods": {m: method_config(params, m)
                        for m in sorted(set(profile.class_methods) | set(SAMPLE_METHODS))}}
    paths = write_report(out_dir, profile.name, rows, md, meta)
    paths["plot"] = _plot(summary, Path(out_dir) / f"{profile.name}.png")
    return {"paths": paths, "summary": summary, "targets": targets}


def _cmp(ours: float, theirs: float, lower_better: bool, tol: float) -> str:
    if any(map(math.isnan, (ours, theirs))):
        return "n/a"
    if abs(ours - theirs) <= tol:
        verdict = "ties"
    else:
        verdict = "beats" if (ours < theirs) == lower_better else "loses to"
    return f"{verdict} ({ours:.3g} vs {theirs:.3g})"


def _versus(scenario_rows: list[dict], kind: str) -> str:
    """Seed method vs each baseline: avg_gap, forgetting, retained test accuracy, time."""
    by = {s["method"]: s for s in scenario_rows}
    ta_key = "TA_retained" if kind == "class" else "TA"
    lines = [f"| seed method | baseline | Avg. Gap (pts, lower better) | forget acc (lower better) | "
             f"{ta_key} (higher better) | time s (lower better) |", "|---|---|---|---|---|---|"]
    for seed_m in SEED_METHODS[kind]:
        if seed_m not in by:
            continue
        ours = by[seed_m]
        for base_m, theirs in by.items():
            if base_m in SEED_METHODS[kind] or base_m == "original":
                continue
            forget_lower = kind == "class"  # samples: forget acc should match retrain, judged via Avg. Gap
            cells = [_cmp(100 * ours["avg_gap"], 100 * theirs["avg_gap"], True, 0.1),
                     _cmp(ours["forget_acc"], theirs["forget_acc"], True, 0.001) if forget_lower
                     else f"{ours['forget_acc']:.3f} vs {theirs['forget_acc']:.3f}",
                     _cmp(ours[ta_key], theirs[ta_key], False, 0.001),
                     _cmp(ours["time_s"], theirs["time_s"], True, 0.0)]
            lines.append(f"| {seed_m} | {base_m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_of(summary: list[dict], method: str, key: str, kind: str | None = None,
            scenario: str | None = None) -> float:
    """A method's mean of ``key`` over the summary's scenarios (of one kind / one scenario); nan if none."""
    vals = [s[key] for s in summary if s["method"] == method and (kind is None or s["kind"] == kind)
            and (scenario is None or s["scenario"] == scenario)]
    return float(np.mean(vals)) if vals else float("nan")


def _targets(summary: list[dict]) -> list[tuple[str, bool, float]]:
    """Issue 4 targets, checked on the means over seeds (and classes)."""
    mean = partial(mean_of, summary)
    checks = []
    if any(s["kind"] == "class" for s in summary):
        fa = mean("concept_poison", "forget_acc", "class")
        gap = mean("concept_poison", "TA_retained", "class") - mean("retrain", "TA_retained", "class")
        sp = mean("concept_poison", "speedup_vs_retrain", "class")
        checks += [("concept_poison: forget-class train accuracy <= 0.01", fa <= 0.01, fa),
                   ("concept_poison: retained-class TA >= retrain's - 0.5 pt", gap >= -0.005, gap),
                   ("concept_poison: >= 10x faster than retrain", sp >= 10, sp)]
    for scen in sorted({s["scenario"] for s in summary if s["kind"] == "samples"}):
        g = 100 * mean("salun", "avg_gap", scenario=scen)
        g_original = 100 * mean("original", "avg_gap", scenario=scen)
        sp = mean("salun", "speedup_vs_retrain", scenario=scen)
        # forget-set accuracy within two binomial standard errors of retraining's (n = |D_f|)
        p_retrain, n = mean("retrain", "forget_acc", scenario=scen), mean("retrain", "n_forget", scenario=scen)
        off = abs(mean("salun", "forget_acc", scenario=scen) - p_retrain)
        two_se = 2 * math.sqrt(p_retrain * (1 - p_retrain) / n)
        checks += [(f"salun {scen}: Avg. Gap to retrain <= 2.0 pts", g <= 2.0, g),
                   (f"salun {scen}: Avg. Gap >= 30% below the original's ({g_original:.3g} pts)",
                    g <= 0.7 * g_original, g / g_original if g_original else float("nan")),
                   (f"salun {scen}: forget-set accuracy within 2 binomial SE ({two_se:.3g}) of retrain's "
                    f"(the original is off by {abs(mean('original', 'forget_acc', scenario=scen) - p_retrain):.3g})",
                    off <= two_se, off),
                   (f"salun {scen}: >= 10x faster than retrain", sp >= 10, sp)]
    return checks


def _markdown(summary: list[dict], classes, fractions, seeds, device, train_p, profile: Profile,
              targets: list[tuple[str, bool, float]]) -> str:
    out = [f"# Classifier unlearning benchmark ({profile.dataset}, {train_p.model}, {train_p.epochs} epochs)", "",
           f"Forget classes {classes}; random forget fractions {fractions}; seeds {seeds}; device {device}. "
           "Mean ± std over seeds. Accuracies are fractions; Avg. Gap = mean |method - retrain| over "
           "UA, MIA-Efficacy, RA, TA (fraction; x100 = points). `original` = the base model, no unlearning. "
           f"Class scenarios, as in docs/methods.md: At / Ag = {profile.at_ag_split}-split accuracy on class c / on "
           "the other classes (the LRA-NPP authors' convention for this dataset; TA_forget / TA_retained are the "
           "same on the test split); Fr = share of class-c training samples a linear-SVM attack "
           "(members: class-c train, non-members: other-class train, original model's softmax) calls non-member "
           "(higher is better); Fr_member = the same attack with class-c test samples as non-members (reported, "
           "never gated). A `published` row is the authors' figure on their hardware, beside ours.",
           ""]
    for scen in dict.fromkeys(s["scenario"] for s in summary):
        rows = [s for s in summary if s["scenario"] == scen]
        kind = rows[0]["kind"]
        cols = ("method", "n_seeds") + tuple(c for c in profile.shown if kind == "class" or c not in CLASS_ONLY)
        shown = rows + profile.published_class if kind == "class" else rows
        out += [f"## {scen}", "", markdown_table(shown, cols, with_std=("forget_acc", "TA", "avg_gap", "time_s")),
                "", f"Seed method vs baselines ({scen}):", "", _versus(rows, kind)]
    out += ["## Targets", ""]
    out += [f"- {'PASS' if ok else 'MISS'}: {name} (measured {value:.4g})" for name, ok, value in targets]
    return "\n".join(out) + "\n"


def _plot(summary: list[dict], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = list(dict.fromkeys(s["scenario"] for s in summary))
    methods = [m for m in dict.fromkeys(s["method"] for s in summary) if m != "retrain"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    width = 0.8 / len(methods)
    x = np.arange(len(scen))
    for i, m in enumerate(methods):
        cell = {s["scenario"]: s for s in summary if s["method"] == m}
        gaps = [100 * cell[sc]["avg_gap"] if sc in cell else np.nan for sc in scen]
        errs = [100 * cell[sc]["avg_gap_std"] if sc in cell else 0 for sc in scen]
        speed = [cell[sc]["speedup_vs_retrain"] if sc in cell else np.nan for sc in scen]
        axes[0].bar(x + i * width, gaps, width, yerr=errs, label=m)
        axes[1].bar(x + i * width, speed, width, label=m)
    for ax in axes:
        ax.set_xticks(x + 0.4 - width / 2, scen)
    axes[0].set_ylabel("Avg. Gap to retrain (points)")
    axes[0].set_title("Gap to exact retraining (lower is better)")
    axes[1].set_yscale("log")
    axes[1].axhline(10, color="k", lw=0.8, ls="--")
    axes[1].set_ylabel("speedup vs retrain (log)")
    axes[1].set_title("Speedup (dashed: 10x target)")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
