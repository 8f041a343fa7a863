"""The durable deletion-request queue: states, leases, fencing, and the logic both backends share.

Every state change goes through :data:`TRANSITIONS` and is recorded in an
``events`` table (the request's audit history). A claim hands out a
:class:`Lease` whose fencing token is the id of its claim event, so tokens grow
across the whole queue; ``ack``/``fail`` with a token that is no longer the
row's current one raise :class:`LeaseLost` and change nothing. A lease that
expires (its worker died) makes the request claimable again, which is how a
killed request is redelivered and still ends with exactly one ``done``.
One writer per model: no request is handed out while another request of the
same model holds a live lease.

The backends (``sqlite.py``, ``postgres.py``) supply only connections, the schema
and a write transaction that serialises writers; the SQL here is written with
``?`` placeholders and runs unchanged on both.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unlearn_core.config import Params, method_config
from unlearn_core.errors import InputError
from unlearn_core.requests import DEFAULT_MAX_PAYLOAD_BYTES, DeletionRequest

BATCHABLE_KINDS = ("samples", "subject")  # sample-level deletions one unlearning run can serve together
STATES = ("awaiting_approval", "pending", "leased", "done", "failed", "dead_letter", "rejected")
UNFINISHED = ("awaiting_approval", "pending", "leased")
TRANSITIONS: dict[str, frozenset[str]] = {
    # held for a human: approved -> pending, rejected -> rejected; -> itself when escalated (deadline passed)
    "awaiting_approval": frozenset({"pending", "rejected", "awaiting_approval"}),
    "pending": frozenset({"leased", "rejected"}),
    # leased -> leased: an expired lease claimed again by another worker
    "leased": frozenset({"leased", "done", "failed", "pending", "dead_letter", "rejected"}),
    "done": frozenset(),
    "failed": frozenset(),
    "dead_letter": frozenset(),
    "rejected": frozenset(),
}

class QueueParams(BaseModel):
    """The ``queue`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid")
    lease_seconds: float = Field(300.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=1024)  # for SubmitContext
    batch_max: int = Field(8, ge=1)  # sample-level requests of one model forgotten in one run (1: no batching)


_DEFAULTS = QueueParams()


def queue_params(params: Params) -> QueueParams:
    """The validated ``queue`` section of params.yaml (defaults when absent)."""
    try:
        return QueueParams.model_validate(method_config(params, "queue"))
    except ValidationError as exc:
        raise InputError.from_validation(exc, "params.yaml: queue.") from None


class IllegalTransition(RuntimeError):
    def __init__(self, request_id: str, from_state: str, to_state: str):
        self.request_id, self.from_state, self.to_state = request_id, from_state, to_state
        super().__init__(f"request {request_id}: illegal transition {from_state} -> {to_state}")


class LeaseLost(RuntimeError):
    """The lease expired and the request was claimed again (or finished) by someone else."""


@dataclass(frozen=True)
class Lease:
    request: DeletionRequest
    worker_id: str
    attempt: int
    fence: int  # fencing token: strictly increasing over all claims of the queue
    expires_at: float
    submitter: str | None = None  # who signed the request (None: enqueued before submitters existed)
    approval: dict | None = None  # a held request's hold: reason, decision, decided_by, decided_at

    @property
    def request_id(self) -> str:
        return self.request.request_id


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


class Connection(Protocol):
    """What the shared logic needs of a backend's connection: ``?`` placeholders, rows readable by column name."""

    def execute(self, sql: str, params: Iterable[Any] = ...) -> Any: ...


Row = Any  # a row readable by column name: sqlite3.Row, psycopg's dict row


class RequestQueue(ABC):
    """Deletion requests with leases, attempts, a dead letter and one writer per model; see the module docstring.

    Each call opens its own connection, so one instance may be shared by
    threads and the store by processes. ``clock`` returns epoch seconds.
    """

    def __init__(self, lease_seconds: float = _DEFAULTS.lease_seconds, max_attempts: int = _DEFAULTS.max_attempts,
                 clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0):
        if lease_seconds <= 0:
            raise InputError("lease_seconds", "must be > 0")
        if max_attempts < 1:
            raise InputError("max_attempts", "must be >= 1")
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self._init_schema()

    # ------------------------------------------------------------ plumbing (each backend)

    @abstractmethod
    def _init_schema(self) -> None:
        """Create the ``requests`` and ``events`` tables if missing (safe with concurrent openers)."""

    @abstractmethod
    def _connect(self) -> AbstractContextManager[Connection]:
        """A connection in autocommit mode, for reads."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Connection]:
        """A write transaction that excludes every other writer from its first statement to its commit."""

    # ------------------------------------------------------------ shared logic

    @staticmethod
    def _row(con: Connection, request_id: str) -> Row:
        row = con.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise InputError("request_id", f"no request {request_id!r} in the queue")
        return row

    def _move(self, con: Connection, row: Row, to: str, now: float,
              worker_id: str | None = None, note: str | None = None, **cols: Any) -> int:
        """Apply one checked transition; returns the id of its event."""
        if to not in TRANSITIONS[row["state"]]:
            raise IllegalTransition(row["request_id"], row["state"], to)
        event = con.execute(
            "INSERT INTO events (request_id, at, from_state, to_state, worker_id, note) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (row["request_id"], now, row["state"], to, worker_id, note)).fetchone()["id"]
        cols = {"state": to, "updated_at": now, **cols}
        sets = ", ".join(f"{name} = ?" for name in cols)
        con.execute(f"UPDATE requests SET {sets} WHERE request_id = ?", (*cols.values(), row["request_id"]))
        return event

    @staticmethod
    def _current(con: Connection, lease: Lease) -> Row:
        row = RequestQueue._row(con, lease.request_id)
        if row["state"] != "leased" or row["fence"] != lease.fence:
            raise LeaseLost(f"request {lease.request_id}: lease {lease.fence} of {lease.worker_id!r} "
                            f"is no longer current (state {row['state']}, fence {row['fence']})")
        return row

    # ------------------------------------------------------------ API

    def enqueue(self, request: DeletionRequest, submitter: str | None = None, forget_rows: int | None = None,
                hold: str | None = None) -> tuple[str, bool]:
        """Add a request (``awaiting_approval`` with ``hold`` as the reason, else ``pending``); the same
        idempotency key returns the existing id with created=False."""
        now = self.clock()
        state = "awaiting_approval" if hold else "pending"
        details = json.dumps({"hold": {"reason": hold, "held_at": _iso(now)}}, sort_keys=True) if hold else None
        with self._write() as con:
            old = con.execute("SELECT request_id, payload FROM requests WHERE idempotency_key = ?",
                              (request.idempotency_key,)).fetchone()
            if old is not None:
                if DeletionRequest.model_validate_json(old["payload"]).content_key() != request.content_key():
                    raise InputError("idempotency_key", f"already used by request {old['request_id']} "
                                                        "for a different deletion")
                return old["request_id"], False
            if con.execute("SELECT 1 FROM requests WHERE request_id = ?", (request.request_id,)).fetchone():
                raise InputError("request_id", f"{request.request_id} is already in the queue")
            con.execute("INSERT INTO requests (request_id, idempotency_key, payload, model, kind, method, state, "
                        "created_at, updated_at, submitter, forget_rows, details) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (request.request_id, request.idempotency_key, request.to_json(), request.model,
                         request.kind, request.method, state, now, now, submitter, forget_rows, details))
            con.execute("INSERT INTO events (request_id, at, to_state, note) VALUES (?, ?, ?, ?)",
                        (request.request_id, now, state, hold))
        return request.request_id, True

    def contains(self, request_id: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is not None

    def usage(self, submitter: str, since: float) -> tuple[int, int]:
        """(unfinished requests, rows deleted by requests created since ``since`` that were never held for a
        human and are not rejected) of a submitter: what its quotas count."""
        with self._connect() as con:
            pending = con.execute(f"SELECT COUNT(*) AS n FROM requests WHERE submitter = ? AND state IN "
                                  f"({', '.join('?' * len(UNFINISHED))})", (submitter, *UNFINISHED)).fetchone()["n"]
            rows = con.execute(  # what a human approved (or still has to decide) is not on the unapproved budget
                "SELECT COALESCE(SUM(forget_rows), 0) AS n FROM requests WHERE submitter = ? AND created_at >= ? "
                "AND state != 'rejected' AND NOT EXISTS (SELECT 1 FROM events WHERE events.request_id = "
                "requests.request_id AND events.to_state = 'awaiting_approval')", (submitter, since)).fetchone()["n"]
        return int(pending), int(rows)

    def _held(self, con: Connection, request_id: str) -> tuple[Row, dict]:
        row = self._row(con, request_id)
        if row["state"] != "awaiting_approval":
            raise IllegalTransition(request_id, row["state"], "a decision (it is not awaiting approval)")
        return row, json.loads(row["details"] or "{}")

    def approve(self, request_id: str, approver: str, note: str = "") -> None:
        """A human approved a held request: it becomes claimable."""
        now = self.clock()
        with self._write() as con:
            row, details = self._held(con, request_id)
            details.setdefault("hold", {}).update(decision="approved", decided_by=approver, decided_at=_iso(now),
                                                  note=note or None)
            self._move(con, row, "pending", now, note=f"approved by {approver}" + (f": {note}" if note else ""),
                       details=json.dumps(details, sort_keys=True))

    def decline(self, request_id: str, approver: str, reason: str, receipt: str | None = None) -> None:
        """A human rejected a held request: terminal ``rejected`` with the reason."""
        now = self.clock()
        with self._write() as con:
            row, details = self._held(con, request_id)
            details.setdefault("hold", {}).update(decision="rejected", decided_by=approver, decided_at=_iso(now))
            details.update(error=f"rejected by {approver}: {reason}", receipt=receipt)
            self._move(con, row, "rejected", now, note=f"rejected by {approver}: {reason}",
                       details=json.dumps(details, sort_keys=True))

    def escalate(self, request_id: str, note: str) -> bool:
        """Mark a held request whose approval is overdue (once); False if it already was or is no longer held."""
        now = self.clock()
        with self._write() as con:
            row = self._row(con, request_id)
            details = json.loads(row["details"] or "{}")
            if row["state"] != "awaiting_approval" or details.get("hold", {}).get("escalated_at"):
                return False
            details.setdefault("hold", {}).update(escalated_at=_iso(now), escalation=note)
            self._move(con, row, "awaiting_approval", now, note=f"escalated: {note}",
                       details=json.dumps(details, sort_keys=True))
        return True

    def set_approval_run(self, request_id: str, flow_run_id: str) -> None:
        """Remember the Prefect flow run (paused or suspended) that asks a human about a held request."""
        with self._write() as con:
            row = self._row(con, request_id)
            details = json.loads(row["details"] or "{}")
            details.setdefault("hold", {})["flow_run_id"] = flow_run_id
            con.execute("UPDATE requests SET details = ? WHERE request_id = ?",
                        (json.dumps(details, sort_keys=True), request_id))

    def claim(self, worker_id: str) -> Lease | None:
        """Lease the oldest pending or lease-expired request, or None if there is none."""
        return next(iter(self.claim_batch(worker_id, 1)), None)

    def claim_id(self, request_id: str, worker_id: str) -> Lease | None:
        """Lease one given request; None if it is finished, leased by a live worker, or its model is busy."""
        return next(iter(self.claim_batch(worker_id, 1, request_id)), None)

    def claim_batch(self, worker_id: str, max_requests: int, request_id: str | None = None,
                    batch_models: Collection[str] | None = None) -> list[Lease]:
        """Lease a first request (``request_id``, or the oldest claimable one) and up to ``max_requests - 1``
        more pending requests that can be forgotten together with it, in one transaction.

        Batchable with the first: same model (one of ``batch_models``, default any), same method, and
        sample-level kinds (``samples``, ``subject``); class requests are always alone. One writer per model: nothing is handed out
        for a model whose other request holds a live lease. Each lease has its own fencing token.
        """
        if max_requests < 1:
            raise InputError("max_requests", "must be >= 1")
        now = self.clock()
        where = ("(state = 'pending' OR (state = 'leased' AND lease_expires_at <= ?)) AND NOT EXISTS ("
                 "SELECT 1 FROM requests AS busy WHERE busy.state = 'leased' AND busy.lease_expires_at > ? "
                 "AND busy.model = requests.model AND busy.request_id != requests.request_id)")
        with self._write() as con:
            while True:
                if request_id is None:
                    row = con.execute(f"SELECT * FROM requests WHERE {where} ORDER BY seq LIMIT 1",
                                      (now, now)).fetchone()
                else:
                    self._row(con, request_id)
                    row = con.execute(f"SELECT * FROM requests WHERE request_id = ? AND {where}",
                                      (request_id, now, now)).fetchone()
                if row is None:
                    return []
                if row["attempts"] < self.max_attempts:
                    break
                # its last worker died holding the lease: no attempts left
                self._move(con, row, "dead_letter", now, note="lease expired on the last attempt",
                           worker_id=None, lease_expires_at=None,
                           last_error=f"lease of {row['worker_id']!r} expired after {row['attempts']} attempts")
                if request_id is not None:
                    return []
            rows = [row]
            if max_requests > 1 and row["kind"] in BATCHABLE_KINDS and (
                    batch_models is None or row["model"] in batch_models):
                rows += con.execute(
                    "SELECT * FROM requests WHERE state = 'pending' AND request_id != ? AND attempts < ? "
                    f"AND model = ? AND method = ? AND kind IN ({', '.join('?' * len(BATCHABLE_KINDS))}) "
                    "ORDER BY seq LIMIT ?",
                    (row["request_id"], self.max_attempts, row["model"], row["method"],
                     *BATCHABLE_KINDS, max_requests - 1)).fetchall()
            leases = []
            for r in rows:
                attempt = r["attempts"] + 1
                expires = now + self.lease_seconds
                note = "redelivered: lease expired" if r["state"] == "leased" else None
                fence = self._move(con, r, "leased", now, worker_id=worker_id, note=note,
                                   attempts=attempt, lease_expires_at=expires)
                con.execute("UPDATE requests SET fence = ?, worker_id = ? WHERE request_id = ?",
                            (fence, worker_id, r["request_id"]))
                leases.append(Lease(DeletionRequest.model_validate_json(r["payload"]), worker_id, attempt, fence,
                                    expires, r["submitter"], json.loads(r["details"] or "{}").get("hold")))
        return leases

    def assert_current(self, lease: Lease) -> None:
        """Raise :class:`LeaseLost` unless ``lease`` is still the request's current, unexpired lease.

        The fencing check right before a version is committed or promoted.
        """
        now = self.clock()
        with self._connect() as con:
            row = self._current(con, lease)
        if row["lease_expires_at"] <= now:
            raise LeaseLost(f"request {lease.request_id}: lease {lease.fence} of {lease.worker_id!r} expired")

    def heartbeat(self, lease: Lease) -> bool:
        """Extend a current lease; False if it was lost (stop working on the request then)."""
        now = self.clock()
        with self._write() as con:
            cur = con.execute("UPDATE requests SET lease_expires_at = ?, updated_at = ? WHERE request_id = ? "
                              "AND state = 'leased' AND fence = ?",
                              (now + self.lease_seconds, now, lease.request_id, lease.fence))
            return cur.rowcount == 1

    def ack(self, lease: Lease, result: dict) -> None:
        """Mark the request done with its (JSON-serialisable, ids-only) result."""
        now = self.clock()
        with self._write() as con:
            row = self._current(con, lease)
            self._move(con, row, "done", now, worker_id=lease.worker_id, lease_expires_at=None,
                       result=json.dumps(result, sort_keys=True))

    def fail(self, lease: Lease, error: str) -> str:
        """Record a failed attempt: back to pending, or dead_letter after max_attempts. Returns the state."""
        now = self.clock()
        with self._write() as con:
            row = self._current(con, lease)
            to = "pending" if row["attempts"] < self.max_attempts else "dead_letter"
            self._move(con, row, to, now, worker_id=lease.worker_id, note=error[:500],
                       lease_expires_at=None, last_error=error)
        return to

    def mark_failed(self, lease: Lease, details: dict) -> None:
        """Terminal ``failed``: every attempt failed its gates, exact retraining included. Never re-run."""
        now = self.clock()
        with self._write() as con:
            row = self._current(con, lease)
            self._move(con, row, "failed", now, worker_id=lease.worker_id, lease_expires_at=None,
                       last_error=details.get("reason"), details=json.dumps(details, sort_keys=True))

    def reject(self, request_id: str, details: dict, lease: Lease | None = None) -> None:
        """Validation failed: terminal ``rejected`` with the reasons. With ``lease``, only if still current."""
        now = self.clock()
        if lease is not None and lease.request_id != request_id:
            raise InputError("lease", f"lease is for {lease.request_id}, not {request_id}")
        with self._write() as con:
            row = self._current(con, lease) if lease is not None else self._row(con, request_id)
            self._move(con, row, "rejected", now, worker_id=lease.worker_id if lease else None,
                       lease_expires_at=None, details=json.dumps(details, sort_keys=True))

    def status(self, request_id: str) -> dict[str, Any]:
        with self._connect() as con:
            row = self._row(con, request_id)
            events = con.execute("SELECT * FROM events WHERE request_id = ? ORDER BY id",
                                 (request_id,)).fetchall()
        return {**self._view(row), "history": [
            {"at": _iso(e["at"]), "from": e["from_state"], "to": e["to_state"],
             "worker_id": e["worker_id"], "note": e["note"]} for e in events]}

    def list(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Requests in enqueue order, optionally only those in ``states``."""
        states = list(STATES if states is None else states)
        for state in states:
            if state not in STATES:
                raise InputError("states", f"unknown state {state!r}; known: {', '.join(STATES)}")
        marks = ", ".join("?" * len(states))
        with self._connect() as con:
            rows = con.execute(f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY seq", states).fetchall()
        return [self._view(row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as con:
            found = {r["state"]: r["n"] for r in
                     con.execute("SELECT state, COUNT(*) AS n FROM requests GROUP BY state").fetchall()}
        return {state: found.get(state, 0) for state in STATES}

    def pending_models(self) -> dict[str, int]:
        """Requests waiting to be claimed (pending, or leased by a worker whose lease expired), per model."""
        with self._connect() as con:
            rows = con.execute("SELECT model, COUNT(*) AS n FROM requests WHERE state = 'pending' OR "
                               "(state = 'leased' AND lease_expires_at <= ?) GROUP BY model ORDER BY model",
                               (self.clock(),)).fetchall()
        return {r["model"]: r["n"] for r in rows}

    def _view(self, row: Row) -> dict[str, Any]:
        return {
            "request_id": row["request_id"],
            "idempotency_key": row["idempotency_key"],
            "state": row["state"],
            "submitter": row["submitter"],
            "forget_rows": row["forget_rows"],
            "attempts": row["attempts"],
            "max_attempts": self.max_attempts,
            "worker_id": row["worker_id"],
            "fence": row["fence"],
            "lease_expires_at": _iso(row["lease_expires_at"]),
            "created_at": _iso(row["created_at"]),
            "updated_at": _iso(row["updated_at"]),
            "last_error": row["last_error"],
            "result": json.loads(row["result"]) if row["result"] else None,
            "details": json.loads(row["details"]) if row["details"] else None,
            "request": json.loads(row["payload"]),
        }
