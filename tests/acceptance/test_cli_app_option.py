"""``--app module:attr`` (and ``JOBTRACK_APP``): the commands run on a
user's app, and know its job types through it; ``jobs watch`` follows any
job. The real command line, in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue
from typing import Any

import pytest

from jobtrack.model import Job, JobStatus
from jobtrack.store import SqliteJobStore
from tests.api.server import running_server

JOBTRACK = [sys.executable, "-m", "jobtrack"]

USER_APP = '''
"""A user's app: one job type whose failed items and details come from hooks."""

import os
from datetime import datetime, timezone
from pathlib import Path

from jobtrack.runtime import App
from jobtrack.store.ledger import ItemFailure

mark = os.environ.get("MYJOBS_MARK")
if mark:
    with Path(mark).open("a") as out:
        out.write("loaded\\n")


async def failures(app, job, limit):
    at = datetime(2026, 1, 2, tzinfo=timezone.utc)
    return [
        ItemFailure("write", "row-7", "bad row", 2, at),
        ItemFailure("parse", "row-9", "no such column", 1, at),
    ][:limit]


def details(app, job):
    return [f"  imported from {job.attributes.get('source', '?')}"]


app = App()
imports = app.job_type("csv-import", ["parse", "write"], failures=failures, details=details)

not_an_app = 42


def make_app():
    return app
'''


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A folder with the user's module ``myjobs`` and a SQLite store."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "myjobs.py").write_text(USER_APP, encoding="utf-8")
    return tmp_path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    env.update(
        JOBTRACK_DATA_DIR=str(home / "state"),
        PYTHONPATH=os.pathsep.join([str(home / "code"), env.get("PYTHONPATH", "")]),
        MYJOBS_MARK=str(home / "mark"),
        COLUMNS="200",
    )
    env.update(extra)
    return env


def run(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*JOBTRACK, *args],
        capture_output=True,
        text=True,
        env=env_for(home, **extra),
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done


def loads(home: Path) -> int:
    """How many times the user's module was imported."""
    mark = home / "mark"
    return len(mark.read_text().splitlines()) if mark.exists() else 0


def store_call(home: Path, action: Any) -> Any:
    async def go() -> Any:
        (home / "state").mkdir(exist_ok=True)
        store = SqliteJobStore.open(str(home / "state" / "jobtrack.db"))
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


def make_job(home: Path) -> Job:
    async def create(store: SqliteJobStore) -> Job:
        return await store.create_job(
            "csv-import", ["parse", "write"], attributes={"source": "rows.csv"}
        )

    job: Job = store_call(home, create)
    return job


def test_jobs_list_and_show_run_on_the_users_app(home: Path) -> None:
    job = make_job(home)
    listed = run(home, "jobs", "list", "--json", "--app", "myjobs:app")
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["job_type"]) for j in json.loads(listed.stdout)] == [(job.id, "csv-import")]
    assert loads(home) == 1
    shown = run(home, "jobs", "show", job.id, "--json", "--app", "myjobs:make_app")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["failures"] == [
        {"image": "row-7", "stages": ["write"], "error": "bad row"},
        {"image": "row-9", "stages": ["parse"], "error": "no such column"},
    ]
    text = run(home, "jobs", "show", job.id, "--app", "myjobs:app")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:2] == [f"job {job.id} (csv-import): pending", "  imported from rows.csv"]
    assert "2 items failed:" in lines
    assert "  row-7 (write): bad row" in lines
    assert loads(home) == 3
    # Without the app the type is unknown: no details, the ledger's failures (none).
    plain = run(home, "jobs", "show", job.id, "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["failures"] == []
    assert loads(home) == 3


def test_the_app_can_come_from_the_environment(home: Path) -> None:
    job = make_job(home)
    shown = run(home, "jobs", "show", job.id, "--json", JOBTRACK_APP="myjobs:app")
    assert shown.returncode == 0, shown.stderr
    assert [f["image"] for f in json.loads(shown.stdout)["failures"]] == ["row-7", "row-9"]
    assert loads(home) == 1
    cancelled = run(home, "jobs", "cancel", job.id, "--json", JOBTRACK_APP="myjobs:app")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["outcome"] == "cancelled"
    assert loads(home) == 2
    refused = run(home, "jobs", "list", JOBTRACK_APP="myjobs:nothing")
    assert refused.returncode == 2
    assert "module 'myjobs' has no attribute 'nothing'" in refused.stderr


def test_monitor_once_on_the_users_app(home: Path) -> None:
    helped = run(home, "monitor", "--help")
    assert helped.returncode == 0
    assert "--app MODULE:ATTR" in helped.stdout
    assert "JOBTRACK_APP" in helped.stdout
    make_job(home)
    done = run(
        home,
        "monitor",
        "--once",
        "--json",
        "--app",
        "myjobs:app",
        "--stuck-after",
        "3600",
        "--max-redrives",
        "1",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["stuck"], report["jobs"]) == (0, [])
    assert loads(home) == 1
    text = run(home, "monitor", "--once", "--mode", "centralized", "--app", "myjobs:app")
    assert text.returncode == 0, text.stderr
    assert loads(home) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:app", "cannot import 'nosuchmodule'"),
        ("myjobs:nothing", "module 'myjobs' has no attribute 'nothing'"),
        ("myjobs:not_an_app", "'myjobs:not_an_app' is a int, not a jobtrack App"),
        ("myjobs", "'myjobs' is not module:attribute"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [["jobs", "list"], ["jobs", "show", "x"], ["jobs", "watch", "x"], ["monitor", "--once"]],
    ids=" ".join,
)
def test_a_bad_app_is_one_line_and_exit_2(
    home: Path, command: list[str], spec: str, message: str
) -> None:
    make_job(home)
    done = run(home, *command, "--app", spec)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: ")
    assert message in done.stderr
    assert "(check --app or JOBTRACK_APP)" in done.stderr


def test_serve_answers_with_the_users_job_types(home: Path) -> None:
    job = make_job(home)
    env = env_for(home)
    with (
        running_server(
            home, extra=["--app", "myjobs:app"], env={"PYTHONPATH": env["PYTHONPATH"]}
        ) as server,
        server.client() as client,
    ):
        failures = client.get(f"/api/jobs/{job.id}/failures")
        assert (failures.status_code, failures.json()) == (
            200,
            {
                "job_id": job.id,
                "failures": [
                    {"image": "row-7", "stages": ["write"], "error": "bad row"},
                    {"image": "row-9", "stages": ["parse"], "error": "no such column"},
                ],
            },
        )
        retried = client.post(f"/api/jobs/{job.id}/retry")
        assert (retried.status_code, retried.json()) == (
            409,
            {"error": f"job {job.id} is still running: retry it once it has ended"},
        )


def test_serve_refuses_a_bad_app(home: Path) -> None:
    done = run(home, "serve", "--port", "0", "--app", "myjobs:not_an_app")
    assert done.returncode == 2, done.stderr
    assert "is a int, not a jobtrack App" in done.stderr


class Watcher:
    """``jobtrack jobs watch`` running; its stderr read line by line."""

    def __init__(self, home: Path, job_id: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [*JOBTRACK, "jobs", "watch", job_id, "--interval", "0.05", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(home),
        )
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,))
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, text: str) -> None:
        """Wait until stderr shows ``text`` (the watcher has read the job)."""
        while True:
            line = self.lines.get(timeout=60)
            self.seen.append(line)
            assert line, f"the watcher ended first: {''.join(self.seen)}"
            if text in line:
                return

    def finish(self) -> tuple[int, str, str]:
        assert self.process.stdout is not None
        out = self.process.stdout.read()  # (stderr is the reader's alone)
        self.process.wait(timeout=60)
        self._reader.join(timeout=60)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.process.returncode, out, "".join(self.seen)

    def close(self) -> None:
        """Stop the process if it still runs; close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=60)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.close()


def test_watch_follows_a_job_until_it_completes(home: Path, watchers: list[Watcher]) -> None:
    job = make_job(home)
    watcher = Watcher(home, job.id, "--json")
    watchers.append(watcher)
    watcher.wait_for(f"watching job {job.id} (csv-import): pending")

    async def advance(store: SqliteJobStore) -> None:
        for stage in ("parse", "write"):
            await store.raise_total(job.id, stage, by=3)
            await store.seal_total(job.id, stage)
            for key in ("a", "b", "c"):
                await store.increment(job.id, stage, item_key=key, failed=int(key == "c"))

    store_call(home, advance)
    code, out, _ = watcher.finish()
    assert code == 0
    final = json.loads(out)
    assert (final["id"], final["status"]) == (job.id, "completed")
    assert [
        (s["completed_items"], s["failed_items"], s["total_items"])
        for s in final["stages"].values()
    ] == [(2, 1, 3), (2, 1, 3)]


def test_watch_draws_bars_and_exits_1_when_the_job_fails(
    home: Path, watchers: list[Watcher]
) -> None:
    job = make_job(home)
    watcher = Watcher(home, job.id)
    watchers.append(watcher)
    watcher.wait_for(f"watching job {job.id} (csv-import): pending")

    async def fail(store: SqliteJobStore) -> None:
        await store.raise_total(job.id, "parse", by=2)
        await store.increment(job.id, "parse", item_key="a")
        await store.end_job(job.id, JobStatus.FAILED, message="the source went away")

    store_call(home, fail)
    code, out, err = watcher.finish()
    assert code == 1
    assert out == f"job {job.id} (csv-import): failed: the source went away\n"
    bars = [line.split() for line in err.splitlines() if line.split()[:1] in (["parse"], ["write"])]
    assert [(words[0], words[2], words[-1]) for words in bars[-2:]] == [
        ("parse", "1/2", "in_progress"),
        ("write", "0/?", "pending"),
    ], err


def test_watch_stops_watching_on_ctrl_c_and_the_job_goes_on(
    home: Path, watchers: list[Watcher]
) -> None:
    job = make_job(home)
    watcher = Watcher(home, job.id, "--json")
    watchers.append(watcher)
    watcher.wait_for(f"watching job {job.id}")
    watcher.process.send_signal(signal.SIGINT)
    code, out, err = watcher.finish()
    assert code == 130
    assert out == ""
    assert f"stopped watching job {job.id}; it goes on" in err
    assert "Traceback" not in err

    async def status(store: SqliteJobStore) -> JobStatus:
        return (await store.get_job(job.id)).status

    assert store_call(home, status) is JobStatus.PENDING


def test_watch_of_an_unknown_job_is_an_error(home: Path) -> None:
    make_job(home)
    done = run(home, "jobs", "watch", "nope")
    assert done.returncode == 1
    assert "nope" in done.stderr
