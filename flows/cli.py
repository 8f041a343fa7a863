"""UnlearnOps: deletion requests in, unlearned, evaluated and versioned models out.

Bad input (``InputError``) prints ``error: <field>: <reason>`` and exits 2;
nothing is written before validation passes.
"""
from __future__ import annotations

import argparse
import os
import sys

from flows.commands import audit, bench, data, gan, governance, lm, pipeline, services

COMMAND_GROUPS = (data, bench, services, pipeline, governance, audit, gan, lm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def pin_cpu_kernels() -> None:
    """The CPU kernels the DVC stages pin (docs/dvc.md), for the whole process and the workers it starts.

    torch picks its kernels at the first tensor operation, so a ``reproducible()`` block entered later
    cannot change them; set here, every model the service makes on CPU is one ``dvc repro`` re-derives
    byte for byte. An explicit setting in the environment wins.
    """
    from unlearn_core.training import PINNED_CPU_KERNELS

    for key, value in PINNED_CPU_KERNELS.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    pin_cpu_kernels()
    args = build_parser().parse_args(argv)
    from unlearn_core.errors import InputError

    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
