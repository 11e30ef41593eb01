"""``GET /api/workers``, ``GET /api/throughput`` and the workers' metrics,
over real HTTP: heartbeats written into the server's SQLite store as
worker processes write them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from jobtrack.model import utc_now
from jobtrack.store import SqliteJobStore, StageCount, WorkerBeat
from tests.api.server import Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("workers")) as running:
        yield running


class PastClock:
    """The real clock, ``ago`` seconds back: the store stamps each beat
    with its clock, so beats heard of in the past are written with this."""

    def __init__(self) -> None:
        self.ago = 0.0

    def __call__(self) -> datetime:
        return utc_now() - timedelta(seconds=self.ago)


@pytest.fixture
def past() -> PastClock:
    """The writing store's clock, moved back per beat."""
    return PastClock()


@pytest.fixture
async def store(server: Server, past: PastClock) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"), clock=past)
    yield opened
    await opened.aclose()


async def _write(
    store: SqliteJobStore,
    past: PastClock,
    beat: WorkerBeat,
    ago: float,
    counts: Sequence[StageCount] = (),
) -> None:
    past.ago = ago
    await store.beat_worker(beat, counts)


def _beat(worker_id: str, ago: float, **changes: object) -> WorkerBeat:
    at = utc_now() - timedelta(seconds=ago)
    fields: dict[str, object] = {
        "worker_id": worker_id,
        "host": "box",
        "pid": 42,
        "stages": ("t/a",),
        "concurrency": 2,
        "prefetch": 4,
        "interval": 5.0,
        "started_at": at - timedelta(minutes=5),
        "beat_at": at,
    }
    return WorkerBeat(**(fields | changes))  # type: ignore[arg-type]


async def test_workers_are_listed_live_first_with_their_states(
    server: Server, store: SqliteJobStore, past: PastClock
) -> None:
    stopped = _beat("w-stopped", 30, stopped_at=utc_now() - timedelta(seconds=30))
    await _write(store, past, stopped, 30)
    dead = _beat("w-dead", 60, done=7, last_error="disk full", last_error_at=utc_now())
    await _write(store, past, dead, 60)
    await _write(store, past, _beat("w-live", 0, done=3, failed=1), 0)

    with server.client() as client:
        answer = client.get("/api/workers")
        metrics = client.get("/metrics").text

    assert answer.status_code == 200
    body = answer.json()
    assert body["heartbeat_interval"] == 5.0
    assert body["counts"] == {"live": 1, "dead": 1, "stopped": 1}
    assert [(w["id"], w["state"]) for w in body["workers"]] == [
        ("w-live", "live"),
        ("w-dead", "dead"),
        ("w-stopped", "stopped"),
    ]
    live, gone = body["workers"][0], body["workers"][1]
    assert (live["host"], live["pid"], live["stages"], live["done"], live["failed"]) == (
        "box",
        42,
        ["t/a"],
        3,
        1,
    )
    assert live["dead_since"] is None
    assert gone["dead_since"] == gone["beat_at"]
    assert gone["last_error"] == "disk full"
    assert 'jobtrack_workers{state="live"} 1.0' in metrics
    assert 'jobtrack_workers{state="dead"} 1.0' in metrics
    assert 'jobtrack_workers{state="stopped"} 1.0' in metrics
    assert 'jobtrack_worker_items{outcome="done"} 3.0' in metrics
    assert 'jobtrack_worker_items{outcome="failed"} 1.0' in metrics


async def test_throughput_sums_the_workers_per_stage(
    server: Server, store: SqliteJobStore, past: PastClock
) -> None:
    await _write(store, past, _beat("t-2", 1800), 1800, [StageCount("scan", "cache", 5, 0)])
    await _write(store, past, _beat("t-1", 0), 0, [StageCount("scan", "thumb", 4, 1)])
    await _write(store, past, _beat("t-2", 0), 0, [StageCount("scan", "thumb", 6, 0)])

    with server.client() as client:
        body = client.get("/api/throughput", params={"minutes": 10}).json()
        refused = client.get("/api/throughput", params={"minutes": 0})

    assert body["bucket_seconds"] == 10
    assert len(body["buckets"]) == 60
    series = {(s["job_type"], s["stage"]): s for s in body["series"]}
    thumb, cache = series["scan", "thumb"], series["scan", "cache"]
    assert (sum(thumb["done"]), sum(thumb["failed"])) == (10, 1)
    assert thumb["done"][-1] + thumb["done"][-2] == 10  # the newest buckets
    assert thumb["last_minute"] == {"done": 10, "failed": 1}
    assert sum(cache["done"]) == 0  # half an hour ago: outside 10 minutes, inside the hour
    assert cache["last_hour"] == {"done": 5, "failed": 0}
    assert body["last_minute"] == {"done": 10, "failed": 1}
    assert body["last_hour"] == {"done": 15, "failed": 1}
    assert refused.status_code == 422
    assert "error" in refused.json()


def test_the_routes_are_documented(server: Server, tmp_path: Path) -> None:
    with server.client(token=None) as client:
        document = client.get("/openapi.json").json()
    for path in ("/api/workers", "/api/throughput"):
        assert document["paths"][path]["get"]["tags"] == ["workers"]
