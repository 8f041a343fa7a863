"""Held requests: ``await-approval`` asks a human through Prefect, and the decision is applied.

A request held at submit (a class deletion, or a submitter over quota) sits in the queue as
``awaiting_approval``. The ``unlearnops.request.held`` event starts ``await-approval``, which
pauses with Prefect's human-in-the-loop input form (``pause_flow_run(wait_for_input=...)``):
the Prefect UI shows the request, its forget-set size and its predicted cost, and resuming it
with a decision approves or rejects. ``unlearn approve``/``unlearn reject`` make the same
decision from a terminal and then resume the paused run, so both ways end in one place.

A run of the deployment *suspends* (its process exits; resuming reschedules it, so a decision in
the UI is applied even if the process that asked died); a run started by hand *pauses* in its
process. The queue is the source of truth, not the run: ``decide`` moves the request out of
``awaiting_approval`` exactly once (a second decision finds it decided and changes nothing), a
decision works with no run waiting at all (no server, the waiting process died), and
``watch-queue`` escalates a held request that is overdue even if no run waits for it.
The approval is not part of ``process-request`` because a waiting request would then hold its
model's writer lease, and a worker slot, for as long as the humans take.
"""
from __future__ import annotations

import math
import os
import statistics
from datetime import datetime, timedelta, timezone

from prefect import flow, get_run_logger, pause_flow_run, suspend_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from pydantic import Field

from adapters.queue import IllegalTransition
from adapters.receipts import record_receipt
from adapters.runtime import Runtime
from adapters.submitters import SubmitterRegistry
from flows.submit import notify_submitted
from unlearn_core.authorization import authorization_params
from unlearn_core.errors import InputError
from unlearn_core.receipts import Receipt, now_iso, read_receipts
from unlearn_core.requests import DeletionRequest
from unlearn_core.selection import select_method

PAUSE_POLL_S = 5  # how often a paused run asks the server whether it was resumed


class ApprovalDecision(RunInput):
    """The form a human fills in (Prefect UI) or `unlearn approve`/`reject` fills in for them."""

    approver: str = Field(description="your registered governance submitter name (not the requester's)")
    approve: bool = Field(description="true: run the deletion; false: reject it")
    reason: str = Field("", description="why (required to reject)")


def approval_summary(rt: Runtime, view: dict) -> str:
    """What the approver sees: the request, its forget-set size and the predicted cost."""
    request = DeletionRequest.model_validate(view["request"])
    hold = (view.get("details") or {}).get("hold") or {}
    what = {"class": f"class {request.forget.class_}", "subject": f"subject {request.forget.subject}",
            "samples": f"{len(request.forget.sample_ids or [])} samples"}[request.kind]
    method = request.method if request.method != "auto" else select_method(
        request.kind, rt.family(request.model).name, request.substitute is not None)
    past = [sum(a["time_s"] for a in r.get("attempts") or []) for r in read_receipts(rt.receipts_dir)
            if r["model"] == request.model and r.get("method") == method and r["status"] == "done"]
    cost = (f"~{statistics.median(past):.1f} s of unlearning (median of {len(past)} past `{method}` runs)"
            if past else f"unknown (no past `{method}` run on this model)")
    return "\n".join([
        f"### Deletion request {request.request_id} awaits approval", "",
        f"- held because: {hold.get('reason')}",
        f"- submitter: `{view.get('submitter')}`; data subject: `{request.subject_id}`",
        f"- model: `{request.model}`; forget: {what}",
        f"- forget set: {view.get('forget_rows')} training rows",
        f"- method: `{method}`; predicted cost: {cost}",
        f"- deadline: {request.deadline.isoformat()}",
        "", "Approve or reject with your governance submitter name (the requester cannot approve its own request)."])


def decide(rt: Runtime, request_id: str, approver: str, approve: bool, reason: str = "") -> dict:
    """Apply a human's decision to a held request once; later decisions find it decided and change nothing."""
    view = rt.queue.status(request_id)
    if view["state"] != "awaiting_approval":
        return {"request_id": request_id, "status": f"already decided ({view['state']})"}
    who = SubmitterRegistry(rt.state_dir).get(approver, field="approver")
    if who.role != "governance":
        raise InputError("approver", f"{approver!r} has role {who.role!r}; only governance submitters decide")
    if approver == view.get("submitter"):
        raise InputError("approver", f"{approver!r} submitted this request; another person must decide it")
    if not approve and not reason.strip():
        raise InputError("reason", "required when rejecting (it goes into the receipt)")
    try:
        if approve:
            rt.queue.approve(request_id, approver, reason)
        else:
            rt.queue.decline(request_id, approver, reason, receipt=str(rt.receipts_dir / f"{request_id}.json"))
    except IllegalTransition:  # someone else decided between our read and our write
        return {"request_id": request_id, "status": f"already decided ({rt.queue.status(request_id)['state']})"}
    if approve:
        notify_submitted(rt, request_id)  # warm workers and the event trigger; watch-queue otherwise
        return {"request_id": request_id, "status": "approved"}
    decided = rt.queue.status(request_id)
    request = DeletionRequest.model_validate(view["request"])
    record_receipt(rt, Receipt(
        request_id=request_id, status="rejected", kind=request.kind, model=request.model,
        subject_id=request.subject_id, submitter=view.get("submitter"), approval=decided["details"].get("hold"),
        method=request.method, reason=f"rejected by {approver}: {reason}",
        timestamps={"submitted_at": request.submitted_at.isoformat(), "rejected_at": now_iso()}))
    return {"request_id": request_id, "status": "rejected"}


def _wait_seconds(rt: Runtime, view: dict) -> float:
    deadline = DeletionRequest.model_validate(view["request"]).deadline
    left = (deadline - datetime.now(timezone.utc)).total_seconds()
    return min(left, authorization_params(rt.params).approval_wait_hours * 3600)


@flow(name="await-approval", log_prints=False)
def await_approval(request_id: str, state_dir: str | None = None) -> dict:
    """Pause until a human decides about a held request (or escalate when its deadline passes)."""
    rt = Runtime.from_env(state_dir)
    log = get_run_logger()
    view = rt.queue.status(request_id)
    if view["state"] != "awaiting_approval":
        return {"request_id": request_id, "status": f"not held ({view['state']})"}
    run = FlowRunContext.get().flow_run
    rt.queue.set_approval_run(request_id, str(run.id))
    summary = approval_summary(rt, view)
    create_markdown_artifact(summary, key=f"approval-{request_id}".lower(), description="Deletion awaiting approval")
    wait_s = _wait_seconds(rt, view)
    if wait_s <= 0:
        escalate(rt, request_id, "the request's deadline passed before anyone decided")
        return {"request_id": request_id, "status": "escalated"}
    log.info("request %s awaits approval (up to %.0f s): %s", request_id, wait_s,
             (view.get("details") or {}).get("hold", {}).get("reason"))
    form = ApprovalDecision.with_initial_data(description=summary, approve=False)
    timeout, key = max(1, math.ceil(wait_s)), f"approval-{request_id}"
    if run.deployment_id is not None:
        # a deployment's run suspends: its process exits, and a resume (CLI or UI) reschedules it, so a
        # decision is applied even if the process that asked is long gone; this code then runs again and
        # suspend_flow_run returns the decision
        decision = suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
    else:  # a run started by hand has nothing to reschedule it: it waits in its process
        try:
            decision = pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=PAUSE_POLL_S, key=key)
        except FlowPauseTimeout:
            escalate(rt, request_id, f"no decision within {wait_s:.0f} s")
            return {"request_id": request_id, "status": "escalated"}
    try:
        outcome = decide(rt, request_id, decision.approver, decision.approve, decision.reason)
    except InputError as exc:  # a bad form (unknown approver, self-approval): the request stays held
        log.error("request %s: decision refused: %s; it stays held", request_id, exc)
        return {"request_id": request_id, "status": "held", "refused": str(exc)}
    log.info("request %s: %s", request_id, outcome["status"])
    return outcome


def escalate(rt: Runtime, request_id: str, why: str) -> bool:
    """Mark an overdue approval once, with an event an automation can page someone on."""
    from prefect.events import emit_event

    if not rt.queue.escalate(request_id, why):
        return False
    emit_event("unlearnops.request.approval_overdue",
               resource={"prefect.resource.id": f"unlearnops.request.{request_id}",
                         "unlearnops.request_id": request_id}, payload={"why": why})
    return True


def escalate_overdue(rt: Runtime) -> list[str]:
    """Held requests past their deadline or held longer than ``authorization.approval_wait_hours``, escalated
    now (watch-queue's share of the approvals: a suspended run that expires runs no code of its own)."""
    now = datetime.now(timezone.utc)
    wait = timedelta(hours=authorization_params(rt.params).approval_wait_hours)
    overdue = []
    for view in rt.queue.list(["awaiting_approval"]):
        held_at = datetime.fromisoformat(view["details"]["hold"]["held_at"])
        if DeletionRequest.model_validate(view["request"]).deadline <= now:
            why = "the request's deadline passed before anyone decided"
        elif now - held_at >= wait:
            why = f"no decision within approval_wait_hours ({wait.total_seconds() / 3600:g} h)"
        else:
            continue
        if escalate(rt, view["request_id"], why):
            overdue.append(view["request_id"])
    return overdue


def resume_waiting_run(rt: Runtime, request_id: str, approver: str, approve: bool, reason: str) -> bool:
    """Close the Prefect prompt of a request decided elsewhere; False when no run is paused for it."""
    run_id = ((rt.queue.status(request_id).get("details") or {}).get("hold") or {}).get("flow_run_id")
    if not run_id or not os.environ.get("PREFECT_API_URL"):
        return False
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    if state is None or not state.is_paused():
        return False
    resume_flow_run(run_id, run_input={"approver": approver, "approve": approve, "reason": reason})
    return True


if __name__ == "__main__":  # a waiter started by hand (or by a test) for one held request
    import argparse

    parser = argparse.ArgumentParser(description="wait for a human decision about one held request")
    parser.add_argument("request_id")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    print(await_approval(args.request_id, args.state_dir))
