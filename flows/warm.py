"""The task that warm workers serve, in a module light enough for a notifier to import quickly.

``process_request_task.delay(...)`` only needs the task object; its body imports the pipeline
(torch, GX, the registry) when a worker runs it, so ``unlearn submit``'s detached notifier
imports Prefect and nothing heavier.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import task
from prefect.cache_policies import NO_CACHE

WAIT_POLL_S = 0.5
WAIT_MAX_S = 3600.0  # a model's queue this long means something is wrong; watch-queue takes over then


@task(name="process-request-warm", cache_policy=NO_CACHE, persist_result=False)
def process_request_task(request_id: str, state_dir: str) -> dict:
    """Run ``process-request`` for one request, waiting while another worker holds its model.

    A request whose model is busy stays pending; this worker waits for the model's
    writer to finish instead of leaving the request to the next ``watch-queue``
    round. A writer that died stops heartbeating, its lease expires and the wait ends.
    """
    from adapters.runtime import Runtime
    from flows.process_request import process_request

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


def _waits_for_model(rt, request_id: str, model: str) -> bool:
    """The request is pending while another request of its model holds a live lease."""
    if rt.queue.status(request_id)["state"] != "pending":
        return False
    now = datetime.now(timezone.utc).isoformat()
    return any(r["request"]["model"] == model and r["lease_expires_at"] > now
               for r in rt.queue.list(["leased"]) if r["request_id"] != request_id)
