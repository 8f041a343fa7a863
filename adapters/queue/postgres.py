"""The request queue on PostgreSQL: the same interface and shared logic as the embedded SQLite queue.

Production runs many workers on many machines against one queue; PostgreSQL gives them a shared,
durable store. Only the plumbing differs from SQLite: connections (psycopg 3, rows as dicts),
placeholders, the schema's types, and how a write transaction is serialised: each takes one
transaction-level advisory lock, as SQLite's ``BEGIN IMMEDIATE`` takes its write lock, so "one live
lease per model" holds across every worker (a claim reads which models are busy and leases in one
critical section; writes are milliseconds long). Reads take no lock.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .base import RequestQueue

CLAIM_LOCK = 0x756E6C65  # advisory lock key serialising claims ("unle")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    method TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    fence BIGINT,
    worker_id TEXT,
    lease_expires_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    result TEXT,
    details TEXT,
    submitter TEXT,
    forget_rows BIGINT
);
CREATE INDEX IF NOT EXISTS requests_claimable ON requests (state, seq);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model, state);
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    worker_id TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS events_request ON events (request_id, id);
"""


class _Connection:
    """psycopg connection speaking the queue's ``?`` placeholders."""

    def __init__(self, con):
        self.con = con

    def execute(self, sql: str, params=()):
        return self.con.execute(sql.replace("?", "%s"), tuple(params))


class PostgresRequestQueue(RequestQueue):
    """``RequestQueue`` on PostgreSQL; ``url`` is a libpq URI (``postgresql://user:pw@host/db``)."""

    def __init__(self, url: str, **kwargs):
        self.url = url
        super().__init__(**kwargs)

    def __repr__(self) -> str:  # never print the URL: it may carry a password
        return "PostgresRequestQueue(...)"

    def _init_schema(self) -> None:
        with self._write() as con:
            con.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))  # one creator at a time
            con.con.execute(_SCHEMA)
            for name, typ in (("submitter", "TEXT"), ("forget_rows", "BIGINT")):  # queues made before submitters
                con.con.execute(f"ALTER TABLE requests ADD COLUMN IF NOT EXISTS {name} {typ}")

    @contextmanager
    def _connect(self) -> Iterator[_Connection]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                             connect_timeout=int(self.busy_timeout_s)) as con:
            yield _Connection(con)

    @contextmanager
    def _write(self) -> Iterator[_Connection]:
        with self._connect() as wrapped:
            with wrapped.con.transaction():
                wrapped.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
                yield wrapped
