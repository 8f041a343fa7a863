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
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from adapters.leases import LeaseKeeper
from adapters.queue import IllegalTransition, Lease, LeaseLost, queue_params
from adapters.receipts import record_receipt
from adapters.registry import DuplicateVersion, ParentMoved, Version
from adapters.runtime import Runtime, code_version
from tasks import pipeline as t
from unlearn_core.errors import InputError
from unlearn_core.gates import GateOutcome
from unlearn_core.receipts import Attempt, Lineage, Receipt, now_iso, render_markdown
from unlearn_core.selection import select_method

FAILED_EVENT = "unlearnops.request.failed"
MAX_REBASES = 5  # re-runs on a moved head before the request goes back to the queue


@flow(name="process-request", log_prints=False)
def process_request(request_id: str | None = None, state_dir: str | None = None,
                    worker_id: str | None = None) -> dict:
    """Process ``request_id`` (event path) or the oldest claimable request (queue path).

    Pending sample-level requests of the same model are claimed with it and forgotten in the same
    run (a batch, up to ``queue.batch_max``): one unlearning, one new version, a receipt each.
    """
    rt = Runtime.from_env(state_dir)
    t.ensure_gpu_limit()
    worker = worker_id or _default_worker_id()
    batch_models = [name for name in rt.models if rt.family(name).batches]
    leases = t.claim_requests(rt, request_id, worker, queue_params(rt.params).batch_max, batch_models)
    if not leases:
        return {"request_id": request_id, "status": "not claimable"}
    primary = leases[0]
    workdir = rt.work_dir(primary.request_id)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with LeaseKeeper(rt.queue, leases) as keeper:
            receipts = _handle(rt, leases, keeper, workdir)
    except LeaseLost as exc:  # fenced off: the requests' new owner finishes them (or resumes their version)
        get_run_logger().warning("request %s: %s; leaving it to its new owner", primary.request_id, exc)
        return {"request_id": primary.request_id, "status": "lease lost", "new_version": None}
    except BaseException as exc:
        for lease in leases:
            with suppress(LeaseLost, IllegalTransition):  # rejected members are already final
                rt.queue.fail(lease, f"{type(exc).__name__}: {str(exc)[:300]}")
        raise
    finally:
        t.purge(workdir)
    mine = receipts.get(primary.request_id) or next(iter(receipts.values()))
    outcome = {"request_id": primary.request_id, "status": mine.status, "new_version": mine.new_version}
    if len(leases) > 1:
        outcome["batch"] = {rid: r.status for rid, r in receipts.items()}
    return outcome


def _default_worker_id() -> str:
    """``host:pid:nonce``, plus ``@<name>`` of the Prefect work-pool worker that started this run (Prefect passes
    it to the flow-run process as ``PREFECT__WORKER_NAME``): several pool workers on one host are then told apart
    in the queue's history, where the flow-run process's pid alone says nothing once it has exited."""
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    pool_worker = os.environ.get("PREFECT__WORKER_NAME")
    return f"{worker}@{pool_worker}" if pool_worker else worker


def _receipt(lease: Lease, status: str, **fields) -> Receipt:
    request = lease.request
    return Receipt(request_id=request.request_id, status=status, kind=request.kind, model=request.model,
                   subject_id=request.subject_id, submitter=lease.submitter, approval=lease.approval, **fields)


def _reject(rt: Runtime, lease: Lease, reason: str, reports: list) -> Receipt:
    request = lease.request
    receipt = _receipt(lease, "rejected", method=request.method, validation=[r.to_dict() for r in reports],
                       reason=reason, timestamps={"submitted_at": request.submitted_at.isoformat(),
                                                  "rejected_at": now_iso()})
    paths = record_receipt(rt, receipt)  # signed, in the state dir and the registry
    rt.queue.reject(request.request_id, {"error": reason, "receipt": paths["json"]}, lease=lease)
    get_run_logger().info("request %s rejected: %s", request.request_id, reason)
    return receipt


def _stamps(request) -> dict:
    return {"submitted_at": request.submitted_at.isoformat(), "deadline": request.deadline.isoformat(),
            "claimed_at": now_iso()}


def _handle(rt: Runtime, leases: list[Lease], keeper: LeaseKeeper, workdir: Path) -> dict[str, Receipt]:
    """Receipts of every claimed request, by request id."""
    log = get_run_logger()
    model = leases[0].request.model
    if model not in rt.models:
        return {lease.request_id: _reject(rt, lease, f"model: unknown model {model!r}", []) for lease in leases}
    earlier = {lease.request_id: rt.registry.version_for_request(model, lease.request_id) for lease in leases}
    done = {}
    for lease in [lease for lease in leases if earlier[lease.request_id] is not None]:
        # a previous attempt committed it, then died: finish that version, make no other
        version = earlier[lease.request_id]
        log.info("request %s resumes %s %s", lease.request_id, model, version.semver)
        done.update(_publish(rt, [lease], keeper, version, {lease.request_id: _stamps(lease.request)}, {},
                             reason="resumed after a worker died"))
    todo = [lease for lease in leases if earlier[lease.request_id] is None]
    for _ in range(MAX_REBASES):
        if not todo:
            return done
        try:
            return {**done, **_unlearn_and_commit(rt, todo, keeper, workdir, {})}
        except ParentMoved as moved:  # another writer's version landed first: redo the work on top of it
            log.warning("requests %s: %s; re-running on %s", [x.request_id for x in todo], moved, moved.head)
        except DuplicateVersion as dup:  # only a stale worker can get here; publish what is there
            served = [x for x in todo if x.request_id in dup.version.lineage.get("request_ids", ())]
            done.update(_publish(rt, served, keeper, dup.version, {x.request_id: _stamps(x.request) for x in served},
                                 {}))
            todo = [x for x in todo if x not in served]
    raise RuntimeError(f"requests {[x.request_id for x in todo]}: the head of {model} moved {MAX_REBASES} times")


@contextmanager
def _timed(durations: dict, phase: str):
    """Add the block's wall time to ``durations[phase]`` (seconds)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        durations[phase] = round(durations.get(phase, 0.0) + time.perf_counter() - started, 4)


def _unlearn_and_commit(rt: Runtime, leases: list[Lease], keeper: LeaseKeeper, workdir: Path,
                        durations: dict) -> dict[str, Receipt]:
    log = get_run_logger()
    model_name = leases[0].request.model
    entry, family = rt.models[model_name], rt.family(model_name)
    stamps = {lease.request_id: _stamps(lease.request) for lease in leases}
    data_dir = rt.registry.data_dir()
    with _timed(durations, "load_s"):
        parent = rt.registry.head(model_name)
        parent_model = family.load(rt.registry.model_path(model_name, parent))
        dataset = family.load_data(data_dir)
    receipts, members, substitute = {}, [], None
    for lease in leases:  # a member with bad input is rejected alone; the rest of the batch goes on
        request = lease.request
        try:
            rows = family.forget_rows(request, data_dir, dataset)
            with _timed(durations, "validate_s"):
                reports, sub = t.validate(rt, family, request, rows, dataset, workdir)
        except InputError as exc:
            receipts[lease.request_id] = _reject(rt, lease, str(exc), [])
            keeper.release(lease)
            continue
        if not all(r.success for r in reports):
            failed = "; ".join(r.failed() for r in reports if not r.success)
            receipts[lease.request_id] = _reject(rt, lease, f"validation failed: {failed}", reports)
            keeper.release(lease)
            continue
        stamps[lease.request_id]["validated_at"] = now_iso()
        members.append((lease, sorted(r["sample_id"] for r in rows), [r.to_dict() for r in reports]))
        substitute = sub if sub is not None else substitute
    if not members:
        return receipts
    primary = members[0][0].request
    forget_ids = sorted({i for _, ids, _ in members for i in ids})
    method = primary.method if primary.method != "auto" else select_method(primary.kind, family.name,
                                                                             substitute is not None)
    forget_request = family.forget_request(primary, dataset, entry.arch, forget_ids, substitute)
    with _timed(durations, "compute_s"):  # what the requests cost themselves: evaluation and unlearning
        parent_report = family.parent_report(parent_model, dataset, forget_request)
    attempts: list[Attempt] = []
    chosen = None
    for name, config in t.method_attempts(rt, method, family):
        keeper.check()
        with _timed(durations, "compute_s"):
            model, result = t.run_unlearning(parent_model, name, config, forget_request,
                                             family.method_kwargs(name, dataset), rt.params.reproducibility.cpu_threads)
            report, gates = t.evaluate(family, name, parent_model, parent_report, model, dataset, forget_request)
            if len(members) > 1:  # every member's own forget set must be forgotten, not just the union
                gates = GateOutcome.of([*gates.checks, *(c for lease, ids, _ in members for c in family.member_checks(
                    name, model, dataset, report, ids, lease.request_id[:8]))])
        attempts.append(Attempt(name, result.params, result.time_s, result.peak_mem_bytes, report, gates,
                                _details(result.details)))
        log.info("requests %s: %s gates %s %s", [x.request_id for x, _, _ in members], name,
                 "pass" if gates.passed else "fail", gates.summary)
        if gates.passed:
            chosen = model
            break
    before = family.headline(parent_report)
    if chosen is None:
        for lease, ids, validation in members:
            st = {**stamps[lease.request_id], "unlearned_at": now_iso()}
            receipts[lease.request_id] = _fail(rt, lease, _receipt(
                lease, "failed", method=method, deleted_sample_ids=ids, parent_version=parent.semver,
                prod_version=parent.semver, attempts=attempts, metrics_before=before, validation=validation,
                timestamps=st, durations_s=durations, reason="no attempt passed the gates, exact retraining included"))
        return receipts

    final = attempts[-1]
    for lease, _, _ in members:
        stamps[lease.request_id]["unlearned_at"] = now_iso()
    lineage = Lineage(arch=entry.arch, family=family.name, method=final.method, params=final.params,
                      kind=primary.kind, subject_id=primary.subject_id, requested_method=primary.method,
                      parent_version=parent.semver, metrics_before=before,
                      metrics_after=family.headline(final.metrics), gates=final.gates,
                      attempts=[a.method for a in attempts], code_version=code_version(),
                      stamps=stamps[primary.request_id],
                      submitters={lease.request_id: lease.submitter for lease, _, _ in members})
    with _timed(durations, "commit_s"):
        version = t.commit_version(rt, family, model_name, chosen, dataset, primary, parent.semver,
                                   lineage.to_dict(), {lease.request_id: ids for lease, ids, _ in members},
                                   workdir, guard=keeper.check, substitute=substitute)
    published = _publish(rt, [lease for lease, _, _ in members], keeper, version, stamps, durations,
                         attempts=attempts, validation={lease.request_id: v for lease, _, v in members},
                         deleted={lease.request_id: ids for lease, ids, _ in members})
    return {**receipts, **published}


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


def _publish(rt: Runtime, leases: list[Lease], keeper: LeaseKeeper, version: Version, stamps: dict[str, dict],
             durations: dict, attempts: list[Attempt] | None = None, validation: dict | None = None,
             deleted: dict | None = None, reason: str | None = None) -> dict[str, Receipt]:
    """Push, promote, a receipt per request, ack (the tail shared by first runs, resumed ones and batches)."""
    model = leases[0].request.model
    with _timed(durations, "push_s"):
        t.push_version(rt, version)
    with _timed(durations, "promote_s"):
        prod = t.promote_version(rt, model, version, guard=keeper.check)
    promoted_at = now_iso()
    with _timed(durations, "erase_s"):
        t.erase_superseded_data(rt)
    lineage = version.lineage
    batch = lineage.get("request_ids") or [version.request_id]
    note = None if prod == version.semver else f"prod {prod} was derived from {version.semver} and holds this deletion"
    receipts = {}
    for lease in leases:
        request = lease.request
        st = {**stamps[request.request_id], "pushed_at": promoted_at, "promoted_at": promoted_at,
              "superseded_data_erased_at": now_iso()}
        ids = (deleted or {}).get(request.request_id)
        receipt = _receipt(
            lease, "done", method=lineage.get("method"),
            deleted_sample_ids=ids if ids is not None else _own_ids(rt, request, lineage),
            parent_version=lineage.get("parent_version"), new_version=version.semver, prod_version=prod,
            batch=[rid for rid in batch if rid != request.request_id], attempts=attempts or [],
            metrics_before=lineage.get("metrics_before"), metrics_after=lineage.get("metrics_after"),
            validation=(validation or {}).get(request.request_id, []), timestamps=st, durations_s=durations,
            storage={"registry": str(rt.registry.path), "git_sha": version.git_sha, "model_md5": version.model_md5,
                     "data_md5": version.data_md5, "remote": f"s3://{rt.s3.bucket}",
                     "gto_tag": f"{model}@{version.semver}"},
            reason="; ".join(x for x in (reason, note) if x) or None)
        paths = record_receipt(rt, receipt)  # signed, in the state dir and the registry
        _artifacts(receipt)
        rt.queue.ack(lease, {"status": "done", "version": version.semver, "prod": prod, "receipt": paths["json"]})
        receipts[request.request_id] = receipt
    return receipts


def _own_ids(rt: Runtime, request, lineage: dict) -> list[str]:
    """A resumed request's deleted ids: its own, read from the version's tombstones (a batch shares them)."""
    from unlearn_core.data import read_tombstones

    if len(lineage.get("request_ids") or [request.request_id]) == 1:
        return lineage.get("deleted_sample_ids", [])
    return sorted(t_["sample_id"] for t_ in read_tombstones(rt.registry.data_dir())
                  if t_["request_id"] == request.request_id)


def _artifacts(receipt: Receipt) -> None:
    """What a person wants to see in the Prefect UI: the receipt and the before/after table."""
    key = f"receipt-{receipt.request_id}".lower()
    create_markdown_artifact(render_markdown(receipt.to_dict()), key=key, description="Deletion receipt")
    before, after = receipt.metrics_before or {}, receipt.metrics_after or {}
    if after:
        rows = [{"metric": k, "before": before.get(k), "after": v} for k, v in after.items()]
        create_table_artifact(rows, key=f"metrics-{receipt.request_id}".lower(), description="Evaluation")
