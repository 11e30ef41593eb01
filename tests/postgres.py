"""PostgreSQL for the tests: a database per test module, a schema per test.

The server is ``$JOBTRACK_TEST_POSTGRES_URL`` (default: the local one, as
the ``postgres`` role). Without a server the tests that need one are
skipped, and in CI (``$CI`` set) they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

ADMIN_URL = os.environ.get(
    "JOBTRACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def require_server() -> None:
    """Skip (locally) or fail (in CI) when no PostgreSQL server answers."""
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        message = f"no PostgreSQL server at {ADMIN_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def database_url(name: str, *, schema: str | None = None) -> str:
    """The URL of database ``name`` on the test server, with ``schema`` first
    on the search path."""
    base = ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    if schema is not None:
        url += "?options=" + quote(f"-c search_path={schema}")
    return url


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty database, dropped afterwards; yields its name."""
    name = f"jobtrack_{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_schema(database: str) -> str:
    """A new, empty schema in ``database``; returns its name."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url(database), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema
