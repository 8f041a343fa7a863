"""``unlearn bench ...``: measured, side-by-side comparisons (JSON + markdown + PNG)."""
from __future__ import annotations

import argparse

from flows.commands.bench_args import int_list, load_bench_dataset


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: JSON rows, a markdown table and a PNG plot")
    kinds = bench.add_subparsers(dest="bench", required=True)
    lra = kinds.add_parser("lra-npp", help="original vs LRA-NPP variants vs exact retrain")
    lra.add_argument("--classes", type=int_list, default=[0, 3, 8], help="forget classes, e.g. 0,3,8")
    lra.add_argument("--seeds", type=int, default=3)
    lra.add_argument("--quick", action="store_true", help="1 seed, 1 class, 1 epoch, 2 variants (<1 min)")
    lra.add_argument("--params", default="params.yaml")
    lra.add_argument("--data", default=None, help="dataset directory (default: build MNIST-5k in a temp dir)")
    lra.add_argument("--out", required=True, help="output directory")
    lra.set_defaults(handler=_lra_npp)
    storage = kinds.add_parser("storage", help="bytes one subject deletion adds to the DVC remote: shards vs one file")
    storage.add_argument("--data", default=None, help="dataset directory (default: build MNIST-5k in a temp dir)")
    storage.add_argument("--subjects", type=int, default=1, help="subjects deleted in the one request")
    storage.add_argument("--out", required=True, help="output directory")
    storage.set_defaults(handler=_storage)
    # the other benchmark groups add their own ``unlearn bench NAME`` sub-commands
    from flows.commands import bench_classifiers, bench_gan, bench_llm, bench_pipeline

    for group in (bench_classifiers, bench_gan, bench_llm, bench_pipeline):
        group.register_bench(kinds)


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


def _storage(args) -> int:
    from flows.bench_storage import run
    from unlearn_core.data import is_dataset_dir
    from unlearn_core.errors import InputError

    if args.subjects < 1:
        raise InputError("--subjects", "must be >= 1")
    if args.data and not is_dataset_dir(args.data):
        raise InputError("--data", f"{args.data} is not a dataset directory (see `unlearn data`)")
    out = run(args.out, args.data, args.subjects)
    print(open(out["paths"]["markdown"]).read())
    return 0
