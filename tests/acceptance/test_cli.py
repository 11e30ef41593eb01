"""The real command line, in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobtrack.store import SqliteJobStore

JOBTRACK = [sys.executable, "-m", "jobtrack"]


def run(*args: str | Path, data_dir: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBTRACK_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    env.pop("JOBTRACK_STORE_URL", None)
    done = subprocess.run(
        [*JOBTRACK, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in done.stderr
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "photos"
    run(
        "sample",
        root,
        "--count",
        "12",
        "--broken",
        "2",
        "--max-megapixels",
        "1",
        data_dir=root.parent,
        check=True,
    )
    return root


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["scan"],
        ["worker"],
        ["monitor"],
        ["jobs"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "cancel"],
        ["jobs", "watch"],
        ["top"],
        ["workers"],
        ["sample"],
    ],
)
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    done = run(*command, "--help", data_dir=tmp_path, check=True)
    assert done.stdout.startswith("Usage: jobtrack")


def test_scan_json_and_jobs_commands(collection: Path, tmp_path: Path) -> None:
    done = run("scan", collection, "--json", data_dir=tmp_path, check=True)
    job: dict[str, Any] = json.loads(done.stdout)
    assert job["status"] == "completed"
    assert job["job_type"] == "collection-scan"
    assert job["collection"]["path"] == str(collection.resolve())
    stages = job["stages"]
    assert list(stages) == ["scan", "thumbnail", "cache"]
    for name in ("thumbnail", "cache"):
        assert {
            k: stages[name][k]
            for k in ("status", "total_items", "completed_items", "failed_items", "total_final")
        } == {
            "status": "completed",
            "total_items": 12,
            "completed_items": 10,
            "failed_items": 2,
            "total_final": True,
        }
    listed = json.loads(run("jobs", "list", "--json", data_dir=tmp_path, check=True).stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    shown = json.loads(
        run("jobs", "show", job["id"], "--json", data_dir=tmp_path, check=True).stdout
    )
    assert shown == job
    assert [f["stages"] for f in job["failures"]] == [["cache", "thumbnail"]] * 2
    text = run("jobs", "show", job["id"], data_dir=tmp_path, check=True).stdout
    assert f"job {job['id']} (collection-scan): completed" in text


def test_scan_shows_progress_and_summary(collection: Path, tmp_path: Path) -> None:
    done = run("scan", collection, data_dir=tmp_path, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].endswith(" (collection-scan): completed")
    assert lines[1] == f"  collection: {collection.resolve()}"
    assert "2 items failed:" in lines
    assert done.stdout.count("(cache, thumbnail): ") == 2
    renditions = tmp_path.resolve() / "renditions"
    assert [
        line.split(": ", 1)[1].startswith(str(renditions))
        for line in lines
        if "renditions: " in line
    ] == [True, True]
    for stage in ("scan", "thumbnail", "cache"):
        assert stage in done.stderr  # the progress bars


@pytest.mark.parametrize(
    ("target", "message"),
    [("missing", "no such folder"), ("file.jpg", "not a folder")],
)
def test_unusable_path_exits_2(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "file.jpg").write_bytes(b"x")
    done = run("scan", tmp_path / target, data_dir=tmp_path / "state")
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker"], "a worker needs a broker that scans reach too (amqp://…), not memory://"),
        (["worker", "--broker", "amqp://localhost/", "--store", "memory://"], "shared store"),
        (["worker", "--broker", "amqp://localhost/?queue_type=lazy"], "queue_type must be"),
        (["worker", "--broker", "redis://localhost/"], "unsupported broker URL"),
        (["scan", ".", "--no-wait"], "enqueueing alone needs a broker that workers reach"),
        (["scan", ".", "--broker", "amqp://localhost/", "--store", "memory://"], "shared store"),
    ],
)
def test_distributed_commands_refuse_settings_that_cannot_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run(*args, data_dir=tmp_path / "state")
    assert done.returncode == 2, done.stderr
    assert message in " ".join(done.stderr.split())


def test_monitor_once_on_a_store_with_nothing_stuck(collection: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    assert run("scan", collection, "--json", data_dir=data_dir).returncode == 0
    done = run("monitor", "--once", data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0 jobs looked at\n"
    assert "missing items cannot be published again" in " ".join(done.stderr.split())
    report = json.loads(
        run("monitor", "--once", "--json", "--concurrency", "4", data_dir=data_dir).stdout
    )
    assert (report["stuck"], report["queries"]) == (0, 1)
    refused = run("monitor", "--once", "--concurrency", "0", data_dir=data_dir)
    assert refused.returncode == 2
    assert "--concurrency" in refused.stderr


def test_failed_job_exits_1(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"not an image")
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    done = run("scan", root, "--json", data_dir=tmp_path / "state")
    assert done.returncode == 1
    job = json.loads(done.stdout)
    assert job["status"] == "failed"
    assert job["stages"]["thumbnail"]["status"] == "failed"
    assert job["stages"]["thumbnail"]["failed_items"] == 2


def test_unknown_job_is_a_clear_error(tmp_path: Path) -> None:
    asyncio.run(SqliteJobStore.open(str(tmp_path / "jobtrack.db")).aclose())
    done = run("jobs", "show", "nope", data_dir=tmp_path)
    assert done.returncode == 1
    assert "Error: job 'nope' not found" in done.stderr


def test_empty_store_lists_no_jobs_and_creates_nothing(tmp_path: Path) -> None:
    done = run("jobs", "list", "--json", data_dir=tmp_path / "fresh", check=True)
    assert done.stdout.strip() == "[]"
    assert "nothing has been stored there yet" in done.stderr
    assert "no jobs" in run("jobs", "list", data_dir=tmp_path / "fresh", check=True).stdout
    assert not (tmp_path / "fresh").exists()
    missing = run("jobs", "show", "abc", data_dir=tmp_path / "fresh")
    assert missing.returncode == 1
    assert "no database at" in missing.stderr


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _jobs_in(database: Path) -> int:
    store = SqliteJobStore.open(str(database))
    try:
        return len(await store.list_jobs())
    finally:
        await store.aclose()


def test_interrupted_scan_cancels_its_job_and_a_rescan_finishes(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    run(
        "sample",
        root,
        "--count",
        "60",
        "--broken",
        "0",
        "--max-megapixels",
        "6",
        data_dir=tmp_path,
        check=True,
    )
    # One worker, so that the scan is sure to be still running when interrupted.
    env = {**os.environ, "JOBTRACK_DATA_DIR": str(tmp_path / "state"), "JOBTRACK_WORKERS": "1"}
    scan = subprocess.Popen(
        [*JOBTRACK, "scan", str(root)],
        env=env,
        # Ctrl-C as a terminal sends it: a shell starts background commands
        # with SIGINT ignored, and the scan would inherit that.
        preexec_fn=_sigint_default,  # noqa: PLW1509
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt as soon as the job exists (read from the store directly: a
    # `jobs list` subprocess per poll could take as long as the scan itself).
    database = tmp_path / "state" / "jobtrack.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if database.exists() and asyncio.run(_jobs_in(database)):
            break
        time.sleep(0.02)
    scan.send_signal(signal.SIGINT)
    _, stderr = scan.communicate(timeout=60)
    assert scan.returncode == 130
    assert "interrupted: the scan's job was cancelled" in stderr
    assert "Traceback" not in stderr
    [job] = json.loads(run("jobs", "list", "--json", data_dir=tmp_path / "state").stdout)
    assert (job["status"], job["message"]) == ("cancelled", "interrupted before the end")
    again = json.loads(run("scan", root, "--json", data_dir=tmp_path / "state", check=True).stdout)
    assert again["id"] != job["id"]
    assert again["stages"]["cache"]["completed_items"] == 60


def test_jobs_cancel(collection: Path, tmp_path: Path) -> None:
    job = json.loads(run("scan", collection, "--json", data_dir=tmp_path, check=True).stdout)
    done = run("jobs", "cancel", job["id"], data_dir=tmp_path)
    assert done.returncode == 3  # not cancelled: it had ended
    assert f"job {job['id']} had already ended: completed" in done.stdout
    answer = json.loads(run("jobs", "cancel", job["id"], "--json", data_dir=tmp_path).stdout)
    assert (answer["outcome"], answer["cancelled"], answer["ended_as"]) == (
        "ended",
        False,
        "completed",
    )
    missing = run("jobs", "cancel", "nope", data_dir=tmp_path)
    assert missing.returncode == 1
    assert "Error: job 'nope' not found" in missing.stderr


def test_bad_environment_is_a_usage_error(collection: Path, tmp_path: Path) -> None:
    env_run = subprocess.run(
        [*JOBTRACK, "scan", str(collection)],
        env={
            **os.environ,
            "JOBTRACK_DATA_DIR": str(tmp_path),
            "JOBTRACK_CONSUMER_PROGRESS": "maybe",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert env_run.returncode == 2
    assert "JOBTRACK_CONSUMER_PROGRESS must be on or off, not 'maybe'" in env_run.stderr


def test_jobs_cancel_an_active_job(tmp_path: Path) -> None:
    async def create() -> str:
        store = SqliteJobStore.open(str(tmp_path / "jobtrack.db"))
        job = await store.create_job("import", ["fetch"])
        await store.aclose()
        return job.id

    job_id = asyncio.run(create())
    done = run("jobs", "cancel", job_id, "--json", data_dir=tmp_path, check=True)
    answer = json.loads(done.stdout)
    assert (answer["outcome"], answer["cancelled"]) == ("cancelled", True)
    job = answer["job"]
    assert (job["status"], job["message"]) == ("cancelled", "cancelled by the user")
    again = run("jobs", "cancel", job_id, data_dir=tmp_path)
    assert again.returncode == 3
    assert f"job {job_id} had already ended: cancelled" in again.stdout
    shown = json.loads(run("jobs", "show", job_id, "--json", data_dir=tmp_path).stdout)
    assert [(e["kind"], e["message"]) for e in shown["events"]] == [
        ("cancelled", "cancelled by the user")
    ]


def test_sample_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "mine.jpg").write_bytes(b"precious")
    done = run("sample", tmp_path, "--count", "2", data_dir=tmp_path)
    assert done.returncode == 2
    assert "is not empty" in done.stderr
    assert (tmp_path / "mine.jpg").read_bytes() == b"precious"
