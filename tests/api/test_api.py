"""The HTTP API over real HTTP: ``jobtrack serve`` in a subprocess on a
SQLite store, which the tests also write directly (as workers would)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, connect_sse
from PIL import Image

from jobtrack.model import JobStatus
from jobtrack.pipeline.sample import generate_sample
from jobtrack.store import SqliteJobStore
from tests.api.server import Server, running_server

IMAGES, BROKEN = 12, 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("api")
    with running_server(folder) as running:
        generate_sample(running.root / "album", count=IMAGES, broken=BROKEN, max_megapixels=0.5)
        yield running


@pytest.fixture
async def store(server: Server) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
    yield opened
    await opened.aclose()


def wait_for(predicate: Any, *, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_health_and_the_openapi_document(server: Server) -> None:
    with server.client(token=None) as client:
        assert client.get("/healthz").json() == {"status": "ok", "store": "ok"}
        document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/events",
        "/api/jobs/{job_id}/failures",
        "/api/jobs/{job_id}/cancel",
        "/api/jobs/{job_id}/retry",
        "/api/scans",
        "/api/stream",
        "/api/events",
        "/metrics",
        "/healthz",
    }
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/api/scans"]["post"]["security"] == [{"bearer": []}]
    assert document["paths"]["/api/jobs"]["get"]["security"] == [{}, {"bearer": []}]


async def test_jobs_are_listed_filtered_and_paged(server: Server, store: SqliteJobStore) -> None:
    kind = f"paged-{time.monotonic_ns()}"
    made = [await store.create_job(kind, ["a"]) for _ in range(5)]
    await store.increment(made[0].id, "a")
    await store.end_job(made[1].id, JobStatus.CANCELLED)
    with server.client(token=None) as client:
        first = client.get("/api/jobs", params={"job_type": kind, "limit": 2}).json()
        assert [j["id"] for j in first["jobs"]] == [made[4].id, made[3].id]  # newest first
        assert (first["limit"], first["offset"], first["next_offset"]) == (2, 0, 2)
        last = client.get("/api/jobs", params={"job_type": kind, "limit": 2, "offset": 4}).json()
        assert ([j["id"] for j in last["jobs"]], last["next_offset"]) == ([made[0].id], None)
        moving = client.get("/api/jobs", params={"job_type": kind, "status": "in_progress"}).json()
        assert [j["id"] for j in moving["jobs"]] == [made[0].id]
        assert moving["jobs"][0]["stages"]["a"]["completed_items"] == 1
        bad = client.get("/api/jobs", params={"status": "sideways", "limit": 0})
        assert bad.status_code == 422
        assert bad.json()["error"] == "malformed request"
        assert {tuple(d["loc"]) for d in bad.json()["detail"]} == {
            ("query", "status"),
            ("query", "limit"),
        }


async def test_a_job_its_events_and_failures(server: Server, store: SqliteJobStore) -> None:
    job = await store.create_job("t", ["a"], attributes={"note": "<b>hi</b>"})
    await store.add_event(job.id, "reconciled", "a 1 → 2 reconciled", {"a": {"before": [1]}})
    with server.client(token=None) as client:
        shown = client.get(f"/api/jobs/{job.id}").json()
        assert (shown["id"], shown["status"], shown["note"]) == (job.id, "pending", "<b>hi</b>")
        events = client.get(f"/api/jobs/{job.id}/events").json()
        assert [(e["kind"], e["message"]) for e in events["events"]] == [
            ("reconciled", "a 1 → 2 reconciled")
        ]
        assert client.get(f"/api/jobs/{job.id}/failures").json() == {
            "job_id": job.id,
            "failures": [],
        }
        for path in ("/api/jobs/nope", "/api/jobs/nope/events", "/api/jobs/nope/failures"):
            missing = client.get(path)
            assert (missing.status_code, missing.json()) == (404, {"error": "job 'nope' not found"})


async def test_mutations_need_the_token_and_a_refusal_changes_nothing(
    server: Server, store: SqliteJobStore
) -> None:
    job = await store.create_job("t", ["a"])
    await store.increment(job.id, "a")
    with server.client(token=None) as anonymous, server.client(token="wrong") as wrong:
        for client in (anonymous, wrong):
            refused = client.post(f"/api/jobs/{job.id}/cancel")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "token" in refused.json()["error"]
            scan = client.post("/api/scans", json={"path": "album"})
            assert scan.status_code == 401
    after = await store.get_job(job.id)
    assert (after.status, await store.list_events(job.id)) == (JobStatus.IN_PROGRESS, [])
    with server.client() as client:
        done = client.post(f"/api/jobs/{job.id}/cancel")
        assert done.status_code == 200
        assert (done.json()["outcome"], done.json()["cancelled"]) == ("cancelled", True)
        assert done.json()["job"]["status"] == "cancelled"
        again = client.post(f"/api/jobs/{job.id}/cancel")
        assert again.status_code == 409  # it had ended: nothing was cancelled
        assert {k: again.json()[k] for k in ("outcome", "cancelled", "ended_as", "error")} == {
            "outcome": "ended",
            "cancelled": False,
            "ended_as": "cancelled",
            "error": f"job {job.id} had already ended: cancelled",
        }
        assert again.json()["job"]["status"] == "cancelled"
        assert client.post("/api/jobs/nope/cancel").status_code == 404
    [event] = await store.list_events(job.id)
    assert (event.kind, event.message) == ("cancelled", "cancelled through the API")


def test_scans_are_confined_to_the_roots(server: Server, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (server.root / "escape").symlink_to(outside)
    with server.client() as client:
        for path, status in (
            (str(outside), 403),
            ("escape", 403),  # a symlink out of the root
            ("album/../../..", 403),
            ("no-such-folder", 404),
            (str(next(p for p in (server.root / "album").rglob("*") if p.is_file())), 404),
            ("", 422),
        ):
            refused = client.post("/api/scans", json={"path": path})
            assert refused.status_code == status, (path, refused.text)
            assert set(refused.json()) >= {"error"}
        unknown_field = client.post("/api/scans", json={"path": "album", "rm": "-rf"})
        assert unknown_field.status_code == 422
        not_json = client.post(
            "/api/scans", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422
        assert "Traceback" not in not_json.text


def test_a_scan_started_through_the_api_completes_exact(server: Server) -> None:
    with server.client() as client:
        started = client.post("/api/scans", json={"path": "album"})
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        assert started.json()["collection"]["path"] == str((server.root / "album").resolve())

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
            return job if job["status"] in ("completed", "failed") else None

        job = wait_for(finished)
        failures = client.get(f"/api/jobs/{job_id}/failures").json()["failures"]
    assert job["status"] == "completed"
    for name in ("thumbnail", "cache"):
        stage = job["stages"][name]
        assert (stage["total_items"], stage["completed_items"], stage["failed_items"]) == (
            IMAGES,
            IMAGES - BROKEN,
            BROKEN,
        )
    assert len(failures) == BROKEN
    assert all(f["stages"] == ["cache", "thumbnail"] and f["error"] for f in failures)


def _read_events(source: EventSource, into: list[tuple[str, str, dict[str, Any]]]) -> None:
    # Until the test closes the connection under it.
    with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
        for event in source.iter_sse():
            into.append((event.event, event.id, json.loads(event.data)))


async def test_the_stream_sends_a_snapshot_then_every_change(
    server: Server, store: SqliteJobStore
) -> None:
    quiet = await store.create_job("streamed", ["a"])
    await store.increment(quiet.id, "a")  # active, and then left alone
    job = await store.create_job("streamed", ["a"])
    await store.increment(job.id, "a")
    await asyncio.sleep(1)  # the feed (a poll every 0.2 s) has passed both writes on
    received: list[tuple[str, str, dict[str, Any]]] = []
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(5, read=None)) as client:
        with connect_sse(client, "GET", "/api/stream") as source:
            reader = threading.Thread(target=_read_events, args=(source, received), daemon=True)
            reader.start()
            wait_for(lambda: received, within=10)
            kind, first_id, snapshot = received[0]
            assert kind == "snapshot"
            assert {quiet.id, job.id} <= {j["id"] for j in snapshot["jobs"]}
            assert snapshot["complete"] is True
            for count in (2, 3):  # (how fast: bench.stream)
                await store.increment(job.id, "a")

                def seen(count: int = count) -> bool:
                    return any(
                        k == "job"
                        and d["id"] == job.id
                        and d["stages"]["a"]["completed_items"] == count
                        for k, _, d in received
                    )

                wait_for(seen, within=10)
            assert all(d["id"] != quiet.id for k, _, d in received[1:])  # it never moved
            last_id = received[-1][1]
        # Missed while away: the job ends. Reconnecting with Last-Event-ID
        # gives every job written since, and only those: the ended job with
        # its true counts, not the quiet one.
        await store.seal_total(job.id, "a", total=3)
        with connect_sse(
            client, "GET", "/api/stream", headers={"Last-Event-ID": last_id}
        ) as source:
            event = next(source.iter_sse())
        for nonsense in ("x", "-5", "9" * 30):  # a bad Last-Event-ID: a first connection
            with connect_sse(
                client, "GET", "/api/stream", headers={"Last-Event-ID": nonsense}
            ) as source:
                first = next(source.iter_sse())
            assert quiet.id in {j["id"] for j in json.loads(first.data)["jobs"]}
    assert int(last_id) > int(first_id)
    assert event.event == "snapshot"
    resumed = {j["id"]: j for j in json.loads(event.data)["jobs"]}
    assert list(resumed) == [job.id]
    assert resumed[job.id]["status"] == "completed"
    assert resumed[job.id]["stages"]["a"]["completed_items"] == 3


async def test_metrics_count_items_jobs_and_events(server: Server, store: SqliteJobStore) -> None:
    with server.client(token=None) as client:
        before = _metrics(client.get("/metrics").text)
        job = await store.create_job("metered", ["m-stage"])
        await store.increment(job.id, "m-stage", completed=7, failed=2)
        await store.add_event(job.id, "redriven", "2 missing items published again")
        waiting = await store.create_job("metered", ["m-stage"])
        await store.add_event(waiting.id, "waiting", "behind a backlog being consumed")
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = _metrics(response.text)
    assert after['jobtrack_stage_items{outcome="completed",stage="m-stage"}'] == 7
    assert after['jobtrack_stage_items{outcome="failed",stage="m-stage"}'] == 2
    key = 'jobtrack_job_events_total{kind="redriven"}'
    assert after[key] - before.get(key, 0) == 1
    key = 'jobtrack_jobs{status="in_progress"}'
    assert after[key] - before.get(key, 0) == 1
    assert "jobtrack_jobs_stuck" in after
    assert after["jobtrack_jobs_waiting"] - before.get("jobtrack_jobs_waiting", 0) == 1
    assert "jobtrack_progress_write_seconds_count" in after


def _metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_off_this_machine_every_call_needs_the_token(tmp_path: Path) -> None:
    with running_server(tmp_path, host="0.0.0.0") as server:
        with server.client(token=None) as anonymous:
            assert anonymous.get("/api/jobs").status_code == 401
            assert anonymous.get("/metrics").status_code == 401
            assert anonymous.get("/api/stream").status_code == 401
            assert anonymous.get("/openapi.json").status_code == 401
            assert anonymous.get("/api/events").status_code == 401
            assert anonymous.get("/healthz").status_code == 200  # no data in it
            assert anonymous.get("/").status_code == 200  # the page: no data in it
        with server.client() as client:
            assert client.get("/api/jobs").status_code == 200


def test_off_this_machine_without_a_token_the_server_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobtrack",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "set JOBTRACK_API_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_a_token_the_server_takes_no_changes(tmp_path: Path) -> None:
    with running_server(tmp_path, token=None) as server, server.client(token=None) as client:
        refused = client.post("/api/scans", json={"path": "."})
        assert refused.status_code == 403
        assert "JOBTRACK_API_TOKEN" in refused.json()["error"]
        assert client.get("/api/jobs").json()["jobs"] == []  # nothing was started


def test_retry_re_drives_the_failed_items_in_a_new_job(server: Server) -> None:
    with server.client() as client:
        job = client.post("/api/scans", json={"path": "album"}).json()

        def ended(job_id: str) -> dict[str, Any] | None:
            found: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
            return found if found["status"] in ("completed", "failed", "cancelled") else None

        first = wait_for(lambda: ended(job["id"]))
        failures = client.get(f"/api/jobs/{first['id']}/failures").json()["failures"]
        assert len(failures) == BROKEN
        # The broken images are mended, then retried.
        for failure in failures:
            Image.new("RGB", (64, 48), "navy").save(
                server.root / "album" / failure["image"], "JPEG"
            )
        with server.client(token=None) as anonymous:
            assert anonymous.post(f"/api/jobs/{first['id']}/retry").status_code == 401
            assert anonymous.get(f"/api/jobs/{first['id']}/events").json()["events"] == []
            total = len(anonymous.get("/api/jobs", params={"limit": 200}).json()["jobs"])
        assert len(client.get("/api/jobs", params={"limit": 200}).json()["jobs"]) == total
        answer = client.post(f"/api/jobs/{first['id']}/retry")
        assert answer.status_code == 202, answer.text
        retried = answer.json()
        assert (retried["retried_from"], retried["failed_items"]) == (first["id"], BROKEN)
        second = wait_for(lambda: ended(retried["job"]["id"]))
        assert second["id"] != first["id"]
        assert second["status"] == "completed"
        for name in ("thumbnail", "cache"):
            stage = second["stages"][name]
            assert (stage["total_items"], stage["completed_items"], stage["failed_items"]) == (
                IMAGES,
                IMAGES,
                0,
            )
        assert client.get(f"/api/jobs/{second['id']}/failures").json()["failures"] == []
        events = client.get(f"/api/jobs/{first['id']}/events").json()["events"]
        assert [(e["kind"], e["data"]) for e in events] == [("retried", {"job": second["id"]})]
        nothing = client.post(f"/api/jobs/{second['id']}/retry")
        assert nothing.status_code == 409
        assert "nothing to retry" in nothing.json()["error"]
        assert client.post("/api/jobs/nope/retry").status_code == 404


async def test_the_activity_is_every_jobs_latest_events(
    server: Server, store: SqliteJobStore
) -> None:
    job = await store.create_job("active", ["a"])
    await store.add_event(job.id, "reconciled", "a 3 → 4 reconciled")
    await store.add_event(job.id, "redriven", "1 missing item published again")
    with server.client(token=None) as client:
        latest = client.get("/api/events", params={"limit": 2}).json()["events"]
        assert client.get("/api/events", params={"limit": 0}).status_code == 422
    assert [(e["job_id"], e["kind"], e["message"]) for e in latest] == [
        (job.id, "redriven", "1 missing item published again"),
        (job.id, "reconciled", "a 3 → 4 reconciled"),
    ]
