"""The DVC pipeline stages: prepare -> train -> evaluate (see dvc.yaml).

``prepare`` materialises the tombstoned train/test view of the dataset
directory; ``train`` fits the base classifier on it; ``evaluate`` writes the
metrics and per-class plot data DVC tracks. Each stage is a plain function so
exact retraining and tests can call it without DVC.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import Params
from .data import Split, load_dataset
from .models import build_model, load_model, pick_device, save_model
from .training import accuracy, predict_logits, train_classifier


def prepare(data_dir: str | Path, out_dir: str | Path) -> dict:
    ds = load_dataset(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", ds.train), ("test", ds.test)):
        np.savez(out / f"{name}.npz", x=(split.x * 255).round().to(torch.uint8).numpy(),
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
    model = build_model(p.model, summary["num_classes"], summary["image_shape"][0]).to(pick_device())
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
    for path, text in ((metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n"),
                       (per_class_path, "\n".join(rows) + "\n")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return metrics
