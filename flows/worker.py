"""Warm workers: Prefect task workers that keep torch, GX and the pipeline loaded between requests.

Prefect's ``serve()`` runners and process workers start a fresh Python process
for every flow run and pay the imports each time (seconds). A task worker
(``prefect.task_worker.serve``) is one long-lived process subscribed to the
Prefect server; ``process_request_task.delay(...)`` (sent by ``unlearn submit``'s
notifier) reaches it in a fraction of a second, and it runs the
``process-request`` flow in-process. Several workers, on one machine or many,
share the runs; the queue's per-model leases keep one writer per model.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.runtime import Runtime
from flows.process_request import process_request

WAIT_POLL_S = 0.5
WAIT_MAX_S = 3600.0  # a model's queue this long means something is wrong; watch-queue takes over then


@task(name="process-request-warm", cache_policy=NO_CACHE, persist_result=False)
def process_request_task(request_id: str, state_dir: str) -> dict:
    """Run ``process-request`` for one request, waiting while another worker holds its model.

    A request whose model is busy stays pending; this worker waits for the model's
    writer to finish instead of leaving the request to the next ``watch-queue``
    round. A writer that died stops heartbeating, its lease expires and the wait ends.
    """
    rt = Runtime.from_env(state_dir)
    rt.require_initialised()  # a run handed over for a state that no longer exists fails here, writing nothing
    model = rt.queue.status(request_id)["request"]["model"]
    deadline = time.monotonic() + WAIT_MAX_S
    while True:
        while _waits_for_model(rt, request_id, model) and time.monotonic() < deadline:
            time.sleep(WAIT_POLL_S)
        outcome = process_request(request_id=request_id, state_dir=state_dir)
        if outcome["status"] != "not claimable" or not _waits_for_model(rt, request_id, model) \
                or time.monotonic() >= deadline:
            return outcome


def _waits_for_model(rt: Runtime, request_id: str, model: str) -> bool:
    """The request is pending while another request of its model holds a live lease."""
    if rt.queue.status(request_id)["state"] != "pending":
        return False
    now = datetime.now(timezone.utc).isoformat()
    return any(r["request"]["model"] == model and r["lease_expires_at"] > now
               for r in rt.queue.list(["leased"]) if r["request_id"] != request_id)


def run_worker(state_dir: str, limit: int = 2) -> None:
    """Serve ``process_request_task`` until interrupted (``unlearn worker``)."""
    from prefect.task_worker import serve

    from adapters.validation import gx_context
    from tasks.pipeline import ensure_gpu_limit

    rt = Runtime.from_env(state_dir)
    rt.require_initialised()
    ensure_gpu_limit()
    gx_context()  # pay the GX import once, not on the first request
    serve(process_request_task, limit=limit)
