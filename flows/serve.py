"""``unlearn serve``: warm task workers plus the two deployments, against a real Prefect server.

- ``--workers N`` (default 1) warm task workers (``unlearn worker`` subprocesses) run the
  requests that ``unlearn submit`` hands them: the fast path;
- ``process-request``: a deployment for requests nobody picked up. With ``--workers 0`` it is
  triggered at once by the ``unlearnops.request.submitted`` event (a DeploymentEventTrigger;
  each run is a fresh process, so it pays the imports); with warm workers it has no trigger,
  so the event and the warm run never race for the same request;
- ``await-approval``: triggered by ``unlearnops.request.held``; pauses for a human decision about a
  held request (flows/approval.py);
- ``watch-queue``: on an interval schedule, the safety net for missed notifications and
  expired leases (the ephemeral API runs no schedules, hence a server);
- ``retention``: every ``retention.schedule_hours``, erases model versions superseded by a
  deletion once their grace period ended.
"""
from __future__ import annotations

import os
import subprocess
import sys

from adapters.runtime import Runtime
from adapters.services import prefect_client_env
from flows.submit import HELD_EVENT, SUBMITTED_EVENT
from unlearn_core.errors import InputError

RUNNER_POLL_S = "2"  # Prefect's default is 10 s: a triggered run would wait that long to start


def resolve_api_url(rt: Runtime) -> str:
    """``PREFECT_API_URL``, or the background server of ``unlearn up`` with its auth (exported for child
    processes)."""
    os.environ.update(prefect_client_env(rt.state_dir))
    if not os.environ.get("PREFECT_API_URL"):
        raise InputError("PREFECT_API_URL", "not set and no background server runs (run `unlearn up`)")
    return os.environ["PREFECT_API_URL"]


def serve_pipeline(rt: Runtime, interval_s: int = 60, workers: int = 1) -> None:
    rt.require_initialised()
    if workers < 0:
        raise InputError("--workers", "must be >= 0")
    resolve_api_url(rt)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", RUNNER_POLL_S)
    unlearn = [sys.executable, "-m", "flows.cli"]
    children = [subprocess.Popen([*unlearn, "worker", "--state-dir", str(rt.state_dir)], stdin=subprocess.DEVNULL)
                for _ in range(workers)]
    try:
        from prefect import serve
        from prefect.events import DeploymentEventTrigger

        from adapters.retention import retention_params
        from flows.approval import await_approval
        from flows.process_request import process_request
        from flows.retention import retention
        from flows.watch_queue import watch_queue

        state = str(rt.state_dir)
        triggers = [] if workers else [DeploymentEventTrigger(
            expect={SUBMITTED_EVENT}, match={"prefect.resource.id": "unlearnops.request.*"},
            parameters={"request_id": "{{ event.resource['unlearnops.request_id'] }}", "state_dir": state})]
        held = DeploymentEventTrigger(
            expect={HELD_EVENT}, match={"prefect.resource.id": "unlearnops.request.*"},
            parameters={"request_id": "{{ event.resource['unlearnops.request_id'] }}", "state_dir": state})
        serve(process_request.to_deployment(name="process-request", triggers=triggers,
                                            parameters={"state_dir": state}),
              await_approval.to_deployment(name="await-approval", triggers=[held], parameters={"state_dir": state}),
              watch_queue.to_deployment(name="watch-queue", interval=interval_s, parameters={"state_dir": state}),
              retention.to_deployment(name="retention", parameters={"state_dir": state},
                                      interval=retention_params(rt.params).schedule_hours * 3600))
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)
