"""``unlearn bench ...``: measured, side-by-side comparisons (JSON + markdown + PNG)."""
from __future__ import annotations

import argparse

# Other benchmark groups: modules in flows/commands/ exposing ``register_bench(kinds)``,
# which adds their ``unlearn bench NAME`` sub-command to ``kinds``.
BENCH_MODULES: tuple[str, ...] = ("bench_classifiers", "bench_gan", "bench_pipeline")


def _class_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes: expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: JSON rows, a markdown table and a PNG plot")
    kinds = bench.add_subparsers(dest="bench", required=True)
    lra = kinds.add_parser("lra-npp", help="original vs LRA-NPP variants vs exact retrain")
    lra.add_argument("--classes", type=_class_list, default=[0, 3, 8], help="forget classes, e.g. 0,3,8")
    lra.add_argument("--seeds", type=int, default=3)
    lra.add_argument("--quick", action="store_true", help="1 seed, 1 class, 1 epoch, 2 variants (<1 min)")
    lra.add_argument("--params", default="params.yaml")
    lra.add_argument("--data", default=None, help="dataset directory (default: build MNIST-5k in a temp dir)")
    lra.add_argument("--out", required=True, help="output directory")
    lra.set_defaults(handler=_lra_npp)
    import importlib

    for module in BENCH_MODULES:
        importlib.import_module(f"flows.commands.{module}").register_bench(kinds)


def load_bench_dataset(data_dir):
    """The dataset directory given, or MNIST-5k built in a temporary directory."""
    import tempfile

    from unlearn_core.data import build_mnist5k, load_dataset

    if data_dir:
        return load_dataset(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return load_dataset(build_mnist5k(tmp))


def _lra_npp(args) -> int:
    from unlearn_core.bench import lra_npp
    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError

    if args.seeds < 1:
        raise InputError("--seeds", "must be >= 1")
    params = load_params(args.params)
    ds = load_bench_dataset(args.data)
    for c in args.classes:
        if not 0 <= c < ds.num_classes:
            raise InputError("--classes", f"class {c} is not in the label set 0..{ds.num_classes - 1}")
    classes = args.classes[:1] if args.quick else args.classes
    seeds = 1 if args.quick else args.seeds
    out = lra_npp.run(ds, params, classes, seeds, args.out, quick=args.quick,
                      progress=lambda s, c: print(f"seed {s} class {c} done", flush=True))
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0
