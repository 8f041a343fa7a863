"""``unlearn bench pipeline`` (demo wall time) and ``unlearn bench service`` (served latency)."""
from __future__ import annotations

import argparse


def register_bench(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("pipeline", help="`unlearn demo` wall time on a fresh state")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_pipeline)
    p = kinds.add_parser("service", help="served path on warm workers: submit latency, submit -> promoted p50/p95")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--requests", type=int, default=5, help="class and subject deletions each (max 5 classes)")
    p.add_argument("--workers", type=int, default=1, help="warm task workers")
    p.add_argument("--burst", type=int, default=0,
                   help="instead: a burst of N subject deletions in each scenario (1/2 workers, 1/4 models, "
                        "with/without batching)")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_service)


def _pipeline(args) -> int:
    from pathlib import Path

    from flows.bench_pipeline import run

    out = run(args.out, str(Path(args.params).resolve()), args.repeats)
    print(open(out["paths"]["markdown"]).read())
    return 0


def _service(args) -> int:
    from pathlib import Path

    from flows.bench_service import CLASSES, run, run_burst
    from unlearn_core.errors import InputError

    if args.burst:
        if args.burst < 2:
            raise InputError("--burst", "must be >= 2")
        out = run_burst(args.out, str(Path(args.params).resolve()), args.burst)
        print(open(out["paths"]["markdown"]).read())
        return 0
    if not 1 <= args.requests <= len(CLASSES):
        raise InputError("--requests", f"must be 1..{len(CLASSES)}")
    if args.workers < 1:
        raise InputError("--workers", "must be >= 1")
    out = run(args.out, str(Path(args.params).resolve()), args.requests, args.workers)
    print(open(out["paths"]["markdown"]).read())
    return 0
