"""Submitting a deletion request: validate, enqueue, and tell the workers (best effort).

``submit_payload`` never waits on Prefect: the request is durable once it is in
the queue. The notification (the ``unlearnops.request.submitted`` event for
automations and the event-triggered deployment, plus a run for the warm task
workers) goes out from a detached process, so ``unlearn submit`` returns in
about a second whether or not a Prefect server is reachable; ``watch-queue`` is
the safety net for a notification that never arrived.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from adapters.queue import queue_params
from adapters.runtime import Runtime
from adapters.services import PrefectServer
from unlearn_core.data import read_manifest
from unlearn_core.methods import METHODS
from unlearn_core.requests import SubmitContext, parse_request

SUBMITTED_EVENT = "unlearnops.request.submitted"


def submit_payload(rt: Runtime, payload: bytes, notify: bool = True) -> tuple[str, bool]:
    """Validate ``payload`` against the current dataset version and enqueue it. Returns (id, created)."""
    rt.require_initialised()
    data_dir = rt.registry.data_dir()
    num_classes = max(r["label"] for r in read_manifest(data_dir)) + 1
    ctx = SubmitContext.from_data_dir(data_dir, models=rt.model_infos(num_classes), methods=set(METHODS),
                                      substitute_root=rt.substitute_root, bucket=rt.s3.bucket,
                                      max_payload_bytes=queue_params(rt.params).max_payload_bytes)
    request = parse_request(payload, ctx)
    request_id, created = rt.queue.enqueue(request)
    if created and notify:
        notify_submitted(rt, request_id)
    return request_id, created


def notify_submitted(rt: Runtime, request_id: str) -> bool:
    """Start the detached notifier for ``request_id``; False when no Prefect API is configured."""
    api_url = os.environ.get("PREFECT_API_URL") or PrefectServer(rt.state_dir).api_url()
    if not api_url:
        return False
    log = open(rt.state_dir / "notify.log", "ab")
    subprocess.Popen([sys.executable, "-m", "flows.submit", request_id, "--state-dir", str(rt.state_dir)],
                     env={**os.environ, "PREFECT_API_URL": api_url}, stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return True


def _notify(request_id: str, state_dir: str) -> None:
    """Emit the submitted event and hand the request to a warm task worker."""
    from prefect.events import emit_event

    from flows.warm import process_request_task

    process_request_task.delay(request_id=request_id, state_dir=state_dir)  # the fast path first
    emit_event(SUBMITTED_EVENT, resource={"prefect.resource.id": f"unlearnops.request.{request_id}",
                                          "unlearnops.request_id": request_id})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="notify Prefect of a submitted request (run detached)")
    parser.add_argument("request_id")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    _notify(args.request_id, args.state_dir)
