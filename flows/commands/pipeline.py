"""Pipeline commands: init, submit, process, serve, status, receipts, models, demo."""
from __future__ import annotations

import argparse
import json
import os
import sys

from flows.commands.governance import STATE_HELP, add_identity_args, identity



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="build the dataset, train the base model, register it as prod")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--models", default=None,
                   help="comma-separated registry names (default: those of params.yaml with train_on_init)")
    p.set_defaults(handler=_init)

    p = sub.add_parser("submit", help="sign, validate and enqueue a deletion request (JSON file or - for stdin)")
    p.add_argument("file", help="request JSON file, or - to read standard input: a plain request (signed here "
                                "with --as/--key) or an envelope already signed by its submitter")
    add_identity_args(p)
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.add_argument("--process", action="store_true", help="process it now in this process (no server needed)")
    p.set_defaults(handler=_submit)

    p = sub.add_parser("process", help="process queued requests now (one id, or drain the queue)")
    p.add_argument("request_id", nargs="?", default=None)
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.set_defaults(handler=_process)

    p = sub.add_parser("serve", help="warm workers + process-request and watch-queue (scheduled) deployments")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.add_argument("--interval", type=int, default=60, help="watch-queue schedule in seconds")
    p.add_argument("--workers", type=int, default=1,
                   help="warm task workers to start (0: process-request runs per event, in fresh processes)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("worker", help="a warm task worker (default) or, with --pool, a work-pool process worker")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.add_argument("--limit", type=int, default=None,
                   help="requests run at once (default 2, one per model at most); with --pool: flow runs at once "
                        "(default no limit)")
    p.add_argument("--pool", default=None, help="run flow runs of this work pool instead (see `unlearn deploy`)")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("deploy", help="create the work pool and apply the deployments of prefect.yaml")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.add_argument("--pool", default="unlearnops")
    p.set_defaults(handler=_deploy)

    p = sub.add_parser("status", help="state, attempts and result of one request (none: the queue's counts and "
                                      "every request awaiting approval)")
    p.add_argument("request_id", nargs="?", default=None)
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.set_defaults(handler=_status)

    p = sub.add_parser("receipts", help="list deletion receipts (or show one)")
    p.add_argument("request_id", nargs="?", default=None)
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.set_defaults(handler=_receipts)

    p = sub.add_parser("models", help="model versions, stages and lineage")
    p.add_argument("--state-dir", default=None, help=STATE_HELP)
    p.add_argument("--model", default=None, help="registry model name (default: all)")
    p.set_defaults(handler=_models)

    p = sub.add_parser("demo", help="end to end on a fresh state: base model, a class and a subject deletion")
    p.add_argument("--state-dir", default=None, help="default: a new temporary directory")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(handler=_demo)


def _runtime(args):
    from adapters.runtime import Runtime

    return Runtime.from_env(args.state_dir)


def _init(args) -> int:
    from flows.setup import init_pipeline

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    rt = init_pipeline(_runtime(args).state_dir, args.params, models)
    print(f"pipeline ready in {rt.state_dir}")
    return 0


def _submit(args) -> int:
    from unlearn_core.errors import InputError

    rt = _runtime(args)
    try:
        payload = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
    except OSError as exc:
        raise InputError("file", f"cannot read {args.file}: {exc.strerror}") from None
    from adapters.submitters import KEY_ENV
    from flows.submit import sign_payload, submit_payload

    if args.submitter or args.key or os.environ.get(KEY_ENV):  # sign here (an envelope is left as it is)
        payload = sign_payload(payload, *identity(args))
    request_id, created = submit_payload(rt, payload, notify=not args.process)
    state = rt.queue.status(request_id)
    if not created:
        print(f"{request_id} already submitted (same idempotency key)")
    elif state["state"] == "awaiting_approval":
        print(f"{request_id} held for approval: {state['details']['hold']['reason']} "
              f"(`unlearn approve {request_id}` or the Prefect UI)")
    else:
        print(f"{request_id} enqueued")
    if args.process:
        from adapters.services import TemporaryPrefectApi

        with TemporaryPrefectApi(rt.state_dir):
            from flows.process_request import process_request

            print(json.dumps(process_request(request_id=request_id, state_dir=str(rt.state_dir))))
    return 0


def _process(args) -> int:
    from adapters.services import TemporaryPrefectApi

    rt = _runtime(args)
    rt.require_initialised()
    with TemporaryPrefectApi(rt.state_dir):
        if args.request_id:
            from flows.process_request import process_request

            print(json.dumps(process_request(request_id=args.request_id, state_dir=str(rt.state_dir))))
        else:
            from flows.watch_queue import watch_queue

            print(json.dumps(watch_queue(state_dir=str(rt.state_dir))))
    return 0


def _serve(args) -> int:
    from flows.serve import serve_pipeline

    serve_pipeline(_runtime(args), interval_s=args.interval, workers=args.workers)
    return 0


def _worker(args) -> int:
    from flows.serve import resolve_api_url
    from flows.worker import run_worker

    rt = _runtime(args)
    resolve_api_url(rt)
    if args.pool:
        from flows.deploy import run_pool_worker

        return run_pool_worker(rt, args.pool, limit=args.limit)
    run_worker(str(rt.state_dir), limit=2 if args.limit is None else args.limit)
    return 0


def _deploy(args) -> int:
    from flows.deploy import deploy
    from flows.serve import resolve_api_url

    rt = _runtime(args)
    resolve_api_url(rt)
    deploy(rt, args.pool)
    print(f"deployments process-request (event-triggered), watch-queue (every 60 s) and retention (daily) "
          f"on pool {args.pool}")
    return 0


def _status(args) -> int:
    queue = _runtime(args).queue
    if args.request_id:
        print(json.dumps(queue.status(args.request_id), indent=2, default=str))
        return 0
    print(json.dumps(queue.counts()))
    for view in queue.list(["awaiting_approval"]):
        hold = (view["details"] or {}).get("hold") or {}
        flag = f"ESCALATED {hold['escalated_at']}: " if hold.get("escalated_at") else ""
        print(f"awaiting approval  {view['request_id']}  {view['request']['kind']:<7}  {view['request']['model']}  "
              f"by {view['submitter']}  held {hold.get('held_at')}  {flag}{hold.get('reason')}")
    return 0


def _receipts(args) -> int:
    from unlearn_core.errors import InputError
    from unlearn_core.receipts import read_receipts, render_markdown

    receipts = read_receipts(_runtime(args).receipts_dir)
    if args.request_id:
        match = [r for r in receipts if r["request_id"] == args.request_id]
        if not match:
            raise InputError("request_id", f"no receipt for {args.request_id}")
        print(render_markdown(match[0]))
        return 0
    for r in receipts:
        print(f"{r['issued_at']}  {r['request_id']}  {r['status']:<8}  {r['kind']:<7}  {r['model']}  "
              f"{r.get('parent_version')} -> {r.get('new_version')}  deleted={len(r.get('deleted_sample_ids') or [])}")
    return 0


def _models(args) -> int:
    rt = _runtime(args)
    rt.require_initialised()
    for name in ([args.model] if args.model else list(rt.models)):
        for v in rt.registry.versions(name):
            lin = v.lineage
            print(f"{name} {v.semver} stages={','.join(v.stages) or '-'} method={lin.get('method')} "
                  f"request={v.request_id or '-'} deleted={len(lin.get('deleted_sample_ids') or [])} "
                  f"model_md5={v.model_md5[:10]} git={v.git_sha[:10]}")
    return 0


def _demo(args) -> int:
    from flows.demo import run_demo

    return run_demo(args.state_dir, args.params)
