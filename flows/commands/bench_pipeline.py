"""``unlearn bench pipeline``: demo wall time and served submit -> promoted latency."""
from __future__ import annotations

import argparse


def register_bench(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("pipeline", help="demo wall time; served submit -> promoted latency and overhead")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--requests", type=int, default=3, choices=(1, 2, 3), help="class deletions on the served pipeline")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from pathlib import Path

    from flows.bench_pipeline import run

    out = run(args.out, str(Path(args.params).resolve()), args.requests)
    print(open(out["paths"]["markdown"]).read())
    return 0
