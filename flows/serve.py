"""``unlearn serve``: the two deployments against a real Prefect server.

- ``process-request``: triggered at once by the ``unlearnops.request.submitted``
  event that ``unlearn submit`` emits (a DeploymentEventTrigger);
- ``watch-queue``: on an interval schedule, the safety net for missed events
  and expired leases (the ephemeral API runs no schedules, hence a server).
"""
from __future__ import annotations

import os

from flows.runtime import Runtime
from flows.services import PrefectServer
from unlearn_core.errors import InputError

SUBMITTED_EVENT = "unlearnops.request.submitted"


def serve_pipeline(rt: Runtime, interval_s: int = 60) -> None:
    rt.require_initialised()
    if not os.environ.get("PREFECT_API_URL"):
        url = PrefectServer(rt.state_dir).api_url()
        if not url:
            raise InputError("PREFECT_API_URL", "not set and no background server runs (run `unlearn up`)")
        os.environ["PREFECT_API_URL"] = url
    from prefect import serve
    from prefect.events import DeploymentEventTrigger

    from flows.process_request import process_request
    from flows.watch_queue import watch_queue
    from tasks.pipeline import ensure_gpu_limit
    from tasks.validation import gx_context

    ensure_gpu_limit()
    gx_context()  # pay the GX import once, not on the first request
    state = str(rt.state_dir)
    trigger = DeploymentEventTrigger(
        expect={SUBMITTED_EVENT}, match={"prefect.resource.id": "unlearnops.request.*"},
        parameters={"request_id": "{{ event.resource['unlearnops.request_id'] }}", "state_dir": state})
    serve(process_request.to_deployment(name="process-request", triggers=[trigger], parameters={"state_dir": state}),
          watch_queue.to_deployment(name="watch-queue", interval=interval_s, parameters={"state_dir": state}))
