"""``unlearn up`` / ``unlearn down``: the embedded S3 server and background Prefect server."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    help_dir = "state directory (default: $UNLEARNOPS_STATE_DIR or ~/.unlearnops)"
    up = sub.add_parser("up", help="start the embedded S3 server and a background Prefect server")
    up.add_argument("--state-dir", default=None, help=help_dir)
    up.add_argument("--no-prefect", action="store_true", help="start only the S3 server")
    up.set_defaults(handler=_up)
    down = sub.add_parser("down", help="stop what `unlearn up` started (data and keys stay)")
    down.add_argument("--state-dir", default=None, help=help_dir)
    down.set_defaults(handler=_down)


def _state_dir(arg):
    from pathlib import Path

    from adapters.services import default_state_dir
    from unlearn_core.errors import InputError

    state = Path(arg).expanduser().resolve() if arg else default_state_dir().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and state.is_relative_to(checkout):
        raise InputError("--state-dir", f"{state} is inside the project checkout; use a directory outside it")
    return state


def _up(args) -> int:
    from adapters.services import EmbeddedS3, PrefectServer
    from adapters.signing import ensure_signing_key

    state = _state_dir(args.state_dir)
    s3 = EmbeddedS3(state)
    print(("S3 already running" if s3.running() else "S3 started") + ":", end=" ", flush=True)
    cfg = s3.ensure_started()
    print(f"{cfg.endpoint_url} bucket={cfg.bucket} (keys in {s3.keys_file}, mode 0600)")
    print(f"receipt signing key: {ensure_signing_key(state)} (mode 0600)")
    if not args.no_prefect:
        server = PrefectServer(state)
        print(("Prefect already running" if server.running() else "Prefect server starting") + ":",
              end=" ", flush=True)
        url = server.ensure_started()
        print(f"{url} (basic auth; the string is in {server.auth_file}, mode 0600)")
        print(f"  export PREFECT_API_URL={url}")
        print(f"  export PREFECT_API_AUTH_STRING=\"$(cat {server.auth_file})\"")
    return 0


def _down(args) -> int:
    from adapters.services import EmbeddedS3, PrefectServer

    state = _state_dir(args.state_dir)
    for name, service in (("Prefect server", PrefectServer(state)), ("S3", EmbeddedS3(state))):
        print(f"{name}: {'stopped' if service.stop() else 'was not running'}")
    return 0
