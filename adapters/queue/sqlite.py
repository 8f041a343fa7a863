"""The request queue in one SQLite file (WAL mode): the embedded default, safe for several local processes."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import RequestQueue

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    method TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    fence INTEGER,
    worker_id TEXT,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_error TEXT,
    result TEXT,
    details TEXT,
    submitter TEXT,
    forget_rows INTEGER
);
CREATE INDEX IF NOT EXISTS requests_claimable ON requests (state, seq);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model, state);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    worker_id TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS events_request ON events (request_id, id);
"""


class SqliteRequestQueue(RequestQueue):
    """``RequestQueue`` in the SQLite file ``path``; writers are serialised by SQLite's write lock."""

    def __init__(self, path: str | Path, **kwargs):
        self.path = Path(path)
        super().__init__(**kwargs)

    def _init_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            columns = {r["name"] for r in con.execute("PRAGMA table_info(requests)").fetchall()}
            if columns and "model" not in columns:  # a queue made before the routing columns existed
                for name in ("model", "kind", "method"):
                    con.execute(f"ALTER TABLE requests ADD COLUMN {name} TEXT NOT NULL DEFAULT ''")
                    con.execute(f"UPDATE requests SET {name} = coalesce(json_extract(payload, '$.{name}'), 'auto')")
            for name, typ in (("submitter", "TEXT"), ("forget_rows", "INTEGER")):  # queues made before submitters
                if columns and name not in columns:
                    con.execute(f"ALTER TABLE requests ADD COLUMN {name} {typ}")
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from its first statement."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
