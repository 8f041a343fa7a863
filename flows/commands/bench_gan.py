"""``unlearn bench gan``: original vs cascade_gan vs retrain_gan (JSON + markdown + PNG sample grids)."""
from __future__ import annotations

import argparse


def register_bench(kinds: argparse._SubParsersAction) -> None:
    gan = kinds.add_parser("gan", help="GAN class + item unlearning: cascade_gan vs exact retraining")
    gan.add_argument("--seeds", type=int, default=3)
    gan.add_argument("--forget-class", type=int, default=3, help="class of the class scenario")
    gan.add_argument("--items", type=int, default=64, help="training images forgotten in the item scenario")
    gan.add_argument("--quick", action="store_true", help="1 seed, 2-epoch GAN, small metric samples (smoke run)")
    gan.add_argument("--params", default="params.yaml")
    gan.add_argument("--data", default=None, help="dataset directory (default: build MNIST-5k in a temp dir)")
    gan.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (1: stable timings on a shared machine)")
    gan.add_argument("--out", required=True, help="output directory")
    gan.set_defaults(handler=_bench_gan)


def _bench_gan(args) -> int:
    from flows.commands.bench_args import load_bench_dataset
    from unlearn_core.bench import gan
    from unlearn_core.config import load_params
    from unlearn_core.errors import InputError

    import torch

    if args.seeds < 1:
        raise InputError("--seeds", "must be >= 1")
    if args.threads < 1:
        raise InputError("--threads", "must be >= 1")
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    ds = load_bench_dataset(args.data)
    if not 0 <= args.forget_class < ds.num_classes:
        raise InputError("--forget-class", f"class {args.forget_class} is not in 0..{ds.num_classes - 1}")
    if not 0 < args.items < len(ds.train):
        raise InputError("--items", f"must be between 1 and {len(ds.train) - 1} (training set size - 1)")
    out = gan.run(ds, params, 1 if args.quick else args.seeds, args.out, forget_class=args.forget_class,
                  n_items=args.items, quick=args.quick,
                  progress=lambda s, scenario: print(f"seed {s} {scenario} done", flush=True))
    print(open(out["paths"]["markdown"]).read())
    print("wrote", ", ".join(out["paths"].values()))
    return 0
