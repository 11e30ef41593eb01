"""Every store backend, for the one contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore
from tests.conftest import SteppingClock
from tests.postgres import database_url, new_schema, require_server, scratch_database

BACKENDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(scope="module")
def postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database for this test module alone."""
    require_server()
    with scratch_database(request.module.__name__.rsplit(".", 1)[-1][:20]) as name:
        yield name


def make_store(
    backend: str, tmp_path: Path, clock: SteppingClock, request: pytest.FixtureRequest
) -> JobStore:
    """A fresh, empty store of the named backend."""
    if backend == "memory":
        return InMemoryJobStore(clock=clock)
    if backend == "sqlite":
        return SqliteJobStore.open(str(tmp_path / "jobs.db"), clock=clock)
    if backend == "postgres":
        from jobtrack.store.postgres import PostgresJobStore

        database = request.getfixturevalue("postgres_database")
        url = database_url(database, schema=new_schema(database))
        return PostgresJobStore(url, clock=clock, max_size=4)
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: SteppingClock
) -> AsyncIterator[JobStore]:
    """Each backend in turn."""
    backend = make_store(request.param, tmp_path, clock, request)
    yield backend
    await backend.aclose()
