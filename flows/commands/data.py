"""``unlearn data build`` and ``unlearn stage prepare|train|evaluate`` (the DVC stages)."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build the embedded dataset").add_subparsers(dest="data_cmd", required=True)
    build = data.add_parser("build", help="write the deterministic MNIST-5k dataset directory")
    build.add_argument("--out", default="data", help="dataset directory (default: data, tracked by data.dvc)")
    build.add_argument("--params", default="params.yaml")
    build.set_defaults(handler=_build)
    imp = data.add_parser("import", help="write a dataset directory from local MNIST / CIFAR-10 / image folders")
    imp.add_argument("format", choices=("mnist", "cifar10", "imagefolder"),
                     help="mnist: the four idx files (gzipped or not) in ROOT or ROOT/MNIST/raw; cifar10: an "
                          "image-folder .tar.gz (ROOT or the one in ROOT), ROOT/train|test/<class>/*.jpg, or "
                          "ROOT/cifar-10-batches-py; "
                          "imagefolder: ROOT/train/<class>/*.png and ROOT/test/<class>/*.png")
    imp.add_argument("root")
    imp.add_argument("--out", required=True, help="dataset directory to write")
    imp.add_argument("--params", default="params.yaml")
    imp.set_defaults(handler=_import)

    stage = sub.add_parser("stage", help="run one DVC pipeline stage (dvc.yaml calls these)")
    stages = stage.add_subparsers(dest="stage", required=True)
    p = stages.add_parser("prepare", help="tombstoned train/test view of the dataset")
    p.add_argument("--data", default="data")
    p.add_argument("--out", default="prepared")
    p.set_defaults(handler=_prepare)
    t = stages.add_parser("train", help="train the base classifier")
    t.add_argument("--prepared", default="prepared")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--model", default="models/base.pt")
    t.set_defaults(handler=_train)
    e = stages.add_parser("evaluate", help="metrics and per-class accuracy of the base classifier")
    e.add_argument("--prepared", default="prepared")
    e.add_argument("--model", default="models/base.pt")
    e.add_argument("--metrics", default="metrics/base.json")
    e.add_argument("--per-class", default="metrics/per_class.csv")
    e.add_argument("--params", default="params.yaml")
    e.set_defaults(handler=_evaluate)
    c = stages.add_parser("check-metrics", help="compare the workspace's metrics with a commit's, within the "
                                                "reproducibility tolerance (where bytes cannot match, e.g. GPU)")
    c.add_argument("--rev", default="HEAD", help="git revision holding the locked metrics (default: HEAD)")
    c.add_argument("--params", default="params.yaml")
    c.set_defaults(handler=_check_metrics)


def _build(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.data import build_mnist5k

    p = load_params(args.params).prepare
    out = build_mnist5k(args.out, p.test_fraction, p.samples_per_subject, p.seed)
    print(f"wrote {out}")
    return 0


def _import(args) -> int:
    from pathlib import Path

    from unlearn_core import data
    from unlearn_core.config import load_params

    p = load_params(args.params).prepare
    if args.format == "mnist":
        train, test = data.load_mnist_folder(args.root, True), data.load_mnist_folder(args.root, False)
    elif args.format == "cifar10":
        train, test = data.load_cifar10_folder(args.root, True), data.load_cifar10_folder(args.root, False)
    else:
        root = Path(args.root)
        train, test = (data.load_image_folder(root / part)[:2] for part in ("train", "test"))
    out = data.import_arrays(args.out, train, test, p.samples_per_subject, p.seed)
    print(f"wrote {out} ({len(train[1])} train, {len(test[1])} test)")
    return 0


def reproducible(params):
    """The stage's run set up to repeat dvc.lock's bytes (params.yaml: reproducibility)."""
    from unlearn_core.training import reproducible as run_reproducibly

    return run_reproducibly(params.reproducibility.cpu_threads)


def _prepare(args) -> int:
    from unlearn_core.stages import prepare

    print(json.dumps(prepare(args.data, args.out)))
    return 0


def _train(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.stages import train

    params = load_params(args.params)
    with reproducible(params):
        print(json.dumps(train(args.prepared, params, args.model)))
    return 0


def _evaluate(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.stages import evaluate

    with reproducible(load_params(args.params)):
        print(json.dumps(evaluate(args.prepared, args.model, args.metrics, args.per_class)))
    return 0


def _check_metrics(args) -> int:
    """``dvc metrics diff REV`` with the tolerance of params.yaml: exit 1 on a difference beyond it."""
    import subprocess

    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError
    from unlearn_core.stages import metric_mismatches

    tolerance = load_params(args.params).reproducibility.tolerance
    run = subprocess.run(["dvc", "metrics", "diff", args.rev, "--all", "--json"], capture_output=True, text=True)
    if run.returncode != 0:
        raise InputError("--rev", run.stderr.strip() or f"dvc metrics diff {args.rev} failed")
    diff = json.loads(run.stdout or "{}")
    locked = {path: {k: v.get("old") for k, v in values.items()} for path, values in diff.items()}
    reproduced = {path: {k: v.get("new") for k, v in values.items()} for path, values in diff.items()}
    mismatches = metric_mismatches(locked, reproduced, tolerance)
    for line in mismatches:
        print(line)
    n = sum(len(values) for values in diff.values())
    print(f"{n - len(mismatches)} of {n} metrics match {args.rev} within tolerance {tolerance}")
    return 1 if mismatches else 0
