"""The deletion-request queue behind one interface: SQLite (embedded default) or PostgreSQL (production).

``open_queue(url, params)`` picks the backend from where the queue lives: a filesystem path or
``sqlite:///path`` (``sqlite:////abs/path`` for an absolute one) -> SQLite; ``postgresql://...`` -> PostgreSQL.
"""
from __future__ import annotations

from pathlib import Path

from unlearn_core.errors import InputError

from .base import STATES, IllegalTransition, Lease, LeaseLost, QueueParams, RequestQueue, queue_params
from .postgres import PostgresRequestQueue  # imports psycopg only when it connects
from .sqlite import SqliteRequestQueue

__all__ = ["STATES", "IllegalTransition", "Lease", "LeaseLost", "QueueParams", "RequestQueue", "open_queue",
           "queue_params"]


def open_queue(url: str | Path, params: QueueParams, **kwargs) -> RequestQueue:
    """The queue at ``url`` with ``params``' lease and attempts; ``kwargs`` go to the backend (``clock``, ...)."""
    kwargs = {"lease_seconds": params.lease_seconds, "max_attempts": params.max_attempts, **kwargs}
    target = str(url)
    if isinstance(url, Path) or "://" not in target:
        return SqliteRequestQueue(target, **kwargs)
    if target.startswith("sqlite:///"):
        return SqliteRequestQueue(target.removeprefix("sqlite:///"), **kwargs)
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresRequestQueue(target, **kwargs)
    raise InputError("queue_url", f"expected a file path, sqlite:///PATH or postgresql://..., got "
                                  f"{target.split('://')[0]}://...")  # never echo the rest: it may hold a password
