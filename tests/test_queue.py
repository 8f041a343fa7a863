"""The request queue on both backends (embedded SQLite, production PostgreSQL): idempotency, leases,
one writer per model, batches, retries, dead letter, redelivery, concurrency across processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from adapters.leases import LeaseKeeper
from adapters.queue import (STATES, IllegalTransition, Lease, LeaseLost, QueueParams, RequestQueue, open_queue,
                            queue_params)
from adapters.queue.base import TRANSITIONS
from adapters.queue.postgres import PostgresRequestQueue
from adapters.queue.sqlite import SqliteRequestQueue
from unlearn_core.config import parse_params
from unlearn_core.errors import InputError
from unlearn_core.requests import DeletionRequest


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(cls: int = 3, subject: str = "subject-0001", model: str = "mnist-cnn", **extra) -> DeletionRequest:
    return DeletionRequest(subject_id=subject, kind="class", model=model, forget={"class": cls}, **extra)


@pytest.fixture
def clock():
    return Clock()


PARAMS = QueueParams(lease_seconds=60, max_attempts=2)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path) -> str:
    """Where a queue lives: a SQLite file, or a fresh PostgreSQL database (its URL)."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "queue.db")


@pytest.fixture
def queue(target, clock):
    return open_queue(target, PARAMS, clock=clock)


def test_open_queue_picks_the_backend_from_the_url(tmp_path, postgres_url):
    assert isinstance(open_queue(tmp_path / "a.db", PARAMS), SqliteRequestQueue)
    by_url = open_queue(f"sqlite:///{tmp_path}/b.db", PARAMS)
    assert isinstance(by_url, SqliteRequestQueue) and by_url.path == tmp_path / "b.db"
    postgres = open_queue(postgres_url, PARAMS)
    assert isinstance(postgres, PostgresRequestQueue) and isinstance(postgres, RequestQueue)
    assert postgres_url.split("@")[0] not in repr(postgres)  # credentials never printed
    assert (postgres.lease_seconds, postgres.max_attempts) == (60, 2)
    with pytest.raises(InputError) as info:
        open_queue("mysql://host/db", PARAMS)
    assert info.value.field == "queue_url"


def test_wal_mode_and_params(tmp_path):
    queue = open_queue(tmp_path / "queue.db", QueueParams())
    con = sqlite3.connect(queue.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    params = queue_params(parse_params({"queue": {"lease_seconds": 5, "max_attempts": 4}}))
    assert (params.lease_seconds, params.max_attempts) == (5, 4)
    with pytest.raises(InputError) as info:
        queue_params(parse_params({"queue": {"max_attempts": 0}}))
    assert info.value.field == "params.yaml: queue.max_attempts"


def test_idempotent_enqueue(queue):
    first = request()
    rid, created = queue.enqueue(first)
    assert (rid, created) == (first.request_id, True)
    again = request()  # new request_id and submitted_at, same content -> same derived key
    assert again.request_id != rid
    assert queue.enqueue(again) == (rid, False)
    assert queue.counts()["pending"] == 1
    keyed = request(idempotency_key="client-7")
    assert queue.enqueue(keyed)[1] is True
    with pytest.raises(InputError) as info:
        queue.enqueue(request(cls=4, idempotency_key="client-7"))  # same key, different deletion
    assert info.value.field == "idempotency_key"
    assert queue.counts()["pending"] == 2


def test_claim_ack(queue, clock):
    a, b = request(1), request(2, model="mnist-cnn-b")  # two models: both may be leased at once
    queue.enqueue(a)
    clock.now += 1
    queue.enqueue(b)
    lease = queue.claim("w1")
    assert lease.request == a and lease.attempt == 1 and lease.worker_id == "w1"
    assert queue.status(a.request_id)["state"] == "leased"
    clock.now += 30
    assert queue.heartbeat(lease)
    clock.now += 45  # 75 s after the claim, but only 45 s after the heartbeat: still ours
    assert queue.claim("w2").request == b  # a is not handed out again
    assert queue.claim("w3") is None
    queue.ack(lease, {"model_version": "v2", "forgotten": 400})
    status = queue.status(a.request_id)
    assert status["state"] == "done" and status["attempts"] == 1
    assert status["result"] == {"model_version": "v2", "forgotten": 400}
    assert status["request"]["forget"] == {"class": 1}
    assert [h["to"] for h in status["history"]] == ["pending", "leased", "done"]
    assert queue.counts() == {"awaiting_approval": 0, "pending": 0, "leased": 1, "done": 1, "failed": 0, "dead_letter": 0, "rejected": 0}
    assert [s["request_id"] for s in queue.list(["leased"])] == [b.request_id]
    with pytest.raises(InputError):
        queue.status("no-such-id")
    with pytest.raises(InputError):
        queue.list(["finished"])


def test_fail_retry_then_dead_letter(queue):
    req = request()
    queue.enqueue(req)
    first = queue.claim("w1")
    assert queue.fail(first, "S3 unreachable") == "pending"
    second = queue.claim("w1")
    assert second.attempt == 2 and second.fence > first.fence
    with pytest.raises(LeaseLost):
        queue.ack(first, {})  # the first attempt's lease is over
    assert queue.fail(second, "S3 unreachable again") == "dead_letter"
    status = queue.status(req.request_id)
    assert status["state"] == "dead_letter" and status["attempts"] == 2
    assert status["last_error"] == "S3 unreachable again"
    assert queue.claim("w1") is None


def test_expired_lease_redelivered_and_stale_ack_refused(queue, clock):
    req = request()
    queue.enqueue(req)
    dead = queue.claim("worker-killed")
    clock.now += 59
    assert queue.claim("w2") is None  # lease still live
    clock.now += 2
    redelivered = queue.claim("w2")
    assert redelivered.request == req and redelivered.attempt == 2
    assert redelivered.fence > dead.fence
    assert not queue.heartbeat(dead)
    for stale in (lambda: queue.ack(dead, {"version": "from-the-dead"}),
                  lambda: queue.fail(dead, "late failure"),
                  lambda: queue.reject(req.request_id, {"why": "late"}, lease=dead)):
        with pytest.raises(LeaseLost):
            stale()
    queue.ack(redelivered, {"version": "v2"})
    status = queue.status(req.request_id)
    assert status["state"] == "done" and status["result"] == {"version": "v2"}
    assert [h["to"] for h in status["history"]].count("done") == 1
    assert [h["worker_id"] for h in status["history"] if h["to"] == "done"] == ["w2"]


def test_expired_lease_on_last_attempt_goes_to_dead_letter(queue, clock):
    req = request()
    queue.enqueue(req)
    queue.fail(queue.claim("w1"), "boom")
    queue.claim("w2")  # attempt 2 of 2; this worker dies too
    clock.now += 61
    assert queue.claim("w3") is None
    status = queue.status(req.request_id)
    assert status["state"] == "dead_letter" and "expired" in status["last_error"]


def test_claim_id(queue, clock):
    a, b = request(1, model="mnist-cnn-b"), request(2)
    queue.enqueue(a)
    queue.enqueue(b)
    lease = queue.claim_id(b.request_id, "event-worker")
    assert lease.request == b
    assert queue.claim_id(b.request_id, "other") is None  # leased by a live worker
    clock.now += 61
    assert queue.claim_id(b.request_id, "other").attempt == 2  # that worker died
    assert queue.claim("w").request == a
    with pytest.raises(InputError):
        queue.claim_id("no-such-id", "w")


def test_reject_and_illegal_transitions(queue):
    bad, good = request(1), request(2)
    queue.enqueue(bad)
    queue.enqueue(good)
    lease = queue.claim_id(bad.request_id, "w1")
    queue.reject(bad.request_id, {"suite": "forget_set", "failed": ["ids_exist"]}, lease=lease)
    status = queue.status(bad.request_id)
    assert status["state"] == "rejected" and status["details"]["failed"] == ["ids_exist"]
    with pytest.raises(LeaseLost):
        queue.ack(lease, {})
    with pytest.raises(IllegalTransition):
        queue.reject(bad.request_id, {})  # rejected is terminal
    queue.reject(good.request_id, {"reason": "pending requests can be rejected too"})
    assert queue.counts()["rejected"] == 2
    with pytest.raises(InputError):
        queue.reject(good.request_id, {}, lease=lease)  # lease of another request


def test_transition_table_is_closed():
    assert set(TRANSITIONS) == set(STATES)
    assert all(targets <= set(STATES) for targets in TRANSITIONS.values())
    for terminal in ("done", "dead_letter", "rejected"):
        assert TRANSITIONS[terminal] == frozenset()
    assert "done" not in TRANSITIONS["pending"]  # nothing finishes without being claimed


def _claim_all(target: str, worker: str, start, out) -> None:
    q = open_queue(target, QueueParams(lease_seconds=600, max_attempts=3))
    start.wait()
    got = []
    while (lease := q.claim(worker)) is not None:
        got.append(lease.request_id)
        time.sleep(0.002)  # "work", so the two workers interleave instead of one draining the queue
    out.put((worker, got))
    out.close()
    out.join_thread()
    # A forked child inherits the parent's atexit hooks (Prefect's harness, torch threads when the
    # whole suite runs); leave without running them.
    os._exit(0)


def test_concurrent_claims_from_two_processes(target):
    q = open_queue(target, QueueParams(lease_seconds=600, max_attempts=3))
    # sixty models, so both workers may hold leases at once (one live lease per model)
    ids = {q.enqueue(request(cls=i % 10, subject=f"subject-{i:04d}", model=f"model-{i}"))[0] for i in range(60)}
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(target, f"w{i}", start, out))
             for i in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    a, b = results["w0"], results["w1"]
    assert not set(a) & set(b)
    assert len(a) + len(b) == 60 and set(a) | set(b) == ids
    assert q.counts()["leased"] == 60
    assert {s["worker_id"] for s in q.list(["leased"])} <= {"w0", "w1"}


def subject_request(subject: str, model: str = "mnist-cnn", **extra) -> DeletionRequest:
    return DeletionRequest(subject_id=subject, kind="subject", model=model, forget={"subject": subject}, **extra)


def test_one_live_lease_per_model(queue, clock):
    a, b = request(3), request(5)
    other = DeletionRequest(subject_id="s", kind="class", model="mnist-gan", forget={"class": 3})
    for r in (a, b, other):
        queue.enqueue(r)
    first = queue.claim("w1")
    assert first.request_id == a.request_id
    assert queue.claim_id(b.request_id, "w2") is None  # same model, live lease: stays pending
    assert queue.claim("w2").request_id == other.request_id  # another model runs in parallel
    assert queue.status(b.request_id)["state"] == "pending"
    queue.assert_current(first)
    clock.now += 61  # the first worker died: its lease expired, the model is free again
    with pytest.raises(LeaseLost):
        queue.assert_current(first)
    assert queue.claim_id(b.request_id, "w3").request_id == b.request_id


def test_claim_batch_takes_sample_level_requests_of_one_model(queue):
    subjects = [subject_request(f"subject-{i:04d}") for i in range(4)]
    cls = request(3)
    other_model = subject_request("subject-0100", model="mnist-cnn-b")
    explicit = subject_request("subject-0200", method="retrain")
    for r in (*subjects, cls, other_model, explicit):
        queue.enqueue(r)
    batch = queue.claim_batch("w1", 3, subjects[1].request_id)
    assert [x.request_id for x in batch] == [subjects[1].request_id, subjects[0].request_id, subjects[2].request_id]
    assert len({x.fence for x in batch}) == 3
    assert queue.claim_batch("w2", 8, subjects[3].request_id) == []  # the model is busy
    assert [x.request_id for x in queue.claim_batch("w2", 8, other_model.request_id)] == [other_model.request_id]
    assert queue.claim_batch("w3", 8, subjects[3].request_id, batch_models=[]) == []
    for lease in batch:
        queue.ack(lease, {"status": "done"})
    # a class request is alone; the explicit-method request is not batched with 'auto' ones
    assert [x.request_id for x in queue.claim_batch("w3", 8, cls.request_id)] == [cls.request_id]


def test_failed_is_terminal(queue):
    r = request()
    queue.enqueue(r)
    lease = queue.claim("w1")
    queue.mark_failed(lease, {"reason": "gates failed after exact retraining"})
    assert queue.status(r.request_id)["state"] == "failed"
    assert queue.claim("w2") is None and queue.counts()["failed"] == 1


def test_pending_models(queue, clock):
    a, b = request(1), request(2)
    other = request(3, model="mnist-cnn-b")
    for r in (a, b, other):
        queue.enqueue(r)
    assert queue.pending_models() == {"mnist-cnn": 2, "mnist-cnn-b": 1}
    first = queue.claim("w1")
    assert queue.pending_models() == {"mnist-cnn": 1, "mnist-cnn-b": 1}
    queue.ack(queue.claim("w2"), {})  # mnist-cnn-b's only request
    assert queue.pending_models() == {"mnist-cnn": 1}
    clock.now += 61  # w1 died: its request waits to be claimed again
    assert queue.pending_models() == {"mnist-cnn": 2}
    queue.reject(b.request_id, {"reason": "bad ids"})
    assert queue.pending_models() == {"mnist-cnn": 1}
    assert first.request_id == a.request_id


def _drain_one_by_one(target: str, worker: str, models: list[str], holders, parallel, start, out) -> None:
    """Claim, 'work' while marking the model held in shared memory, unmark, ack; until everything is done."""
    q = open_queue(target, QueueParams(lease_seconds=600, max_attempts=3))
    total = sum(q.counts().values())
    start.wait()
    got, clashes = [], 0
    while True:
        lease = q.claim(worker)
        if lease is None:
            if q.counts()["done"] == total:
                break
            time.sleep(0.005)  # every model with work left is held by another worker
            continue
        m = models.index(lease.request.model)
        with holders.get_lock():
            holders[m] += 1
            clashes += holders[m] > 1
            parallel.value = max(parallel.value, sum(holders))
        time.sleep(0.03)
        with holders.get_lock():
            holders[m] -= 1
        q.ack(lease, {"worker": worker})  # after the unmark: the next writer of m may start only now
        got.append(lease.request_id)
    out.put((worker, got, clashes))
    out.close()
    out.join_thread()
    os._exit(0)


def test_concurrent_workers_never_hold_two_live_leases_for_one_model(target):
    """Three processes drain 24 requests of two models: each leased once, one writer per model at any moment,
    the two models worked on in parallel."""
    q = open_queue(target, QueueParams(lease_seconds=600, max_attempts=3))
    models = ["mnist-cnn", "mnist-cnn-b"]
    ids = {q.enqueue(request(cls=i % 10, subject=f"subject-{i:04d}", model=models[i % 2]))[0] for i in range(24)}
    ctx = mp.get_context("fork")
    holders, parallel = ctx.Array("i", len(models)), ctx.Value("i", 0)
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_drain_one_by_one, args=(target, f"w{i}", models, holders, parallel, start, out))
             for i in range(3)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    done = [rid for _, got, _ in results for rid in got]
    assert sorted(done) == sorted(ids)  # every request processed, none twice
    assert sum(clashes for *_, clashes in results) == 0
    assert parallel.value == 2
    for rid in ids:
        assert [h["to"] for h in q.status(rid)["history"]] == ["pending", "leased", "done"]


def _hold_lease_until_killed(target: str, lease_seconds: float, out) -> None:
    q = open_queue(target, QueueParams(lease_seconds=lease_seconds, max_attempts=3))
    lease = q.claim("doomed-worker")
    out.put((lease.attempt, lease.fence, lease.expires_at))
    with LeaseKeeper(q, [lease], interval_s=0.2):  # heartbeats keep the lease while the process lives
        time.sleep(600)


def test_killed_worker_lease_expires_and_its_fence_is_refused(target):
    lease_seconds = 3.0
    q = open_queue(target, QueueParams(lease_seconds=lease_seconds, max_attempts=3))
    first, second = request(1), request(2)
    q.enqueue(first)
    q.enqueue(second)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    holder = ctx.Process(target=_hold_lease_until_killed, args=(target, lease_seconds, out))
    holder.start()
    try:
        attempt, fence, expires_at = out.get(timeout=60)
        dead = Lease(first, "doomed-worker", attempt, fence, expires_at)
        time.sleep(lease_seconds + 1)  # past the first expiry: only the heartbeats keep the lease
        assert q.claim("survivor") is None
        assert q.claim_id(second.request_id, "survivor") is None  # same model: one writer
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)
        assert holder.exitcode == -signal.SIGKILL
    finally:
        if holder.is_alive():
            os.kill(holder.pid, signal.SIGKILL)
            holder.join()
    deadline = time.time() + 30
    while (taken := q.claim("survivor")) is None and time.time() < deadline:
        time.sleep(0.1)
    assert taken is not None and taken.request_id == first.request_id
    assert taken.attempt == 2 and taken.fence > fence
    assert not q.heartbeat(dead)
    for stale in (lambda: q.assert_current(dead), lambda: q.ack(dead, {"version": "from-the-dead"}),
                  lambda: q.mark_failed(dead, {"reason": "late"})):
        with pytest.raises(LeaseLost):
            stale()
    assert q.claim("survivor-2") is None  # the model is busy again, now with the survivor
    q.assert_current(taken)
    q.ack(taken, {"version": "v2"})
    status = q.status(first.request_id)
    assert status["state"] == "done" and status["result"] == {"version": "v2"}
    assert [h["note"] for h in status["history"] if h["to"] == "leased"] == [None, "redelivered: lease expired"]
    assert q.claim("survivor-2").request_id == second.request_id


def test_runtime_opens_postgres_from_the_environment_else_sqlite_in_the_state_dir(tmp_path, monkeypatch,
                                                                                  postgres_url):
    import shutil

    from adapters.runtime import QUEUE_URL_ENV, Runtime

    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.delenv(QUEUE_URL_ENV, raising=False)
    embedded = Runtime(tmp_path).queue
    assert isinstance(embedded, SqliteRequestQueue) and embedded.path == tmp_path / "queue.db"
    monkeypatch.setenv(QUEUE_URL_ENV, postgres_url)
    assert isinstance(Runtime(tmp_path).queue, PostgresRequestQueue)
    monkeypatch.setenv(QUEUE_URL_ENV, f"sqlite:///{tmp_path}/other.db")  # production setting: PostgreSQL only
    with pytest.raises(InputError) as info:
        Runtime(tmp_path).queue
    assert info.value.field == QUEUE_URL_ENV


def test_held_request_is_never_claimed_until_approved_and_keeps_its_submitter(queue, clock):
    rid, created = queue.enqueue(request(), submitter="gov-a", forget_rows=800, hold="class deletion: needs approval")
    assert created and queue.status(rid)["state"] == "awaiting_approval"
    assert queue.claim("w1") is None  # held: invisible to workers
    assert queue.usage("gov-a", clock.now - 86400) == (1, 0)  # held: on no one's unapproved budget
    queue.enqueue(request(cls=5), submitter="gov-a", forget_rows=7)
    assert queue.usage("gov-a", clock.now - 86400) == (2, 7) and queue.usage("other", 0) == (0, 0)
    assert queue.usage("gov-a", clock.now + 1) == (2, 0)  # only the last 24 h count
    queue.set_approval_run(rid, "run-1")
    clock.now += 5
    queue.approve(rid, "gov-b", "checked with the product owner")
    view = queue.status(rid)
    assert view["state"] == "pending" and view["submitter"] == "gov-a" and view["forget_rows"] == 800
    hold = view["details"]["hold"]
    assert (hold["decision"], hold["decided_by"], hold["flow_run_id"]) == ("approved", "gov-b", "run-1")
    assert [h["to"] for h in view["history"]] == ["awaiting_approval", "pending"]
    assert queue.usage("gov-a", clock.now - 86400) == (2, 7)  # approved by a human: still off the budget
    lease = queue.claim("w1")
    assert lease.request_id == rid and lease.submitter == "gov-a" and lease.approval["decided_by"] == "gov-b"
    with pytest.raises(IllegalTransition):  # decided once: a late second decision changes nothing
        queue.decline(rid, "gov-c", "too late")


def test_declined_and_escalated_holds(queue, clock):
    rid, _ = queue.enqueue(request(), submitter="gov-a", forget_rows=800, hold="class deletion")
    assert queue.escalate(rid, "deadline passed") and not queue.escalate(rid, "again")  # marked once
    assert queue.status(rid)["details"]["hold"]["escalated_at"]
    queue.decline(rid, "gov-b", "removes a product capability", receipt="receipts/x.json")
    view = queue.status(rid)
    assert view["state"] == "rejected" and view["details"]["error"] == "rejected by gov-b: removes a product capability"
    assert not queue.escalate(rid, "late") and queue.usage("gov-a", 0) == (0, 0)  # rejected rows do not count
    with pytest.raises(IllegalTransition):
        queue.approve(rid, "gov-b")
    other, _ = queue.enqueue(request(cls=4), submitter="gov-a", forget_rows=10)
    with pytest.raises(IllegalTransition):  # only held requests take a decision
        queue.approve(other, "gov-b")
