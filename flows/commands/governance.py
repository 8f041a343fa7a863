"""Who may delete what: submitters (keys and roles), and the human decision on held requests."""
from __future__ import annotations

import argparse
import json
import os
import sys

STATE_HELP = "state directory (default: $UNLEARNOPS_STATE_DIR or ~/.unlearnops)"
AS_HELP = "your registered submitter name (default: $UNLEARNOPS_SUBMITTER)"
KEY_HELP = "your private key file (default: $UNLEARNOPS_SUBMITTER_KEY)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submitters", help="register a submitter (key pair + role) or list them")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a key pair; the public key stays with the service")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("subject", "governance"),
                     help="subject: sample and subject deletions; governance: also class deletions (approved)")
    add.add_argument("--key-out", default=None,
                     help="write the private key here (0600; never inside the state dir); default: print it")
    add.add_argument("--state-dir", default=None, help=STATE_HELP)
    add.set_defaults(handler=_add)
    ls = actions.add_parser("list", help="names, roles and key ids")
    ls.add_argument("--state-dir", default=None, help=STATE_HELP)
    ls.set_defaults(handler=_list)

    for name, helptext in (("approve", "approve a held request (a governance submitter, not its requester)"),
                           ("reject", "reject a held request; it ends with a rejected receipt")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("request_id")
        p.add_argument("--reason", required=name == "reject", default="",
                       help="why (goes into the queue history and the receipt)")
        add_identity_args(p)
        p.add_argument("--state-dir", default=None, help=STATE_HELP)
        p.set_defaults(handler=_decide, approve=name == "approve")


def add_identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as", dest="submitter", default=None, help=AS_HELP)
    p.add_argument("--key", default=None, help=KEY_HELP)


def identity(args, field: str = "--as") -> tuple[str, object]:
    """(submitter name, private key) from --as/--key or their environment variables."""
    from adapters.submitters import KEY_ENV, NAME_ENV, load_private_key
    from unlearn_core.errors import InputError

    name = args.submitter or os.environ.get(NAME_ENV)
    key = args.key or os.environ.get(KEY_ENV)
    if not name:
        raise InputError(field, f"required: your submitter name (or set ${NAME_ENV})")
    if not key:
        raise InputError("--key", f"required: your private key file (or set ${KEY_ENV})")
    return name, load_private_key(key)


def _runtime(args):
    from adapters.runtime import Runtime

    return Runtime.from_env(args.state_dir)


def _add(args) -> int:
    from adapters.submitters import SubmitterRegistry, key_destination, write_private_key

    rt = _runtime(args)
    dest = key_destination(args.key_out, rt.state_dir) if args.key_out else None  # before anything is created
    pem = SubmitterRegistry(rt.state_dir).add(args.name, args.role)
    if dest:
        write_private_key(pem, dest)
        print(f"submitter {args.name} ({args.role}) added; private key in {dest} (keep it; it is not stored)")
    else:
        sys.stdout.write(pem.decode())
        print(f"submitter {args.name} ({args.role}) added; the private key above is not stored", file=sys.stderr)
    return 0


def _list(args) -> int:
    from adapters.submitters import SubmitterRegistry

    for s in SubmitterRegistry(_runtime(args).state_dir).list():
        print(f"{s.name}  {s.role:<10}  key {s.key_id}  added {s.added_at}")
    return 0


def _decide(args) -> int:
    from adapters.services import prefect_client_env
    from adapters.submitters import SubmitterRegistry, check_key_holder

    rt = _runtime(args)
    rt.require_initialised()
    name, key = identity(args)
    check_key_holder(SubmitterRegistry(rt.state_dir), name, key)
    os.environ.update(prefect_client_env(rt.state_dir))  # before Prefect is imported: it reads its settings once
    from flows.approval import decide, resume_waiting_run

    outcome = decide(rt, args.request_id, name, args.approve, args.reason)
    if outcome["status"] in ("approved", "rejected"):
        outcome["prompt_closed"] = resume_waiting_run(rt, args.request_id, name, args.approve, args.reason)
    print(json.dumps(outcome))
    return 0
