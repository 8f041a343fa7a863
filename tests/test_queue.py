"""The SQLite request queue: idempotency, leases, retries, dead letter, redelivery, concurrency."""
from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time

import pytest

from unlearn_core.config import parse_params
from unlearn_core.errors import InputError
from unlearn_core.queue import (STATES, TRANSITIONS, IllegalTransition, LeaseLost, RequestQueue,
                                queue_params)
from unlearn_core.requests import DeletionRequest


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(cls: int = 3, subject: str = "subject-0001", **extra) -> DeletionRequest:
    return DeletionRequest(subject_id=subject, kind="class", model="mnist-cnn", forget={"class": cls},
                           **extra)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(tmp_path, clock):
    return RequestQueue(tmp_path / "queue.db", lease_seconds=60, max_attempts=2, clock=clock)


def test_wal_mode_and_params(queue):
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
    a, b = request(1), request(2)
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
    assert queue.counts() == {"pending": 0, "leased": 1, "done": 1, "dead_letter": 0, "rejected": 0}
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
    a, b = request(1), request(2)
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


def _claim_all(path: str, worker: str, start, out) -> None:
    q = RequestQueue(path, lease_seconds=600, max_attempts=3)
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


def test_concurrent_claims_from_two_processes(tmp_path):
    path = tmp_path / "queue.db"
    q = RequestQueue(path, lease_seconds=600, max_attempts=3)
    ids = {q.enqueue(request(cls=i % 10, subject=f"subject-{i:04d}"))[0] for i in range(60)}
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), f"w{i}", start, out)) for i in range(2)]
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
