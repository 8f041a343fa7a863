"""``unlearn bench classifiers`` and ``unlearn bench cifar10``: bad input refused up front; small real runs
yield every row and target.

The CIFAR-10 runs use real MNIST digits padded to 32x32 and coloured per class (CIFAR-10's shape, 3x32x32),
so they take seconds; the full benchmark runs on the imported CIFAR-10 (`unlearn data import cifar10`).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from flows.cli import main

CLASS_COLOURS = np.random.default_rng(0).uniform(0.3, 1.0, size=(10, 3))


def _as_rgb32(split, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    labels = split.y.numpy()
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    x, y = split.x.numpy()[pick, 0], labels[pick]  # (n, 28, 28) in [0, 1]
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    rgb = padded[:, None] * CLASS_COLOURS[y][:, :, None, None]
    return (rgb * 255).round().astype(np.uint8), y


@pytest.fixture(scope="module")
def rgb_dir(tmp_path_factory, mnist):
    from unlearn_core.data import import_arrays

    return import_arrays(tmp_path_factory.mktemp("rgb32") / "data", _as_rgb32(mnist.train, 250),
                         _as_rgb32(mnist.test, 50))


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "--data: {tmp}/nowhere is not a dataset directory"),
    (["--data", "{mnist}"], "not CIFAR-10's 10 classes of (3, 32, 32)"),
    (["--data", "{rgb}", "--classes", "10"], "--classes: class 10 is not in the label set 0..9"),
    (["--data", "{rgb}", "--seeds", "0"], "--seeds: must be >= 1"),
    (["--data", "{rgb}", "--epochs", "0"], "--epochs: must be >= 1"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, mnist_dir, rgb_dir, args, message):
    where = {"tmp": str(tmp_path), "mnist": str(mnist_dir), "rgb": str(rgb_dir)}
    out = tmp_path / "bench"
    assert main(["bench", "cifar10", *[a.format(**where) for a in args], "--out", str(out)]) == 2
    assert message.format(**where) in capsys.readouterr().err
    assert not out.exists()


def test_quick_run_reports_every_method_beside_the_papers(tmp_path, rgb_dir, torch_one_thread):
    out = tmp_path / "bench"
    assert main(["bench", "cifar10", "--data", str(rgb_dir), "--classes", "3,5", "--quick", "--model", "cifar_cnn",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "cifar10.json").read_text())
    assert {r["scenario"] for r in rows} == {"class-3"}  # --quick: the first class only
    by = {r["method"]: r for r in rows}
    assert set(by) == {"retrain", "original", "lra_npp", "concept_poison", "finetune", "salun", "ssd"}
    retrain, original = by["retrain"], by["original"]
    for r in rows:  # At / Ag on the train split, as the LRA-NPP authors report CIFAR-10
        assert (r["At"], r["Ag"]) == (r["forget_acc"], r["RA"])
    assert retrain["forget_acc"] < 0.05  # never saw the class
    for m in ("lra_npp", "concept_poison"):
        assert by[m]["speedup_vs_retrain"] == retrain["time_s"] / by[m]["time_s"]
        assert by[m]["forget_acc"] < original["forget_acc"]  # it forgot, unlike the untouched model
    md = (out / "cifar10.md").read_text()
    assert "# Classifier unlearning benchmark (CIFAR-10, 2,500 train / 500 test, cifar_cnn, 1 epochs)" in md
    assert "published: lra_npp (authors, ResNet-18)" in md and "published: concept_poison (authors, deer)" in md
    targets = [line for line in md.splitlines() if line.startswith(("- PASS", "- MISS"))]
    assert len(targets) == 6  # forget, retained, speed for each paper method
    assert any("lra_npp: >= 100x faster than retraining" in t for t in targets)
    assert any("concept_poison: retained-class test accuracy TA_retained within 1 point" in t for t in targets)
    meta = json.loads((out / "cifar10.meta.json").read_text())
    assert meta["train"]["model"] == "cifar_cnn" and meta["train"]["epochs"] == 1
    assert "\n\nHardware: " in md and " torch threads; Python " in md
    assert (out / "cifar10.png").stat().st_size > 0


def test_classifiers_quick_run_on_digits_class_and_samples(tmp_path, mnist_dir, torch_one_thread):
    from unlearn_core.bench.classifiers import CLASS_METHODS, SAMPLE_METHODS

    out = tmp_path / "bench"
    assert main(["bench", "classifiers", "--data", str(mnist_dir), "--classes", "3", "--fractions", "0.05",
                 "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "classifiers.json").read_text())
    methods = {s: {r["method"] for r in rows if r["scenario"] == s} for s in ("class-3", "samples-5%")}
    assert methods["class-3"] == {"retrain", "original", *CLASS_METHODS}
    assert methods["samples-5%"] == {"retrain", "original", *SAMPLE_METHODS}
    for r in rows:
        if r["kind"] == "class":  # At / Ag on the test split, as the LRA-NPP authors report MNIST
            assert (r["At"], r["Ag"]) == (r["TA_forget"], r["TA_retained"])
        else:
            assert r["At"] is None and r["n_forget"] == 200  # 5% of the 4,000 training digits
    md = (out / "classifiers.md").read_text()
    assert "# Classifier unlearning benchmark (MNIST-5k, mnist_cnn, 1 epochs)" in md
    assert "published: lra_npp (authors, MNIST-60k)" in md
    assert any(line.startswith(("- PASS: concept_poison", "- MISS: concept_poison")) for line in md.splitlines())
    assert (out / "classifiers.png").stat().st_size > 0
