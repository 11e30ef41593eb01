"""The server stays responsive while its SQLite database is busy: statements
run on the database's own thread, never on the event loop."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx

from jobtrack.pipeline.sample import generate_sample
from tests.api.server import running_server

LOCK_HELD = 5.0


def test_healthz_answers_at_once_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path) as server:
        generate_sample(server.root / "album", count=3, broken=0, max_megapixels=0.1)
        blocker = sqlite3.connect(server.data_dir / "jobtrack.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # as another process's long write would
        started: list[httpx.Response] = []
        with server.client() as client:
            scan = threading.Thread(
                target=lambda: started.append(client.post("/api/scans", json={"path": "album"}))
            )
            held_since = time.monotonic()
            scan.start()
            time.sleep(0.5)  # the scan is now waiting for the lock
            latencies: list[float] = []
            with server.client(token=None) as probe:
                while time.monotonic() - held_since < LOCK_HELD - 0.5:
                    before = time.monotonic()
                    answer = probe.get("/healthz")
                    latencies.append(time.monotonic() - before)
                    assert answer.json() == {"status": "ok", "store": "ok"}
                    time.sleep(0.2)
            blocker.execute("COMMIT")
            blocker.close()
            scan.join(timeout=30)
        assert not scan.is_alive()
    assert len(latencies) >= 10
    assert max(latencies) < 0.1, latencies
    assert started[0].status_code == 202, started[0].text  # it waited, then went on
