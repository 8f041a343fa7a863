"""The DVC pipeline stages: prepare -> train -> evaluate (see dvc.yaml).

``prepare`` materialises the tombstoned train/test view of the dataset
directory; ``train`` fits the base classifier on it; ``evaluate`` writes the
metrics and per-class plot data DVC tracks. Each stage is a plain function so
exact retraining and tests can call it without DVC.

Every output is a function of the inputs and params only (no timestamps, seeded
initialisation), so on CPU ``dvc repro`` re-derives the bytes ``dvc.lock``
records; the CLI stage commands run them inside ``training.reproducible``.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from .config import Params
from .data import Split, load_dataset
from .gan import GanParams, build_gan, load_gan, sample, save_gan, train_gan
from .models import build_model, load_model, pick_device, save_model
from .training import accuracy, predict_logits, seeded, train_classifier

METRIC_DECIMALS = 6
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: np.savez stamps the current time


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """``np.savez`` with fixed member timestamps, so equal arrays give equal bytes (``np.load`` reads it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def prepare(data_dir: str | Path, out_dir: str | Path) -> dict:
    ds = load_dataset(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", ds.train), ("test", ds.test)):
        save_npz(out / f"{name}.npz", x=(split.x * 255).round().to(torch.uint8).numpy(),
                 y=split.y.numpy(), ids=split.ids, subjects=split.subjects)
    summary = {"n_train": len(ds.train), "n_test": len(ds.test), "num_classes": ds.num_classes,
               "image_shape": list(ds.image_shape), "n_tombstoned": len(ds.tombstoned)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def load_prepared(prepared_dir: str | Path) -> tuple[Split, Split, dict]:
    prepared_dir = Path(prepared_dir)
    splits = []
    for name in ("train", "test"):
        blob = np.load(prepared_dir / f"{name}.npz")
        splits.append(Split(torch.from_numpy(blob["x"].astype(np.float32) / 255.0),
                            torch.from_numpy(blob["y"].astype(np.int64)), blob["ids"], blob["subjects"]))
    summary = json.loads((prepared_dir / "summary.json").read_text())
    return splits[0], splits[1], summary


def train(prepared_dir: str | Path, params: Params, model_path: str | Path, progress: bool = True) -> dict:
    train_split, _, summary = load_prepared(prepared_dir)
    p = params.train
    with seeded(p.seed):
        model = build_model(p.model, summary["num_classes"], summary["image_shape"][0])
    model = model.to(pick_device())
    train_classifier(model, train_split.x, train_split.y, epochs=p.epochs, lr=p.lr,
                     batch_size=p.batch_size, seed=p.seed, weight_decay=p.weight_decay, progress=progress)
    Path(model_path).parent.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), p.model, summary["num_classes"], summary["image_shape"][0], model_path)
    return {"train_acc": accuracy(model, train_split)}


def evaluate(prepared_dir: str | Path, model_path: str | Path, metrics_path: str | Path,
             per_class_path: str | Path) -> dict:
    train_split, test_split, summary = load_prepared(prepared_dir)
    model, _ = load_model(model_path, pick_device())
    metrics = {"train_acc": accuracy(model, train_split), "test_acc": accuracy(model, test_split),
               "n_train": len(train_split), "n_test": len(test_split)}
    pred = predict_logits(model, test_split.x).argmax(1)
    rows = ["class,test_acc,n"]
    for c in range(summary["num_classes"]):
        mask = test_split.y == c
        n = int(mask.sum())
        rows.append(f"{c},{float((pred[mask] == c).float().mean()) if n else float('nan'):.4f},{n}")
    _write_metrics(metrics_path, metrics)
    _write_text(per_class_path, "\n".join(rows) + "\n")
    return metrics


def metric_mismatches(locked: dict, reproduced: dict, tolerance: dict[str, float]) -> list[str]:
    """Metrics of a re-run that differ from the locked ones by more than allowed.

    Both are nested metric dicts (e.g. ``{"metrics/base.json": {"test_acc": ..}}``);
    ``tolerance`` maps a metric's own name to the absolute difference allowed,
    ``default`` applies to the rest (counts such as ``n_train`` stay exact at 0).
    A metric present on one side only is a mismatch.
    """
    out, locked, reproduced = [], _flatten(locked), _flatten(reproduced)
    for path in sorted(set(locked) | set(reproduced)):
        old, new = locked.get(path), reproduced.get(path)
        allowed = tolerance.get(path.rsplit(".", 1)[-1], tolerance.get("default", 0.0))
        if old is None or new is None:
            out.append(f"{path}: locked {old}, reproduced {new}")
        elif abs(new - old) > allowed:
            out.append(f"{path}: locked {old:.6g}, reproduced {new:.6g}, |diff| {abs(new - old):.3g} > {allowed}")
    return out


def _flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


# ---------------------------------------------------------------- GAN stages (params: gan, gan_gates)

def train_gan_stage(prepared_dir: str | Path, p: GanParams, model_path: str | Path, progress: bool = True) -> dict:
    train_split, _, summary = load_prepared(prepared_dir)
    gan = build_gan(p, summary["num_classes"]).to(pick_device())
    train_gan(gan, train_split.x, train_split.y if gan.conditional else None, epochs=p.epochs,
              batch_size=p.batch_size, lr=p.lr, beta1=p.beta1, seed=p.seed, progress=progress)
    save_gan(gan.cpu(), model_path)
    return {"model": str(model_path), **gan.arch, "n_train": len(train_split)}


def train_reference_stage(prepared_dir: str | Path, p: GanParams, model_path: str | Path,
                          progress: bool = True) -> dict:
    """The classifier whose features and labels the GAN metrics read."""
    train_split, test_split, summary = load_prepared(prepared_dir)
    with seeded(p.seed):
        model = build_model(p.reference_model, summary["num_classes"], summary["image_shape"][0])
    model = model.to(pick_device())
    train_classifier(model, train_split.x, train_split.y, epochs=p.reference_epochs, lr=p.reference_lr,
                     seed=p.seed, progress=progress)
    Path(model_path).parent.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), p.reference_model, summary["num_classes"], summary["image_shape"][0], model_path)
    return {"model": str(model_path), "test_acc": accuracy(model, test_split)}


def evaluate_gan(prepared_dir: str | Path, gan_path: str | Path, reference_path: str | Path,
                 metrics_path: str | Path, per_class_path: str | Path, n_samples: int = 2000,
                 seed: int = 0) -> dict:
    """Metrics of the base GAN, read by the reference classifier.

    ``fid_test``: feature-FID of ``n_samples`` generated digits vs the real test
    split; ``label_agreement`` (conditional GANs): share of samples the
    reference assigns to the class they were generated for;
    ``membership_auc``: discriminator AUC separating training from test digits
    (0.5 = no membership signal). Per class: the share of samples the
    reference assigns to it.
    """
    from .gan_metrics import feature_fid, membership_auc  # scipy + sklearn: only this stage needs them

    train_split, test_split, summary = load_prepared(prepared_dir)
    device = pick_device()
    gan, (reference, _) = load_gan(gan_path, device), load_model(reference_path, device)
    fake, labels = sample(gan, n_samples, seed=seed)
    predicted = predict_logits(reference, fake).argmax(1)
    members = train_split.subset(np.arange(min(len(train_split), len(test_split))))
    metrics = {"fid_test": feature_fid(reference, test_split.x, fake),
               "membership_auc": membership_auc(gan, members, test_split),
               "reference_test_acc": accuracy(reference, test_split), "n_samples": n_samples}
    if labels is not None:
        metrics["label_agreement"] = float((predicted == labels).float().mean())
    rows = ["class,generated_share"]
    rows += [f"{c},{float((predicted == c).float().mean()):.4f}" for c in range(summary["num_classes"])]
    _write_metrics(metrics_path, metrics)
    _write_text(per_class_path, "\n".join(rows) + "\n")
    return metrics


def _write_metrics(path: str | Path, metrics: dict) -> None:
    """JSON with floats rounded to 6 decimals: numpy/scipy's BLAS picks its kernels per CPU, and its
    last-digit differences (FID's matrix square root) must not change the file's bytes."""
    rounded = {k: round(v, METRIC_DECIMALS) if isinstance(v, float) else v for k, v in metrics.items()}
    _write_text(path, json.dumps(rounded, indent=2, sort_keys=True) + "\n")


def _write_text(path: str | Path, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
