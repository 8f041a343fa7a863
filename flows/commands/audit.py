"""Audit commands: ``unlearn verify`` (check a receipt), ``unlearn retention`` (erase expired versions now) and
``unlearn registry inputs|derive`` (the commands of the registry's DVC stages, run by ``dvc repro``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

STATE_HELP = "state directory (default: $UNLEARNOPS_STATE_DIR or ~/.unlearnops)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-derive a receipt's claims from a fresh clone of the registry")
    p.add_argument("receipt", help="REQUEST_ID (its receipt is read from the registry) or RECEIPT.json")
    p.add_argument("--registry", default=None,
                   help="git URL of the registry (default: the state dir's registry workspace)")
    p.add_argument("--state-dir", default=None, help=STATE_HELP + "; only for the embedded S3's keys")
    p.add_argument("--params", default="params.yaml", help="for verify.metric_tolerance")
    p.add_argument("--recompute", action="store_true",
                   help="also re-derive the version with `dvc repro` in a clone and compare it (md5, else metrics)")
    p.set_defaults(handler=_verify)

    registry = sub.add_parser("registry", help="the registry's DVC stage commands (run by `dvc repro` in a clone)")
    stage = registry.add_subparsers(dest="registry_command", required=True, metavar="STAGE")
    p = stage.add_parser("inputs", help="check a model's stage inputs (parent, substitutes) or name their erasure")
    p.add_argument("model", help="registry model name")
    p.set_defaults(handler=_inputs)
    p = stage.add_parser("derive", help="re-derive models/MODEL/model.pt from the stage's recorded inputs")
    p.add_argument("model", help="registry model name")
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads (CPU results depend on the count)")
    p.set_defaults(handler=_derive)

    p = sub.add_parser("retention", help="erase superseded model versions whose grace period ended (once)")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.set_defaults(handler=_retention)


def _verify(args) -> int:
    from flows.verify import run_verify

    return run_verify(args.receipt, args.registry, args.state_dir, args.params, recompute=args.recompute)


ERASED_EXIT = 3  # the stage refuses: an input was erased on purpose


def _inputs(args) -> int:
    from adapters.rederivation import check_inputs
    from unlearn_core.rederive import ErasedInput

    try:
        print("\n".join(check_inputs(Path.cwd(), args.model)))
    except ErasedInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERASED_EXIT
    return 0


def _derive(args) -> int:
    import json

    from unlearn_core.rederive import ErasedInput, rederive

    try:
        print(json.dumps(rederive(Path.cwd(), args.model, args.cpu_threads)))
    except ErasedInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERASED_EXIT
    return 0


def _retention(args) -> int:
    from adapters.runtime import Runtime
    from adapters.services import TemporaryPrefectApi

    rt = Runtime.from_env(args.state_dir)
    rt.require_initialised()
    with TemporaryPrefectApi(rt.state_dir):
        from flows.retention import retention

        erased = retention(state_dir=str(rt.state_dir))
    print(f"erased {len(erased)} model version(s)" + (": " + ", ".join(erased) if erased else ""))
    return 0
