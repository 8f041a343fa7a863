"""``unlearn bench classifiers`` (all classifier unlearning methods vs exact retrain), ``unlearn bench cifar10``
and ``unlearn bench scaling``."""
from __future__ import annotations

import argparse


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register_bench(kinds: argparse._SubParsersAction) -> None:
    from flows.commands.bench_args import int_list

    p = kinds.add_parser("classifiers", help="class + random-sample unlearning: every method vs retrain")
    p.add_argument("--classes", type=int_list, default=[0, 3, 8], help="forget classes, e.g. 0,3,8")
    p.add_argument("--fractions", type=_float_list, default=[0.01, 0.1],
                   help="random forget fractions of the training set, e.g. 0.01,0.1")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 seed, 1 class, 1%% only, 1 training epoch (smoke run)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default=None, help="dataset directory (default: build MNIST-5k in a temp dir)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=_run)
    c = kinds.add_parser("cifar10", help="class unlearning on full CIFAR-10: LRA-NPP, concept poisoning and "
                                         "baselines vs retrain, beside the papers' figures")
    c.add_argument("--data", required=True,
                   help="CIFAR-10 dataset directory from `unlearn data import cifar10 ARCHIVE --out DIR`")
    c.add_argument("--classes", type=int_list, default=[4], help="forget classes (default 4, deer, as in the "
                                                                 "concept paper)")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--epochs", type=int, default=6, help="training epochs of the base model and of retraining")
    c.add_argument("--model", choices=("cifar_cnn", "resnet18"), default=None,
                   help="default: resnet18 where a GPU is present, cifar_cnn otherwise")
    c.add_argument("--quick", action="store_true", help="1 seed, 1 class, 1 training epoch (smoke run)")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--out", required=True, help="output directory")
    c.set_defaults(handler=_cifar10)
    s = kinds.add_parser("scaling", help="retrain vs unlearning cost and quality at growing training-set sizes")
    s.add_argument("--sizes", type=int_list, default=[5000, 15000, 30000, 60000],
                   help="training-set sizes (nested random subsets of the train split)")
    s.add_argument("--forget-class", type=int, default=3)
    s.add_argument("--methods", default="lra_npp,concept_poison,salun", help="comma-separated method names")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="1 training epoch (smoke run)")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--data", default=None,
                   help="dataset directory, e.g. full MNIST from `unlearn data import mnist` (default: MNIST-5k)")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(handler=_scaling)


def _run(args) -> int:
    from flows.commands.bench_args import load_bench_dataset
    from unlearn_core.bench import classifiers
    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError

    if args.seeds < 1:
        raise InputError("--seeds", "must be >= 1")
    for f in args.fractions:
        if not 0 < f < 1:
            raise InputError("--fractions", f"{f} is not a fraction in (0, 1)")
    if not args.classes and not args.fractions:
        raise InputError("--classes", "no scenario: give classes and/or fractions")
    params = load_params(args.params)
    ds = load_bench_dataset(args.data)
    for c in args.classes:
        if not 0 <= c < ds.num_classes:
            raise InputError("--classes", f"class {c} is not in the label set 0..{ds.num_classes - 1}")
    classes, fractions, seeds = args.classes, args.fractions, args.seeds
    if args.quick:
        classes, fractions, seeds = classes[:1], fractions[:1], 1
    out = classifiers.run(ds, params, classes, fractions, seeds, args.out, quick=args.quick,
                          progress=lambda msg: print(msg, flush=True))
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0


def _cifar10(args) -> int:
    from unlearn_core.bench import cifar10
    from unlearn_core.config import load_params
    from unlearn_core.data import is_dataset_dir, load_dataset
    from unlearn_core.errors import InputError

    if args.seeds < 1:
        raise InputError("--seeds", "must be >= 1")
    if args.epochs < 1:
        raise InputError("--epochs", "must be >= 1")
    if not is_dataset_dir(args.data):
        raise InputError("--data", f"{args.data} is not a dataset directory; make one with "
                                   "`unlearn data import cifar10 ARCHIVE --out DIR`")
    params = load_params(args.params)
    ds = load_dataset(args.data)
    if ds.image_shape != (3, 32, 32) or ds.num_classes != 10:
        raise InputError("--data", f"{args.data} holds {ds.num_classes} classes of {tuple(ds.image_shape)} images, "
                                   "not CIFAR-10's 10 classes of (3, 32, 32)")
    for c in args.classes:
        if not 0 <= c < ds.num_classes:
            raise InputError("--classes", f"class {c} is not in the label set 0..{ds.num_classes - 1}")
    if not args.classes:
        raise InputError("--classes", "give at least one class")
    classes, seeds = (args.classes[:1], 1) if args.quick else (args.classes, args.seeds)
    out = cifar10.run(ds, params, classes, seeds, args.out, epochs=args.epochs, model=args.model, quick=args.quick,
                      progress=lambda msg: print(msg, flush=True))
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0


def _scaling(args) -> int:
    from flows.commands.bench_args import load_bench_dataset
    from unlearn_core.bench import scaling
    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError
    from unlearn_core.bench.classifiers import CLASS_METHODS

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for m in methods:
        if m not in CLASS_METHODS:
            raise InputError("--methods", f"{m!r} is not a class-unlearning method for classifiers; known: "
                                          f"{', '.join(CLASS_METHODS)}")
    if not args.sizes:
        raise InputError("--sizes", "give at least one size")
    params = load_params(args.params)
    ds = load_bench_dataset(args.data)
    if not 0 <= args.forget_class < ds.num_classes:
        raise InputError("--forget-class", f"class {args.forget_class} is not in 0..{ds.num_classes - 1}")
    try:
        scaling.check_sizes(ds, args.sizes)
    except ValueError as exc:
        raise InputError("--sizes", f"{exc}; for full MNIST: `unlearn data import mnist DIR --out D`, "
                                    "then --data D") from None
    out = scaling.run(ds, params, args.sizes, args.forget_class, args.out, seed=args.seed, methods=methods,
                      epochs=1 if args.quick else None,
                      progress=lambda n, times: print(f"n={n} done: {times}", flush=True))
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0
