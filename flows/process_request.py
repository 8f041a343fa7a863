"""``process-request``: one deletion request from the queue to a promoted, pushed model version.

claim -> resolve forget set -> validate (GX) -> select method -> unlearn (gpu slot)
-> gates (fail: retry stronger, then exact retrain; all fail: terminal ``failed``)
-> commit (compare-and-swap on the model's head) -> push -> promote -> receipt -> purge -> ack.

Correctness under concurrency and crashes:

- one writer per model: the queue leases a model's requests one at a time, and the
  registry's compare-and-swap refuses a version whose parent is no longer the model's
  head (the request is then re-run on the new head), so no deletion is ever undone;
- fencing: the lease is heartbeated in the background and checked right before the
  commit and right before the promotion; a worker that lost it stops there;
- a request redelivered after its worker died resumes from the registry: a version
  already committed for its id is pushed and promoted, never made twice (the
  registry refuses a second version for one request id).
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from adapters.leases import LeaseKeeper
from adapters.receipts import record_receipt
from adapters.registry import DuplicateVersion, ParentMoved, Version
from adapters.runtime import Runtime, code_version
from tasks import pipeline as t
from unlearn_core.data import load_dataset, read_manifest
from unlearn_core.errors import InputError
from unlearn_core.forget import build_forget_request, resolve_forget_rows
from unlearn_core.queue import Lease, LeaseLost
from unlearn_core.receipts import Attempt, Lineage, Receipt, now_iso, render_markdown
from unlearn_core.selection import select_method

FAILED_EVENT = "unlearnops.request.failed"
MAX_REBASES = 5  # re-runs on a moved head before the request goes back to the queue


@flow(name="process-request", log_prints=False)
def process_request(request_id: str | None = None, state_dir: str | None = None,
                    worker_id: str | None = None) -> dict:
    """Process ``request_id`` (event path) or the oldest claimable request (queue path)."""
    rt = Runtime.from_env(state_dir)
    t.ensure_gpu_limit()
    worker = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    lease = t.claim_request(rt, request_id, worker)
    if lease is None:
        return {"request_id": request_id, "status": "not claimable"}
    workdir = rt.work_dir(lease.request_id)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with LeaseKeeper(rt.queue, lease) as keeper:
            try:
                receipt = _handle(rt, lease, keeper, workdir)
            except InputError as exc:
                receipt = _reject(rt, lease, str(exc), [])
    except LeaseLost as exc:  # fenced off: the request's new owner finishes it (or resumes its version)
        get_run_logger().warning("request %s: %s; leaving it to its new owner", lease.request_id, exc)
        return {"request_id": lease.request_id, "status": "lease lost", "new_version": None}
    except BaseException as exc:
        rt.queue.fail(lease, f"{type(exc).__name__}: {str(exc)[:300]}")
        raise
    finally:
        t.purge(workdir)
    return {"request_id": lease.request_id, "status": receipt.status, "new_version": receipt.new_version}


def _receipt(request, status: str, **fields) -> Receipt:
    return Receipt(request_id=request.request_id, status=status, kind=request.kind, model=request.model,
                   subject_id=request.subject_id, **fields)


def _reject(rt: Runtime, lease: Lease, reason: str, reports: list) -> Receipt:
    request = lease.request
    receipt = _receipt(request, "rejected", method=request.method, validation=[r.to_dict() for r in reports],
                       reason=reason, timestamps={"submitted_at": request.submitted_at.isoformat(),
                                                  "rejected_at": now_iso()})
    paths = record_receipt(rt, receipt)  # signed, in the state dir and the registry
    rt.queue.reject(request.request_id, {"error": reason, "receipt": paths["json"]}, lease=lease)
    get_run_logger().info("request %s rejected: %s", request.request_id, reason)
    return receipt


def _handle(rt: Runtime, lease: Lease, keeper: LeaseKeeper, workdir: Path) -> Receipt:
    log = get_run_logger()
    request = lease.request
    stamps = {"submitted_at": request.submitted_at.isoformat(), "deadline": request.deadline.isoformat(),
              "claimed_at": now_iso()}
    if request.model not in rt.models:
        raise InputError("model", f"unknown model {request.model!r}")
    earlier = rt.registry.version_for_request(request.model, request.request_id)
    if earlier is not None:  # a previous attempt committed it, then died: finish that version, make no other
        log.info("request %s resumes %s %s", request.request_id, request.model, earlier.semver)
        return _publish(rt, lease, keeper, earlier, stamps, {}, reason="resumed after a worker died")
    for _ in range(MAX_REBASES):
        try:
            return _unlearn_and_commit(rt, lease, keeper, workdir, dict(stamps), {})
        except ParentMoved as moved:  # another writer's version landed first: redo the work on top of it
            log.warning("request %s: %s; re-running on %s", request.request_id, moved, moved.head)
        except DuplicateVersion as dup:
            return _publish(rt, lease, keeper, dup.version, stamps, {})
    raise RuntimeError(f"request {request.request_id}: the head of {request.model} moved {MAX_REBASES} times")


@contextmanager
def _timed(durations: dict, phase: str):
    """Add the block's wall time to ``durations[phase]`` (seconds)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        durations[phase] = round(durations.get(phase, 0.0) + time.perf_counter() - started, 4)


def _unlearn_and_commit(rt: Runtime, lease: Lease, keeper: LeaseKeeper, workdir: Path, stamps: dict,
                        durations: dict) -> Receipt:
    log = get_run_logger()
    request = lease.request
    entry, family = rt.models[request.model], rt.family(request.model)
    with _timed(durations, "load_s"):
        parent = rt.registry.head(request.model)
        parent_model = family.load(rt.registry.model_path(request.model, parent))
        dataset = load_dataset(rt.registry.data_dir())
        forget_rows = resolve_forget_rows(request, read_manifest(rt.registry.data_dir()))
    forget_ids = sorted(r["sample_id"] for r in forget_rows)
    with _timed(durations, "validate_s"):
        reports, substitute = t.validate(rt, request, forget_rows, workdir, dataset.image_shape,
                                         dataset.num_classes, set(dataset.train.ids))
    validation = [r.to_dict() for r in reports]
    if not all(r.success for r in reports):
        failed = "; ".join(r.failed() for r in reports if not r.success)
        return _reject(rt, lease, f"validation failed: {failed}", reports)
    stamps["validated_at"] = now_iso()

    method = request.method if request.method != "auto" else select_method(request.kind, family.name,
                                                                             substitute is not None)
    forget_request = build_forget_request(request, dataset, entry.arch, forget_ids, substitute)
    with _timed(durations, "compute_s"):  # what the request costs itself: evaluation and unlearning
        parent_report = family.parent_report(parent_model, dataset, forget_request)
    attempts: list[Attempt] = []
    chosen = None
    for name, config in t.method_attempts(rt, method, family):
        keeper.check()
        with _timed(durations, "compute_s"):
            model, result = t.run_unlearning(parent_model, name, config, forget_request,
                                             family.method_kwargs(name, dataset))
            report, gates = t.evaluate(family, name, parent_model, parent_report, model, dataset, forget_request)
        attempts.append(Attempt(name, result.params, result.time_s, result.peak_mem_bytes, report, gates,
                                _details(result.details)))
        log.info("request %s: %s gates %s %s", request.request_id, name, "pass" if gates.passed else "fail",
                 gates.summary)
        if gates.passed:
            chosen = model
            break
    stamps["unlearned_at"] = now_iso()
    before = family.headline(parent_report)
    if chosen is None:
        return _fail(rt, lease, _receipt(
            request, "failed", method=method, deleted_sample_ids=forget_ids, parent_version=parent.semver,
            prod_version=parent.semver, attempts=attempts, metrics_before=before, validation=validation,
            timestamps=stamps, durations_s=durations, reason="no attempt passed the gates, exact retraining included"))

    final = attempts[-1]
    lineage = Lineage(arch=entry.arch, family=family.name, method=final.method, params=final.params,
                      kind=request.kind, subject_id=request.subject_id, requested_method=request.method,
                      parent_version=parent.semver, metrics_before=before,
                      metrics_after=family.headline(final.metrics), gates=final.gates,
                      attempts=[a.method for a in attempts], code_version=code_version(), stamps=stamps)
    with _timed(durations, "commit_s"):
        version = t.commit_version(rt, family, request.model, chosen, dataset, request, parent.semver,
                                   lineage.to_dict(), forget_ids, workdir, guard=keeper.check)
    return _publish(rt, lease, keeper, version, stamps, durations, attempts=attempts, validation=validation)


def _details(details: dict) -> dict:
    """Method details worth a receipt: small JSON values (no neuron lists, no tensors)."""
    return {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool)) or
            (isinstance(v, (list, dict)) and len(v) <= 20)}


def _fail(rt: Runtime, lease: Lease, receipt: Receipt) -> Receipt:
    """Terminal ``failed``: receipt, artifact, queue state and an event an automation can alert on."""
    from prefect.events import emit_event

    paths = record_receipt(rt, receipt)  # signed, in the state dir and the registry
    _artifacts(receipt)
    rt.queue.mark_failed(lease, {"reason": receipt.reason, "receipt": paths["json"]})
    emit_event(FAILED_EVENT, resource={"prefect.resource.id": f"unlearnops.request.{receipt.request_id}",
                                       "unlearnops.request_id": receipt.request_id,
                                       "unlearnops.model": receipt.model},
               payload={"reason": receipt.reason, "attempts": [a.method for a in receipt.attempts]})
    get_run_logger().error("request %s failed: %s", receipt.request_id, receipt.reason)
    return receipt


def _publish(rt: Runtime, lease: Lease, keeper: LeaseKeeper, version: Version, stamps: dict, durations: dict,
             attempts: list[Attempt] | None = None, validation: list | None = None,
             reason: str | None = None) -> Receipt:
    """Push, promote, receipt, ack (the tail shared by first runs and resumed ones)."""
    request = lease.request
    with _timed(durations, "push_s"):
        t.push_version(rt, version)
    stamps["pushed_at"] = now_iso()
    with _timed(durations, "promote_s"):
        prod = t.promote_version(rt, request.model, version, guard=keeper.check)
    stamps["promoted_at"] = now_iso()
    with _timed(durations, "erase_s"):
        t.erase_superseded_data(rt)
    stamps["superseded_data_erased_at"] = now_iso()
    lineage = version.lineage
    receipt = _receipt(
        request, "done", method=lineage.get("method"), deleted_sample_ids=lineage.get("deleted_sample_ids", []),
        parent_version=lineage.get("parent_version"), new_version=version.semver, prod_version=prod,
        attempts=attempts or [], metrics_before=lineage.get("metrics_before"),
        metrics_after=lineage.get("metrics_after"), validation=validation or [], timestamps=stamps,
        durations_s=durations, storage={"registry": str(rt.registry.path), "git_sha": version.git_sha, "model_md5": version.model_md5,
                 "data_md5": version.data_md5, "remote": f"s3://{rt.s3.bucket}",
                 "gto_tag": f"{request.model}@{version.semver}"},
        reason=reason if prod == version.semver else f"{reason + '; ' if reason else ''}prod {prod} was "
               f"derived from {version.semver} and holds this deletion")
    paths = record_receipt(rt, receipt)  # signed, in the state dir and the registry
    _artifacts(receipt)
    rt.queue.ack(lease, {"status": "done", "version": version.semver, "prod": prod, "receipt": paths["json"]})
    return receipt


def _artifacts(receipt: Receipt) -> None:
    """What a person wants to see in the Prefect UI: the receipt and the before/after table."""
    key = f"receipt-{receipt.request_id}".lower()
    create_markdown_artifact(render_markdown(receipt.to_dict()), key=key, description="Deletion receipt")
    before, after = receipt.metrics_before or {}, receipt.metrics_after or {}
    if after:
        rows = [{"metric": k, "before": before.get(k), "after": v} for k, v in after.items()]
        create_table_artifact(rows, key=f"metrics-{receipt.request_id}".lower(), description="Evaluation")
