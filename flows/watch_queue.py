"""``watch-queue``: the scheduled safety net. Drains pending and lease-expired requests.

The event path (``unlearn submit`` -> Prefect event -> ``process-request``)
handles requests at once; this flow picks up whatever it missed: requests
submitted while no server ran, and requests whose worker died (lease expired). It also
escalates held requests whose deadline passed without a decision (flows/approval.py).
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from adapters.runtime import Runtime
from flows.approval import escalate_overdue
from flows.process_request import process_request


@flow(name="watch-queue", log_prints=False)
def watch_queue(state_dir: str | None = None, max_requests: int = 20) -> list[dict]:
    rt = Runtime.from_env(state_dir)
    overdue = escalate_overdue(rt)  # held requests nobody decided before their deadline
    if overdue:
        get_run_logger().warning("approval overdue, escalated: %s", ", ".join(overdue))
    outcomes = []
    for _ in range(max_requests):
        outcome = process_request(request_id=None, state_dir=str(rt.state_dir))
        if outcome["status"] == "not claimable":
            break
        outcomes.append(outcome)
    get_run_logger().info("watch-queue processed %d request(s); queue now %s", len(outcomes), rt.queue.counts())
    return outcomes
