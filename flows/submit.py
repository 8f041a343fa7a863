"""Submitting a deletion request: check who signed it, validate, enqueue, and tell the workers (best effort).

Every request arrives in an envelope signed by a registered submitter (adapters/submitters.py); the
submitter's role and quotas (unlearn_core/authorization.py) decide whether it is refused, enqueued,
or held for a human approval (flows/approval.py).
``submit_payload`` never waits on Prefect: the request is durable once it is in
the queue. The notification (the ``unlearnops.request.submitted`` event for
automations and the event-triggered deployment, plus a run for the warm task
workers) goes out from a detached process, so ``unlearn submit`` returns in
about a second whether or not a Prefect server is reachable; ``watch-queue`` is
the safety net for a notification that never arrived.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

from adapters.queue import queue_params
from adapters.runtime import Runtime
from adapters.services import prefect_client_env
from adapters.submitters import SubmitterRegistry, open_envelope, sign_request
from unlearn_core.authorization import Usage, authorization_params, authorize
from unlearn_core.data import read_manifest
from unlearn_core.errors import InputError
from unlearn_core.methods import METHODS
from unlearn_core.requests import (DEFAULT_MAX_PAYLOAD_BYTES, SubmitContext, forget_size, load_json_object,
                                   parse_request)

SUBMITTED_EVENT = "unlearnops.request.submitted"
HELD_EVENT = "unlearnops.request.held"  # triggers the await-approval deployment
ENVELOPE_BYTES = 1024  # what the signature adds to a request's size limit


def submit_payload(rt: Runtime, payload: bytes, notify: bool = True) -> tuple[str, bool]:
    """Check a signed envelope (adapters/submitters.py), validate its request against the current dataset
    version, apply the submitter's role and quotas, and enqueue it (held for approval where they say so).
    Returns (id, created)."""
    rt.require_initialised()
    data_dir = rt.registry.data_dir()
    num_classes = max(r["label"] for r in read_manifest(data_dir)) + 1
    limits = queue_params(rt.params)
    policy = authorization_params(rt.params)
    request_bytes, signed = open_envelope(payload, SubmitterRegistry(rt.state_dir), datetime.now(timezone.utc),
                                          policy.signature_window_s, limits.max_payload_bytes + ENVELOPE_BYTES)
    ctx = SubmitContext.from_data_dir(data_dir, models=rt.model_infos(num_classes), methods=set(METHODS),
                                      substitute_root=rt.substitute_root, bucket=rt.s3.bucket,
                                      max_payload_bytes=limits.max_payload_bytes)
    request = parse_request(request_bytes, ctx)  # fields named as in the request, as its author wrote them
    if rt.queue.contains(request.request_id):
        raise InputError("request_id", f"replayed: {request.request_id} was already submitted "
                                               "(each signed request is accepted once; sign a new one)")
    rows, train_rows = forget_size(request, ctx)
    pending, rows_last_day = rt.queue.usage(signed.name, time.time() - 86400)
    hold = authorize(signed.name, signed.role, request.kind, rows, train_rows, Usage(pending, rows_last_day),
                     policy)
    request_id, created = rt.queue.enqueue(request, submitter=signed.name, forget_rows=rows, hold=hold)
    if created and notify:
        notify_submitted(rt, request_id)
    return request_id, created


def sign_payload(payload: bytes, submitter: str, private_key) -> bytes:
    """A client's plain request JSON as a signed envelope; an envelope already signed is returned as is."""
    obj = load_json_object(payload, DEFAULT_MAX_PAYLOAD_BYTES + ENVELOPE_BYTES)
    if "signature" in obj:
        return payload
    return json.dumps(sign_request(obj, submitter, private_key)).encode()


def notify_submitted(rt: Runtime, request_id: str) -> bool:
    """Start the detached notifier for ``request_id``; False when no Prefect API is configured."""
    env = {**os.environ, **prefect_client_env(rt.state_dir)}
    if not env.get("PREFECT_API_URL"):
        return False
    log = open(rt.state_dir / "notify.log", "ab")
    subprocess.Popen([sys.executable, "-m", "flows.submit", request_id, "--state-dir", str(rt.state_dir)],
                     env=env, stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return True


def _notify(request_id: str, state_dir: str) -> None:
    """Emit the submitted event and hand the request to a warm task worker (a held one: the held event)."""
    from prefect.events import emit_event

    from adapters.runtime import Runtime
    from flows.warm import process_request_task

    resource = {"prefect.resource.id": f"unlearnops.request.{request_id}", "unlearnops.request_id": request_id}
    if Runtime.from_env(state_dir).queue.status(request_id)["state"] == "awaiting_approval":
        emit_event(HELD_EVENT, resource=resource)  # the await-approval deployment asks a human
        return
    process_request_task.delay(request_id=request_id, state_dir=state_dir)  # the fast path first
    emit_event(SUBMITTED_EVENT, resource=resource)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="notify Prefect of a submitted request (run detached)")
    parser.add_argument("request_id")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    _notify(args.request_id, args.state_dir)
