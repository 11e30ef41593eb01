"""``jobtrack top``'s frame drawn from a snapshot (``render_top``, pure) and
its JSON (``TopSnapshot.to_dict``), without a store or broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from jobtrack.broker.base import QueueStats
from jobtrack.cli.top import (
    MEMORY_BROKER_NOTE,
    WORKERS_SHOWN,
    StageRate,
    TopSnapshot,
    render_top,
)
from jobtrack.model import JobEvent, JobStatus
from jobtrack.runtime.queues import AppQueue, QueueRow
from jobtrack.store import TypeCounts, Watched, WorkerBeat, WorkerInfo, WorkerState

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
STUCK_ID = "5e1f" + "0" * 28


def _text(snapshot: TopSnapshot, *, retrying: bool = True) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(render_top(snapshot, retrying=retrying))
    return console.export_text()


def _beat(worker_id: str, pid: int, ago: float, **changes: object) -> WorkerBeat:
    at = NOW - timedelta(seconds=ago)
    fields: dict[str, object] = {
        "worker_id": worker_id,
        "host": "box-1",
        "pid": pid,
        "stages": ("imports/rows",),
        "concurrency": 4,
        "prefetch": 8,
        "interval": 5.0,
        "started_at": at - timedelta(minutes=3),
        "beat_at": at,
    }
    return WorkerBeat(**(fields | changes))  # type: ignore[arg-type]


def _full() -> TopSnapshot:
    stuck = Watched(
        job_id=STUCK_ID,
        job_type="imports",
        status=JobStatus.IN_PROGRESS,
        message="",
        created_at=NOW - timedelta(minutes=20),
        updated_at=NOW - timedelta(minutes=7),
        stuck=True,
        waiting=False,
        redriving=True,
        action=JobEvent(
            STUCK_ID, NOW - timedelta(seconds=30), "redriven", "rows: 12 items published again"
        ),
    )
    return TopSnapshot(
        at=NOW,
        stuck_after=300.0,
        heartbeat_interval=5.0,
        rates=[StageRate("imports", "rows", 120, 3, 4000, 17)],
        workers=[
            WorkerInfo(_beat("w-live", 4321, 2, done=900, failed=4), WorkerState.LIVE),
            WorkerInfo(
                _beat("w-dead", 999, 60, last_error="disk full"),
                WorkerState.DEAD,
            ),
        ],
        counts=[TypeCounts("imports", in_progress=2, stuck=1, redriving=1, failed=5)],
        watched=[stuck],
        queues=[
            QueueRow(
                AppQueue("imports", "rows", "jobtrack.imports.rows"),
                QueueStats("jobtrack.imports.rows", 37, 2, 8, 95.0),
                6,
            )
        ],
    )


def _rows(text: str) -> list[list[str]]:
    """The table rows of a frame, as their cells."""
    return [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def test_a_frame_shows_throughput_queues_workers_and_stuck_jobs() -> None:
    text = _text(_full())
    rows = _rows(text)

    assert "jobtrack top — 2026-11-30 12:00:00 UTC" in text
    assert ["imports", "rows", "120", "3", "2.0", "4000", "17"] in rows
    assert ["jobtrack.imports.rows", "imports", "rows", "37", "2", "8", "95 s", "6"] in rows
    assert [
        "w-live",
        "live",
        "box-1",
        "4321",
        "imports/rows",
        "4",
        "900",
        "4",
        "2 s ago",
        "-",
    ] in rows
    dead = rows[3]
    assert dead[:9] == ["w-dead", "dead", "box-1", "999", "imports/rows", "4", "0", "0", "60 s ago"]
    assert dead[9] == "disk full"
    assert ["imports", "2", "1", "0", "1", "5", "0"] in rows
    [watched] = [row for row in rows if row[0] == STUCK_ID[:12]]
    assert watched[1] == "imports"
    assert watched[2].startswith("stuck: not written for 7 min 0 s")
    assert watched[3] == "redriven 30 s ago: rows: 12 items published again"
    assert "unavailable" not in text


def test_an_empty_store_and_the_in_process_broker_are_said_in_words() -> None:
    text = _text(
        TopSnapshot(
            at=NOW, stuck_after=300.0, heartbeat_interval=5.0, queues_note=MEMORY_BROKER_NOTE
        )
    )

    assert _rows(text) == []
    assert "throughput: no items counted in the last hour" in text
    assert "no queues: the broker is memory://" in text
    assert "workers: none has written a heartbeat" in text
    assert "jobs: none stored" in text
    assert "stuck and waiting jobs: none" in text


def test_a_store_or_broker_away_is_said_and_retried() -> None:
    away = TopSnapshot(
        at=NOW,
        stuck_after=300.0,
        heartbeat_interval=5.0,
        store_error="the store is unavailable: connection refused",
        broker_error="no answer within 5 s",
    )

    live = _text(away)
    once = _text(away, retrying=False)

    assert "store unavailable: the store is unavailable: connection refused (trying again)" in live
    assert "broker unavailable: no answer within 5 s (trying again)" in live
    assert "workers" not in live
    assert "store unavailable: the store is unavailable: connection refused\n" in once
    assert "trying again" not in once
    assert not away.ok


def test_the_json_is_the_apis_objects() -> None:
    body = _full().to_dict()

    assert body["at"] == "2026-11-30T12:00:00.000Z"
    assert body["store_error"] is None
    assert body["broker_error"] is None
    assert body["workers"]["counts"] == {"live": 1, "dead": 1, "stopped": 0}
    assert [w["pid"] for w in body["workers"]["workers"]] == [4321, 999]
    assert body["overview"]["totals"]["stuck"] == 1
    assert [w["id"] for w in body["watched"]] == [STUCK_ID]
    assert body["watched"][0]["action"]["kind"] == "redriven"
    assert body["queues"] == [
        {
            "queue": "jobtrack.imports.rows",
            "job_type": "imports",
            "stage": "rows",
            "messages": 37,
            "consumers": 2,
            "unacked": 8,
            "oldest_seconds": 95.0,
            "dead_queue": "jobtrack.imports.rows.dead",
            "dead_letters": 6,
        }
    ]


def test_per_second_is_over_the_minute() -> None:
    assert StageRate("t", "s", 90, 30).per_second == 2.0


def test_a_frame_lists_the_first_workers_and_counts_them_all() -> None:
    many = [WorkerInfo(_beat(f"w-{n:03}", 1000 + n, 1), WorkerState.LIVE) for n in range(12)] + [
        WorkerInfo(_beat("w-gone", 7, 90), WorkerState.DEAD)
    ]
    text = _text(TopSnapshot(at=NOW, stuck_after=300.0, heartbeat_interval=5.0, workers=many))

    shown = [row[0] for row in _rows(text)]
    assert shown == [f"w-{n:03}" for n in range(WORKERS_SHOWN)]
    assert f"workers (the first {WORKERS_SHOWN} of 13: 12 live, 1 dead)" in text


def test_the_json_of_a_store_away_has_no_store_parts() -> None:
    body = TopSnapshot(
        at=NOW,
        stuck_after=300.0,
        heartbeat_interval=5.0,
        queues_note=MEMORY_BROKER_NOTE,
        store_error="no answer within 5 s",
    ).to_dict()

    assert body == {
        "at": "2026-11-30T12:00:00.000Z",
        "throughput": None,
        "workers": None,
        "overview": None,
        "watched": None,
        "queues": None,
        "queues_note": MEMORY_BROKER_NOTE,
        "store_error": "no answer within 5 s",
        "broker_error": None,
    }
