"""``jobtrack top`` and ``jobtrack workers``: the real command, in a
subprocess, on a SQLite store written through the store's public methods.
The live screen runs in a pseudo-terminal and is read as a terminal shows it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobtrack import App, Settings
from jobtrack.model import Job, JobEvent, utc_now
from jobtrack.store import SqliteJobStore, StageCount, WorkerBeat
from jobtrack.store.workers import THROUGHPUT_BUCKET, bucket_start
from tests import rabbitmq
from tests.conftest import SteppingClock
from tests.terminal import Screen, has_row, pseudo_terminal, rows_of, text_of

pytestmark = pytest.mark.timeout(120)

JOBTRACK = [sys.executable, "-m", "jobtrack"]
PID = 31337
INTERVAL = 0.5


@dataclass
class Prepared:
    store_url: str
    path: Path
    job: Job
    stuck: Job
    action: JobEvent
    beat: WorkerBeat


def _beat(done: int) -> WorkerBeat:
    now = utc_now()
    return WorkerBeat(
        worker_id="w-top",
        host="box-7",
        pid=PID,
        stages=("imports/rows",),
        concurrency=3,
        prefetch=6,
        interval=5.0,
        started_at=now - timedelta(minutes=1),
        beat_at=now,
        done=done,
    )


async def _prepare(path: Path) -> Prepared:
    """A job in progress, a stuck one (written as of six minutes ago) the
    monitor re-drove, and a worker that counted 3 items of imports/rows
    and failed 1."""
    store = SqliteJobStore.open(str(path))
    past = SqliteJobStore.open(str(path), clock=SteppingClock(utc_now() - timedelta(minutes=6)))
    try:
        job = await store.create_job("imports", ["rows"])
        await store.start_stage(job.id, "rows")
        stuck = await past.create_job("imports", ["rows"])
        action = await past.add_event(stuck.id, "redriven", "rows: 2 items published again")
        beat = _beat(3)
        await store.beat_worker(beat, [StageCount("imports", "rows", done=3, failed=1)])
        return Prepared(
            f"sqlite:///{path}",
            path,
            await store.get_job(job.id),
            await store.get_job(stuck.id),
            action,
            beat,
        )
    finally:
        await past.aclose()
        await store.aclose()


async def _count_more(path: Path, done: int) -> None:
    store = SqliteJobStore.open(str(path))
    try:
        await store.beat_worker(_beat(3 + done), [StageCount("imports", "rows", done=done)])
    finally:
        await store.aclose()


@pytest.fixture
def prepared(tmp_path: Path) -> Prepared:
    return asyncio.run(_prepare(tmp_path / "jobtrack.db"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    env |= {"JOBTRACK_DATA_DIR": str(tmp_path), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal of 60 lines of 200 columns: (master, slave)."""
    with pseudo_terminal() as ends:
        yield ends


def test_top_shows_the_live_numbers_in_a_terminal(
    tmp_path: Path, prepared: Prepared, terminal: tuple[int, int]
) -> None:
    master, slave = terminal
    process = subprocess.Popen(
        [*JOBTRACK, "top", "--interval", str(INTERVAL), "--store", prepared.store_url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(tmp_path),
        close_fds=True,
    )
    screen = Screen(master)
    try:
        first = screen.wait_for(has_row("imports", "rows", "3", "1"), within=30)
        rows = rows_of(first)
        assert ["imports", "rows", "3", "1", "0.1", "3", "1"] in rows
        [worker] = [row for row in rows if row[0] == "w-top"]
        assert worker[:8] == ["w-top", "live", "box-7", str(PID), "imports/rows", "3", "3", "0"]
        assert ["imports", "2", "1", "0", "1", "0", "0"] in rows  # active, stuck, …, re-driven
        [watched] = [row for row in rows if row[0] == prepared.stuck.id[:12]]
        assert watched[1] == "imports"
        assert watched[2].startswith("stuck: not written for 6 min")
        assert watched[3].startswith("redriven 6 min ago: rows: 2 items published")
        assert "no queues: the broker is memory://" in first

        seen = len(screen.frames)
        asyncio.run(_count_more(prepared.path, 4))
        moved = screen.wait_for(
            has_row("imports", "rows", "7", "1"), within=6 * INTERVAL + 5, after=seen
        )
        [worker] = [row for row in rows_of(moved) if row[0] == "w-top"]
        assert worker[6] == "7"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    screen.read(0.5)
    assert "Traceback" not in text_of(bytes(screen.raw))


def test_top_says_a_missing_store_and_keeps_trying(
    tmp_path: Path, terminal: tuple[int, int]
) -> None:
    master, slave = terminal
    path = tmp_path / "later.db"
    process = subprocess.Popen(
        [*JOBTRACK, "top", "--interval", str(INTERVAL), "--store", f"sqlite:///{path}"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(tmp_path),
        close_fds=True,
    )
    screen = Screen(master)
    try:
        screen.wait_for(lambda frame: "store unavailable: " in frame, within=30)
        seen = len(screen.frames)
        asyncio.run(_prepare(path))
        screen.wait_for(has_row("imports", "rows", "3", "1"), within=10, after=seen)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_top_once_json(tmp_path: Path, prepared: Prepared) -> None:
    done = subprocess.run(
        [*JOBTRACK, "top", "--once", "--json", "--store", prepared.store_url],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body: dict[str, Any] = json.loads(done.stdout)

    at = _parse(body["at"])
    assert utc_now() - timedelta(seconds=60) < at <= utc_now()
    first = bucket_start(at) - timedelta(seconds=THROUGHPUT_BUCKET * 5)
    beat = prepared.beat
    index = (bucket_start(beat.beat_at) - first) // timedelta(seconds=THROUGHPUT_BUCKET)
    done_series, failed_series = [0] * 6, [0] * 6
    done_series[index], failed_series[index] = 3, 1
    stuck = prepared.stuck
    quiet = int((at - stuck.updated_at).total_seconds())
    zero = dict.fromkeys(["completed", "failed", "cancelled", "waiting"], 0)
    counts = {**zero, "active": 2, "pending": 1, "in_progress": 1, "stuck": 1, "redriving": 1}
    assert body == {
        "at": _iso(at),
        "throughput": {
            "bucket_seconds": THROUGHPUT_BUCKET,
            "minutes": 1,
            "now": _iso(at),
            "buckets": [_iso(first + timedelta(seconds=THROUGHPUT_BUCKET * i)) for i in range(6)],
            "series": [
                {
                    "job_type": "imports",
                    "stage": "rows",
                    "done": done_series,
                    "failed": failed_series,
                    "last_minute": {"done": 3, "failed": 1},
                    "last_hour": {"done": 3, "failed": 1},
                }
            ],
            "last_minute": {"done": 3, "failed": 1},
            "last_hour": {"done": 3, "failed": 1},
        },
        "workers": {
            "heartbeat_interval": 5.0,
            "counts": {"live": 1, "dead": 0, "stopped": 0},
            "workers": [
                {
                    "id": "w-top",
                    "state": "live",
                    "host": "box-7",
                    "pid": PID,
                    "stages": ["imports/rows"],
                    "concurrency": 3,
                    "prefetch": 6,
                    "interval": 5.0,
                    "done": 3,
                    "failed": 0,
                    "last_error": None,
                    "last_error_at": None,
                    "started_at": _iso(beat.started_at),
                    "beat_at": _iso(beat.beat_at),
                    "stopped_at": None,
                    "dead_since": None,
                }
            ],
        },
        "overview": {
            "types": [{"job_type": "imports", **counts}],
            "totals": {"job_type": "", **counts},
            "stuck_after": 300.0,
        },
        "watched": [
            {
                "id": stuck.id,
                "job_type": "imports",
                "status": "pending",
                "message": "",
                "created_at": _iso(stuck.created_at),
                "updated_at": _iso(stuck.updated_at),
                "states": ["stuck", "redriving"],
                "reason": f"stuck: not written for {quiet // 60} min {quiet % 60} s"
                " (stuck after 5 min 0 s); re-driven by the monitor, which found it stuck",
                "action": prepared.action.to_dict(),
            }
        ],
        "queues": None,
        "queues_note": "no queues: the broker is memory://, whose queues live inside the"
        " process running them (name the shared broker with --broker amqp://…)",
        "store_error": None,
        "broker_error": None,
    }


def test_top_once_and_workers_as_text_and_json(tmp_path: Path, prepared: Prepared) -> None:
    env = _env(tmp_path) | {"COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*JOBTRACK, *args, "--store", prepared.store_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    once = run("top", "--once")
    assert once.returncode == 0, once.stderr
    assert ["imports", "rows", "3", "1", "0.1", "3", "1"] in rows_of(once.stdout)

    table = run("workers")
    assert table.returncode == 0, table.stderr
    [row] = rows_of(table.stdout)
    assert row[:8] == ["w-top", "live", "box-7", str(PID), "imports/rows", "3", "3", "0"]

    listed = run("workers", "--json")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert body["counts"] == {"live": 1, "dead": 0, "stopped": 0}
    assert [(w["id"], w["pid"], w["done"]) for w in body["workers"]] == [("w-top", PID, 3)]

    refused = run("top", "--json")
    assert refused.returncode == 2
    assert "--json prints one frame: use it with --once" in refused.stderr

    missing = subprocess.run(
        [*JOBTRACK, "top", "--once", "--store", f"sqlite:///{tmp_path}/none.db"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert f"store unavailable: no database at {tmp_path}/none.db" in missing.stdout


def test_the_command_line_loads_without_fastapi() -> None:
    check = "import sys, jobtrack.cli.main; print('fastapi' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "False\n"


USER_APP = '''
"""A user's app with one job type, ``imports``, whose ``rows`` stage has a queue."""

from jobtrack.runtime import App

app = App()
imports = app.job_type("imports", ["rows"])


@imports.handler("rows")
def rows(item):
    """Does nothing."""
'''


def test_top_shows_the_queues_of_a_shared_broker(tmp_path: Path, prepared: Prepared) -> None:
    rabbitmq.require_server()
    (tmp_path / "mytop.py").write_text(USER_APP, encoding="utf-8")
    with rabbitmq.scratch_vhost("top_cli") as vhost:
        broker_url = rabbitmq.vhost_url(vhost)
        asyncio.run(_publish(broker_url, tmp_path, 4))
        env = _env(tmp_path) | {
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
            "JOBTRACK_APP": "mytop:app",
            "JOBTRACK_BROKER_URL": broker_url,
        }
        done = subprocess.run(
            [*JOBTRACK, "top", "--once", "--json", "--store", prepared.store_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["queues_note"] is None
    assert body["broker_error"] is None
    assert [
        (q["queue"], q["job_type"], q["stage"], q["messages"], q["consumers"], q["dead_letters"])
        for q in body["queues"]
    ] == [("jobtrack.imports.rows", "imports", "rows", 4, 0, 0)]


async def _publish(broker_url: str, data_dir: Path, count: int) -> None:
    """``count`` messages on the ``imports`` type's ``rows`` queue."""
    app = App(Settings(data_dir=data_dir, store_url="memory://", broker_url=broker_url))
    async with app:
        await app.broker.publish_many("jobtrack.imports.rows", [b"{}"] * count)
