"""``unlearn bench gan``: original vs cascade_gan vs exact GAN retraining, one run.

Per seed: train the base GAN (``gan`` schedule); then two scenarios, each
with the original, cascaded unlearning and retraining on D_r (same schedule
as base training, so ``speedup_vs_retrain`` = retrain wall time / cascade wall
time in this process on this hardware, and it scales with that schedule):

- ``class``: forget every training image of ``forget_class``;
- ``item``: forget ``n_items`` random training images (64 by default).

The reference classifier (feature-FID, class rate, labels for unconditional
downstream) is trained once per run. The test split is halved at random:
one half is the held-out set of cascade_gan's stopping rule, the other half
the non-members of the membership attack and the downstream test set, so the
attack is never scored on images the method calibrated on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Params, method_config
from ..data import Dataset
from ..gan import GanParams, build_gan, sample, train_gan
from ..gan_metrics import GATE_DEFAULTS, features, gan_report
from ..methods import ForgetRequest, get_method
from ..metrics import measure
from ..models import build_model, pick_device
from ..training import train_classifier
from .report import markdown_table, summarize, write_report

METRICS = ("n_forget", "fid", "fid_ratio", "class_rate", "membership_auc", "downstream_acc", "time_s",
           "speedup_vs_retrain")


def _request(ds: Dataset, scenario: str, seed: int, forget_class: int, n_items: int, arch: str) -> ForgetRequest:
    if scenario == "class":
        return ForgetRequest("class", ds.train, (ds.train.y == forget_class).numpy(), ds.num_classes, arch,
                             forget_class=forget_class, seed=seed)
    mask = np.zeros(len(ds.train), dtype=bool)
    mask[np.random.default_rng(seed).choice(len(mask), n_items, replace=False)] = True
    return ForgetRequest("samples", ds.train, mask, ds.num_classes, arch, seed=seed)


def run(ds: Dataset, params: Params, seeds: int, out_dir: str | Path, forget_class: int = 3, n_items: int = 64,
        quick: bool = False, progress=None) -> dict:
    device = pick_device()
    gan_p = GanParams(**method_config(params, "gan"))
    if quick:
        gan_p = gan_p.model_copy(update={"epochs": 2, "reference_epochs": 1})
    cascade_cfg = method_config(params, "cascade_gan")
    gates = {**GATE_DEFAULTS, **method_config(params, "gan_gates"), "downstream": True}
    if quick:
        gates.update(n_samples=500, downstream_samples=1000, downstream_epochs=1)

    reference = build_model(gan_p.reference_model, ds.num_classes, ds.image_shape[0]).to(device)
    train_classifier(reference, ds.train.x, ds.train.y, epochs=gan_p.reference_epochs, lr=gan_p.reference_lr,
                     seed=gan_p.seed)
    perm = np.random.default_rng(gan_p.seed).permutation(len(ds.test))
    stop_holdout, eval_holdout = ds.test.subset(perm[: len(perm) // 2]), ds.test.subset(perm[len(perm) // 2:])

    rows: list[dict] = []
    grids: dict[str, list] = {}
    for seed in range(seeds):
        base = build_gan(gan_p, ds.num_classes).to(device)
        with measure(device) as base_cost:
            train_gan(base, ds.train.x, ds.train.y if base.conditional else None, epochs=gan_p.epochs,
                      batch_size=gan_p.batch_size, lr=gan_p.lr, beta1=gan_p.beta1, seed=gan_p.seed + seed)
        for scenario in ("class", "item"):
            request = _request(ds, scenario, seed, forget_class, n_items, "dcgan")
            real = features(reference, request.retain.x)
            retrained, retrain_res = get_method("retrain_gan")(base, gan_p, device).unlearn(request)
            unlearned, cascade_res = get_method("cascade_gan")(
                base, cascade_cfg, device, reference=reference, holdout=stop_holdout).unlearn(request)
            group = []
            for method, model, time_s, details in (
                    ("original", base, base_cost.time_s, {}),
                    ("cascade_gan", unlearned, cascade_res.time_s, cascade_res.details),
                    ("retrain_gan", retrained, retrain_res.time_s, {})):
                report = gan_report(model, request, reference, eval_holdout, gates, real)
                group.append({"scenario": scenario, "method": method, "seed": seed,
                              "n_forget": int(request.forget_mask.sum()), **report, "time_s": time_s,
                              "rounds": details.get("rounds"), "stopped": details.get("stopped")})
            for r in group:
                r["fid_ratio"] = r["fid"] / group[0]["fid"]
                r["speedup_vs_retrain"] = retrain_res.time_s / r["time_s"] if r["time_s"] > 0 else float("nan")
            rows.extend(group)
            if seed == 0:
                grids[scenario] = [(m, g) for m, g in (("original", base), ("cascade_gan", unlearned),
                                                       ("retrain_gan", retrained))]
            if progress:
                progress(seed, scenario)
    summary = summarize(rows, ("scenario", "method"), METRICS)
    md = _markdown(summary, rows, gan_p, seeds, forget_class, n_items, device, quick)
    meta = {"seeds": seeds, "quick": quick, "forget_class": forget_class, "n_items": n_items,
            "gan": gan_p.model_dump(), "cascade_gan": cascade_cfg, "gan_gates": gates}
    paths = write_report(out_dir, "gan", rows, md, meta)
    for scenario, models in grids.items():
        paths[f"samples_{scenario}"] = _sample_grid(models, scenario, Path(out_dir) / f"gan-samples-{scenario}.png")
    return {"paths": paths, "summary": summary}


def _markdown(summary, rows, gan_p: GanParams, seeds, forget_class, n_items, device, quick) -> str:
    by = {(s["scenario"], s["method"]): s for s in summary}
    lines = [f"# GAN unlearning benchmark (MNIST-5k, {'conditional' if gan_p.conditional else 'unconditional'} "
             "DCGAN)", "",
             f"Seeds {seeds}, device {device}{', QUICK run' if quick else ''}. Schedule of base training and "
             f"retraining: {gan_p.epochs} epochs x batch {gan_p.batch_size} on the 4,000 training digits; the "
             "speedup scales with it. Scenarios: `class` = forget all training images of class "
             f"{forget_class}; `item` = forget {n_items} random training images. Mean ± std over seeds. "
             "fid = feature-FID vs the retain set (reference classifier features); fid_ratio = / original's; "
             "membership_auc = discriminator attack, D_f vs held-out test images; downstream_acc = MLP trained "
             "on generated samples, tested on real held-out test images (retained classes for `class`).", "",
             markdown_table(summary, ("scenario", "method", "n_seeds") + METRICS,
                            with_std=("fid", "class_rate", "membership_auc", "time_s", "speedup_vs_retrain")),
             "## Targets (cascade_gan)", ""]
    c, i = by.get(("class", "cascade_gan")), by.get(("item", "cascade_gan"))
    r = by.get(("class", "retrain_gan"))
    checks = []
    if c:
        checks += [("class: forgotten-class rate <= 0.01", c["class_rate"] <= 0.01, c["class_rate"]),
                   ("class: feature-FID <= 1.10 x original", c["fid_ratio"] <= 1.10, c["fid_ratio"]),
                   ("class: >= 185x faster than retrain", c["speedup_vs_retrain"] >= 185, c["speedup_vs_retrain"])]
    if c and r:  # same-run comparison: retraining's AUC is what "forgotten" looks like to this attack
        checks.append((f"class: membership AUC within 0.10 of retrain_gan's ({r['membership_auc']:.4g})",
                       abs(c["membership_auc"] - r["membership_auc"]) <= 0.10, c["membership_auc"]))
    if i:
        checks += [("item: membership AUC <= 0.55", i["membership_auc"] <= 0.55, i["membership_auc"]),
                   ("item: >= 185x faster than retrain", i["speedup_vs_retrain"] >= 185, i["speedup_vs_retrain"])]
    lines += [f"- {'PASS' if ok else 'MISS'}: {name} (measured {value:.4g})" for name, ok, value in checks]
    return "\n".join(lines) + "\n"


def _sample_grid(models, scenario: str, path: Path) -> str:
    """One panel per model: 10 x 10 samples (a row per class when conditional), same latents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4.3))
    for ax, (name, gan) in zip(axes, models):
        labels = torch.arange(100) // 10 if gan.conditional else None
        x, _ = sample(gan, 100, seed=123, labels=labels)
        ax.imshow(make_grid(x, nrow=10, padding=1).permute(1, 2, 0).numpy(), cmap="gray")
        ax.set_title(f"{scenario}: {name}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
