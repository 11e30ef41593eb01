"""Every store backend, for the one contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore
from tests.conftest import SteppingClock

BACKENDS = ["memory", "sqlite"]


def make_store(backend: str, tmp_path: Path, clock: SteppingClock) -> JobStore:
    """A fresh, empty store of the named backend."""
    if backend == "memory":
        return InMemoryJobStore(clock=clock)
    if backend == "sqlite":
        return SqliteJobStore.open(str(tmp_path / "jobs.db"), clock=clock)
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: SteppingClock
) -> AsyncIterator[JobStore]:
    """Each backend in turn."""
    backend = make_store(request.param, tmp_path, clock)
    yield backend
    await backend.aclose()
