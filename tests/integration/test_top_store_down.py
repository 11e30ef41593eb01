"""``jobtrack top`` while its PostgreSQL store goes away and comes back (a
private server of this test, stopped and started): the screen says the
store is unavailable, keeps drawing, and shows the numbers again once the
server is back; Ctrl-C still exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobtrack.model import utc_now
from jobtrack.store import StageCount, WorkerBeat
from jobtrack.store.postgres import PostgresJobStore
from tests.services.postgres_private import PrivatePostgres, ServiceError, private_postgres
from tests.terminal import Screen, has_row, pseudo_terminal, text_of

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

PID = 27182


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    try:
        with private_postgres() as running:
            yield running
    except ServiceError as exc:  # no PostgreSQL binaries here
        pytest.skip(f"a private PostgreSQL cannot be run: {exc}")


async def _prepare(url: str) -> None:
    store = PostgresJobStore(url)
    try:
        await store.create_job("imports", ["rows"])
        now = utc_now()
        beat = WorkerBeat(
            "w-pg", "box-9", PID, ("imports/rows",), 1, 1, 5.0, now - timedelta(minutes=1), now
        )
        await store.beat_worker(beat, [StageCount("imports", "rows", done=5)])
    finally:
        await store.aclose()


def test_top_says_the_store_is_away_and_shows_it_again(
    server: PrivatePostgres, tmp_path: Path
) -> None:
    url = server.create_database("top")
    asyncio.run(_prepare(url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    env |= {"JOBTRACK_DATA_DIR": str(tmp_path), "TERM": "xterm-256color"}
    with pseudo_terminal() as (master, slave):
        process = subprocess.Popen(
            [sys.executable, "-m", "jobtrack", "top", "--interval", "0.5", "--store", url],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
        screen = Screen(master)
        try:
            screen.wait_for(has_row("imports", "rows", "5"), within=30)

            server.stop()
            seen = len(screen.frames)
            away = screen.wait_for(lambda f: "store unavailable: " in f, within=40, after=seen)
            assert "(trying again)" in away
            assert process.poll() is None

            server.start()
            seen = len(screen.frames)
            back = screen.wait_for(has_row("imports", "rows", "5"), within=60, after=seen)
            assert has_row("w-pg", "live", "box-9", str(PID))(back) or has_row(
                "w-pg", "dead", "box-9", str(PID)
            )(back)

            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        screen.read(0.5)
    assert "Traceback" not in text_of(bytes(screen.raw))
