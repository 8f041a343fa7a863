"""Audit commands: ``unlearn verify`` (check a receipt) and ``unlearn retention`` (erase expired versions now)."""
from __future__ import annotations

import argparse

STATE_HELP = "state directory (default: $UNLEARNOPS_STATE_DIR or ~/.unlearnops)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-derive a receipt's claims from a fresh clone of the registry")
    p.add_argument("receipt", help="REQUEST_ID (its receipt is read from the registry) or RECEIPT.json")
    p.add_argument("--registry", default=None,
                   help="git URL of the registry (default: the state dir's registry workspace)")
    p.add_argument("--state-dir", default=None, help=STATE_HELP + "; only for the embedded S3's keys")
    p.add_argument("--params", default="params.yaml", help="for verify.metric_tolerance")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("retention", help="erase superseded model versions whose grace period ended (once)")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.set_defaults(handler=_retention)


def _verify(args) -> int:
    from flows.verify import run_verify

    return run_verify(args.receipt, args.registry, args.state_dir, args.params)


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
