"""``process-request``: one deletion request from the queue to a promoted, pushed model version.

claim -> resolve forget set -> validate (GX) -> select method -> unlearn (gpu slot)
-> gates (fail: retry stronger, then exact retrain) -> version (DVC, S3) -> promote
-> receipt -> purge -> ack.

A request redelivered after its worker died resumes from the registry: if a
version for its request id was already committed, it is pushed and promoted
rather than made again, so each request yields exactly one new version.
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.runtime import Runtime
from tasks import pipeline as t
from tasks.registry import Version
from unlearn_core.data import read_manifest
from unlearn_core.errors import InputError
from unlearn_core.forget import build_forget_request, resolve_forget_rows
from unlearn_core.queue import Lease
from unlearn_core.receipts import build_receipt, render_markdown, write_receipt
from unlearn_core.requests import DeletionRequest
from unlearn_core.selection import select_method as auto_method

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """The project's git commit (or 'unknown' outside a checkout): recorded in every lineage."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def select_method(request: DeletionRequest, family: str, has_substitute: bool) -> str:
    """The request's method, or the ``auto`` table's choice (unlearn_core.selection)."""
    return request.method if request.method != "auto" else auto_method(request.kind, family, has_substitute)


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
        receipt = _handle(rt, lease, workdir)
    except InputError as exc:
        receipt = _reject(rt, lease, {"error": str(exc)}, [])
    except BaseException as exc:
        rt.queue.fail(lease, f"{type(exc).__name__}: {str(exc)[:300]}")
        raise
    finally:
        t.purge(workdir)
    return {"request_id": lease.request_id, "status": receipt["status"], "new_version": receipt["new_version"]}


def _reject(rt: Runtime, lease: Lease, details: dict, reports: list) -> dict:
    request = lease.request
    receipt = build_receipt(request_id=request.request_id, status="rejected", kind=request.kind,
                            model=request.model, subject_id=request.subject_id, method=request.method,
                            validation=[r.to_dict() for r in reports], reason=details.get("error"),
                            timestamps={"submitted_at": request.submitted_at.isoformat(), "rejected_at": _now()})
    paths = write_receipt(rt.receipts_dir, receipt)
    rt.queue.reject(request.request_id, {**details, "receipt": paths["json"]}, lease=lease)
    get_run_logger().info("request %s rejected: %s", request.request_id, receipt["reason"])
    return receipt


def _handle(rt: Runtime, lease: Lease, workdir: Path) -> dict:
    log = get_run_logger()
    request = lease.request
    stamps = {"submitted_at": request.submitted_at.isoformat(), "deadline": request.deadline.isoformat(),
              "claimed_at": _now()}
    if request.model not in rt.models:
        raise InputError("model", f"unknown model {request.model!r}")
    entry = rt.models[request.model]
    family = rt.family(request.model)
    earlier = [v for v in rt.registry.versions(request.model) if v.request_id == request.request_id]
    if earlier:  # a previous attempt committed it, then died: finish that version, make no other
        log.info("request %s resumes %s %s", request.request_id, request.model, earlier[-1].semver)
        return _publish(rt, lease, earlier[-1], workdir, stamps, resumed=True)

    parent_model, parent, dataset = t.load_parent(rt, request.model, family)
    forget_rows = resolve_forget_rows(request, read_manifest(rt.registry.data_dir()))
    forget_ids = sorted(r["sample_id"] for r in forget_rows)
    reports, substitute = t.validate(rt, request, forget_rows, workdir, dataset.image_shape,
                                     dataset.num_classes, set(dataset.train.ids))
    if not all(r.success for r in reports):
        failed = "; ".join(r.failed() for r in reports if not r.success)
        return _reject(rt, lease, {"error": f"validation failed: {failed}"}, reports)
    stamps["validated_at"] = _now()

    method = select_method(request, entry.family, substitute is not None)
    forget_request = build_forget_request(request, dataset, entry.arch, forget_ids, substitute)
    parent_report = family.parent_report(parent_model, dataset, forget_request)
    attempts, chosen = [], None
    for name, config in t.method_attempts(rt, method, family):
        if not rt.queue.heartbeat(lease):
            raise RuntimeError("lease lost while processing; another worker owns the request now")
        model, result = t.run_unlearning(parent_model, name, config, forget_request,
                                         family.method_kwargs(name, dataset))
        report, gates = t.evaluate(family, name, parent_model, parent_report, model, dataset, forget_request)
        attempts.append({"method": name, "params": result.params, "time_s": result.time_s,
                         "peak_mem_bytes": result.peak_mem_bytes, "metrics": report, "gates": gates,
                         "details": _details(result.details)})
        log.info("request %s: %s gates %s %s", request.request_id, name,
                 "pass" if gates["passed"] else "fail", gates["summary"])
        if gates["passed"]:
            chosen = (model, attempts[-1])
            break
    stamps["unlearned_at"] = _now()
    if chosen is None:
        receipt = _receipt(request, "failed", method, forget_ids, parent.semver, None,
                           family.headline(parent_report), None,
                           attempts, reports, stamps, reason="no attempt passed the gates, exact retraining included")
        write_receipt(rt.receipts_dir, receipt)
        rt.queue.fail(lease, "gates failed after escalation to exact retraining")
        return receipt

    model, attempt = chosen
    lineage = {"arch": entry.arch, "family": family.name, "method": attempt["method"],
               "params": attempt["params"], "kind": request.kind, "subject_id": request.subject_id,
               "metrics_before": family.headline(parent_report), "metrics_after": family.headline(attempt["metrics"]),
               "gates": attempt["gates"], "attempts": [a["method"] for a in attempts],
               "code_version": code_version(), "parent_version": parent.semver,
               "stamps": stamps, "requested_method": request.method}
    version = t.commit_version(rt, family, request.model, model, dataset, request, lineage, forget_ids, workdir)
    return _publish(rt, lease, version, workdir, stamps, attempts=attempts, reports=reports)


def _details(details: dict) -> dict:
    """Method details worth a receipt: small JSON values (no neuron lists, no tensors)."""
    return {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool)) or
            (isinstance(v, (list, dict)) and len(v) <= 20)}


def _publish(rt: Runtime, lease: Lease, version: Version, workdir: Path, stamps: dict, resumed: bool = False,
             attempts: list | None = None, reports: list | None = None) -> dict:
    """Push, promote, receipt, ack (the tail shared by first runs and resumed ones)."""
    request = lease.request
    t.push_version(rt)
    stamps["pushed_at"] = _now()
    if version.lineage.get("gates", {}).get("passed", False):
        t.promote_version(rt, request.model, version)
        stamps["promoted_at"] = _now()
        t.erase_superseded_data(rt)
        stamps["superseded_data_erased_at"] = _now()
    lineage = version.lineage
    receipt = _receipt(request, "done", lineage.get("method"), version.lineage.get("deleted_sample_ids", []),
                       lineage.get("parent_version"), version.semver, lineage.get("metrics_before"),
                       lineage.get("metrics_after"), attempts or [], reports or [], stamps,
                       storage={"registry": str(rt.registry.path), "git_sha": version.git_sha,
                                "model_md5": version.model_md5, "data_md5": version.data_md5,
                                "remote": f"s3://{rt.s3.bucket}", "gto_tag": f"{request.model}@{version.semver}"},
                       reason="resumed after a worker died" if resumed else None)
    paths = write_receipt(rt.receipts_dir, receipt)
    _artifacts(receipt)
    rt.queue.ack(lease, {"status": "done", "version": version.semver, "receipt": paths["json"]})
    return receipt


def _receipt(request: DeletionRequest, status: str, method, deleted, parent_version, new_version, before, after,
             attempts, reports, stamps, storage=None, reason=None) -> dict:
    return build_receipt(request_id=request.request_id, status=status, kind=request.kind, model=request.model,
                         subject_id=request.subject_id, method=method, deleted_sample_ids=list(deleted),
                         parent_version=parent_version, new_version=new_version,
                         metrics_before=before or None, metrics_after=after,
                         attempts=attempts, gates=attempts[-1]["gates"] if attempts else None,
                         validation=[r.to_dict() for r in reports], timestamps=stamps, storage=storage,
                         reason=reason)


def _artifacts(receipt: dict) -> None:
    """What a person wants to see in the Prefect UI: the receipt and the before/after table."""
    key = f"receipt-{receipt['request_id']}"
    create_markdown_artifact(render_markdown(receipt), key=key, description="Deletion receipt")
    before, after = receipt.get("metrics_before") or {}, receipt.get("metrics_after") or {}
    if after:
        rows = [{"metric": k, "before": before.get(k), "after": v} for k, v in after.items()]
        create_table_artifact(rows, key=f"metrics-{receipt['request_id']}", description="Evaluation")
