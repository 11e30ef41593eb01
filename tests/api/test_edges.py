"""Edges of the HTTP API over real HTTP: odd jobs, slots, bodies, framing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from jobtrack.model import JobStatus
from jobtrack.pipeline.stages import JOB_TYPE, STAGES
from jobtrack.store import SqliteJobStore
from tests.api.server import Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("edges")) as running:
        yield running


@pytest.fixture
async def store(server: Server) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
    yield opened
    await opened.aclose()


async def test_a_collection_scan_job_without_a_collection(
    server: Server, store: SqliteJobStore
) -> None:
    job = await store.create_job(JOB_TYPE, STAGES)  # made by hand, with no collection
    with server.client() as client:
        failures = client.get(f"/api/jobs/{job.id}/failures")
        assert (failures.status_code, failures.json()) == (200, {"job_id": job.id, "failures": []})
        await store.end_job(job.id, JobStatus.FAILED)
        retried = client.post(f"/api/jobs/{job.id}/retry")
        assert (retried.status_code, retried.json()) == (
            409,
            {"error": f"job {job.id} has no collection to scan again: nothing to retry"},
        )
