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
                     help="mnist: ROOT/MNIST/raw idx files; cifar10: ROOT/cifar-10-batches-py; "
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
    e.set_defaults(handler=_evaluate)


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


def _prepare(args) -> int:
    from unlearn_core.stages import prepare

    print(json.dumps(prepare(args.data, args.out)))
    return 0


def _train(args) -> int:
    from unlearn_core.config import load_params
    from unlearn_core.stages import train

    print(json.dumps(train(args.prepared, load_params(args.params), args.model)))
    return 0


def _evaluate(args) -> int:
    from unlearn_core.stages import evaluate

    print(json.dumps(evaluate(args.prepared, args.model, args.metrics, args.per_class)))
    return 0
