"""Edges of the HTTP API over real HTTP: odd jobs, slots, bodies, framing."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobtrack.api.security import MAX_BODY
from jobtrack.model import JobStatus
from jobtrack.pipeline.sample import generate_sample
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


def test_repeated_scans_of_one_folder_take_one_slot(server: Server) -> None:
    generate_sample(server.root / "busy", count=80, broken=0, max_megapixels=0.3)
    (server.root / "other").mkdir()
    with server.client() as client, ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda _: client.post("/api/scans", json={"path": "busy"}), range(6))
        )
        assert [a.status_code for a in answers] == [202] * 6, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1  # the one running job
        other = client.post("/api/scans", json={"path": "other"})
        assert other.status_code == 202, other.text
        busy = client.get(f"/api/jobs/{answers[0].json()['id']}").json()
    assert busy["status"] not in ("completed", "failed", "cancelled")  # still scanning then


def test_a_request_body_over_the_cap_is_refused_unread(server: Server) -> None:
    big = json.dumps({"path": "x" * MAX_BODY}).encode()
    with server.client() as client:
        said = client.post("/api/scans", content=big, headers={"content-type": "application/json"})
        assert (said.status_code, said.json()) == (
            413,
            {"error": f"the request body is over {MAX_BODY} bytes"},
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096]

        streamed = client.post(
            "/api/scans", content=chunks(), headers={"content-type": "application/json"}
        )
        assert (streamed.status_code, streamed.json()) == (
            413,
            {"error": f"the request body is over {MAX_BODY} bytes"},
        )
        small = client.post("/api/scans", json={"path": "x" * 5000})
        assert small.status_code == 422  # under the cap: the route's own checks


def test_the_pages_cannot_be_framed_by_another_site(server: Server) -> None:
    with server.client(token=None) as client:
        page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in [part.strip() for part in policy.split(";")]
    assert page.headers["x-frame-options"] == "DENY"


def test_the_api_docs_load_nothing_from_elsewhere(server: Server) -> None:
    with server.client(token=None) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
            " object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        sources = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert sources, page.text
        assert "<script>" not in page.text  # no inline script: the policy allows none
        for source in sources:
            assert source.startswith("/static/"), source
            assert client.get(source).status_code == 200, source
        assert client.get("/redoc").status_code == 404
