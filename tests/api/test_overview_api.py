"""The overview's reads over HTTP, in process on a SQLite store: counts per
job type (``/api/overview``), the watch list (``/api/watch``), the search
of the job list (``/api/jobs?q=``) and the metrics per job type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobtrack import App, Item, JobType, Settings
from jobtrack.api.app import create_app
from jobtrack.api.config import ApiConfig
from jobtrack.model import JobStatus, utc_now
from jobtrack.store import JobStore, SqliteJobStore
from tests.conftest import SteppingClock

STUCK_AFTER = 300.0


def _nothing(item: Item) -> None:
    """A handler that does nothing."""


@dataclass
class Served:
    client: httpx.AsyncClient
    store: JobStore
    #: The same database, written as of six minutes ago: its jobs are stuck.
    past: JobStore


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path}/jobtrack.db")
    imports = JobType("imports", ["rows"], searchable=["source.file", "source.owner"])
    imports.handler("rows")(_nothing)
    exports = JobType("exports", ["rows"])
    exports.handler("rows")(_nothing)
    api = create_app(
        settings,
        ApiConfig(token="s3cret", stuck_after=STUCK_AFTER),
        app=App(settings, job_types=[imports, exports]),
    )
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        past = SqliteJobStore.open(
            str(tmp_path / "jobtrack.db"), clock=SteppingClock(utc_now() - timedelta(minutes=6))
        )
        try:
            yield Served(client, api.state.parts.store, past)
        finally:
            await past.aclose()


async def _get(served: Served, path: str) -> dict[str, Any]:
    answer = await served.client.get(path)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_the_overview_counts_per_type_and_in_total(served: Served) -> None:
    store = served.store
    stuck = await served.past.create_job("imports", ["rows"])
    waiting = await store.create_job("imports", ["rows"])
    await store.add_event(waiting.id, "waiting", "left alone: rows 40 queued")
    failed = await store.create_job("imports", ["rows"])
    await store.end_job(failed.id, JobStatus.FAILED, message="lost")
    moving = await store.create_job("exports", ["rows"])
    await store.start_stage(moving.id, "rows")

    body = await _get(served, "/api/overview")

    zero = dict.fromkeys(
        ["completed", "cancelled", "stuck", "waiting", "redriving", "failed", "pending"], 0
    )
    assert body["stuck_after"] == STUCK_AFTER
    assert body["types"] == [
        {**zero, "job_type": "exports", "active": 1, "in_progress": 1},
        {
            **zero,
            "job_type": "imports",
            "active": 2,
            "pending": 2,
            "in_progress": 0,
            "failed": 1,
            "stuck": 1,
            "waiting": 1,
        },
    ]
    assert body["totals"] == {
        **zero,
        "job_type": "",
        "active": 3,
        "pending": 2,
        "in_progress": 1,
        "failed": 1,
        "stuck": 1,
        "waiting": 1,
    }
    assert stuck.id != waiting.id


async def test_the_watch_list_with_reasons_and_the_monitors_action(served: Served) -> None:
    store = served.store
    stuck = await served.past.create_job("imports", ["rows"])
    redriven = await served.past.create_job("exports", ["rows"])
    await store.start_stage(redriven.id, "rows")  # moving again since
    action = await store.add_event(redriven.id, "redriven", "4 missing items published again")
    await store.create_job("imports", ["rows"])  # fine: not listed

    body = await _get(served, "/api/watch")

    assert body["next_offset"] is None
    jobs = body["jobs"]
    assert isinstance(jobs, list)
    assert [job["id"] for job in jobs] == [redriven.id, stuck.id]
    assert jobs[0]["states"] == ["redriving"]
    assert jobs[0]["action"] == action.to_dict()
    assert jobs[0]["reason"] == "re-driven by the monitor, which found it stuck"
    assert jobs[1]["states"] == ["stuck"]
    assert jobs[1]["action"] is None
    assert jobs[1]["reason"].startswith("stuck: not written for 6 min ")
    assert jobs[1]["reason"].endswith(" (stuck after 5 min 0 s)")
    assert (jobs[1]["job_type"], jobs[1]["status"]) == ("imports", "pending")

    only_stuck = await _get(served, "/api/watch?state=stuck")
    assert [job["id"] for job in only_stuck["jobs"]] == [stuck.id]
    exports = await _get(served, "/api/watch?type=exports")
    assert [job["id"] for job in exports["jobs"]] == [redriven.id]
    first = await _get(served, "/api/watch?limit=1")
    assert (len(first["jobs"]), first["next_offset"]) == (1, 1)
    bad = await served.client.get("/api/watch?state=asleep")
    assert bad.status_code == 422
    assert bad.json()["error"] == "malformed request"


async def test_jobs_are_found_by_id_prefix_and_searchable_fields(served: Served) -> None:
    store = served.store
    report = await store.create_job(
        "imports", ["rows"], attributes={"source": {"file": "Q3_Report%.csv", "owner": "ana"}}
    )
    ledger = await store.create_job(
        "imports", ["rows"], attributes={"source": {"file": "ledger.csv"}}
    )
    other = await store.create_job(
        "exports", ["rows"], attributes={"source": {"file": "q3_report%.csv"}}
    )

    async def found(query: str) -> list[str]:
        answer = await served.client.get("/api/jobs?" + query)
        assert answer.status_code == 200, answer.text
        return [job["id"] for job in answer.json()["jobs"]]

    assert await found("q=report%25") == [report.id]  # exports declares no field
    assert await found("q=ANA") == [report.id]
    assert await found("q=.csv") == [ledger.id, report.id]
    assert await found("q=" + other.id[:10]) == [other.id]
    assert await found("q=" + other.id[:10] + "&type=imports") == []
    assert await found("q=csv&job_type=imports&type=imports") == [ledger.id, report.id]
    assert await found("q=_") == [report.id]
    assert await found("job_type=imports&type=exports") == []  # both filters hold
    await store.end_job(ledger.id, JobStatus.CANCELLED)
    assert await found("status=active&type=imports") == [report.id]
    empty = await served.client.get("/api/jobs?q=")
    assert empty.status_code == 422


async def test_metrics_per_job_type(served: Served) -> None:
    store = served.store
    await served.past.create_job("imports", ["rows"])
    waiting = await store.create_job("imports", ["rows"])
    await store.add_event(waiting.id, "waiting", "left alone")
    await store.create_job("exports", ["rows"])

    answer = await served.client.get("/metrics")

    assert answer.status_code == 200
    lines = set(answer.text.splitlines())
    assert {
        'jobtrack_jobs_active_by_type{job_type="imports"} 2.0',
        'jobtrack_jobs_active_by_type{job_type="exports"} 1.0',
        'jobtrack_jobs_stuck_by_type{job_type="imports"} 1.0',
        'jobtrack_jobs_stuck_by_type{job_type="exports"} 0.0',
        'jobtrack_jobs_waiting_by_type{job_type="imports"} 1.0',
        'jobtrack_jobs_waiting_by_type{job_type="exports"} 0.0',
        "jobtrack_jobs_stuck 1.0",
        "jobtrack_jobs_waiting 1.0",
    } <= lines
