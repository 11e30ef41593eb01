"""``jobtrack jobs retry ID`` and ``POST /api/jobs/{id}/retry`` for a user's
job type (the CSV import example's, ``--app examples.csv_import:app``) on
SQLite: a new job of exactly the old job's failed items, from its ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api.server import running_server
from tests.examples.run import EXAMPLES, ROOT, clean_env, run_example

APP = "examples.csv_import:app"


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, str]:
    """A finished CSV import with two failed rows: the data folder and the job's id."""
    data_dir = tmp_path / "state"
    env = clean_env(JOBTRACK_DATA_DIR=str(data_dir))
    done = run_example(
        "csv_import", EXAMPLES / "payments.csv", "--output", tmp_path / "o.db", env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return data_dir, done.stdout.split()[1].rstrip(":")


def jobtrack(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``jobtrack ARGS --data-dir DATA_DIR`` from the project's folder."""
    return subprocess.run(
        [sys.executable, "-m", "jobtrack", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=ROOT,
        check=False,
    )


def stages(job: dict[str, Any]) -> dict[str, tuple[int, int, int, bool]]:
    """Each stage's (total, completed, failed, sealed) in a job's JSON."""
    return {
        name: (s["total_items"], s["completed_items"], s["failed_items"], s["total_final"])
        for name, s in job["stages"].items()
    }


def test_jobs_retry_works_the_failed_items_again_in_a_new_job(
    imported: tuple[Path, str],
) -> None:
    data_dir, old = imported
    done = jobtrack(data_dir, "jobs", "retry", old, "--app", APP, "--json")
    assert done.returncode == 1, done.stderr  # the two bad rows fail again
    answer = json.loads(done.stdout)
    assert (answer["retried_from"], answer["failed_items"]) == (old, 2)
    new = answer["job"]
    assert new["id"] != old
    assert (new["job_type"], new["status"]) == ("csv-import", "failed")
    assert stages(new) == {"parse": (2, 0, 2, True), "write": (0, 0, 0, True)}
    shown = jobtrack(data_dir, "jobs", "show", new["id"], "--app", APP, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["failures"] == [
        {
            "image": "line-6",
            "stages": ["parse"],
            "error": "ValueError: amount 'not-a-number' is not a number",
        },
        {"image": "line-9", "stages": ["parse"], "error": "ValueError: expected 3 columns, got 2"},
    ]
    events = json.loads(jobtrack(data_dir, "jobs", "show", old, "--json").stdout)["events"]
    assert [e["data"]["job_id"] for e in events if e["kind"] == "retried"] == [new["id"]]


def test_jobs_retry_prints_the_new_job(imported: tuple[Path, str]) -> None:
    data_dir, old = imported
    done = jobtrack(data_dir, "jobs", "retry", old, "--app", APP)
    assert done.returncode == 1, done.stderr
    assert f"job {old}: 2 failed items retried as job " in done.stderr
    new = done.stderr.split("retried as job ")[1].split()[0]
    assert done.stdout == f"job {new} (csv-import): failed\n"


def test_jobs_retry_of_a_type_the_app_does_not_know_is_refused(
    imported: tuple[Path, str],
) -> None:
    data_dir, old = imported
    done = jobtrack(data_dir, "jobs", "retry", old)  # the built-in app
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"job {old} is a csv-import job, a type this app does not know" in done.stderr
    missing = jobtrack(data_dir, "jobs", "retry", "nope", "--app", APP)
    assert missing.returncode == 1
    assert "nope" in missing.stderr


def test_the_api_retries_a_user_type_from_its_ledger(
    imported: tuple[Path, str], tmp_path: Path
) -> None:
    data_dir, old = imported
    env = {"PYTHONPATH": str(ROOT)}
    with (
        running_server(tmp_path, extra=["--app", APP], env=env) as server,
        server.client() as client,
    ):
        assert server.data_dir == data_dir
        answer = client.post(f"/api/jobs/{old}/retry")
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert (body["retried_from"], body["failed_items"]) == (old, 2)
        new = body["job"]
        assert new["stages"]["parse"]["total_items"] == 2
        assert new["stages"]["parse"]["total_final"] is True
        running = client.post(f"/api/jobs/{new['id']}/retry")  # nobody works it here
        assert (running.status_code, running.json()) == (
            409,
            {"error": f"job {new['id']} is still running: retry it once it has ended"},
        )
    with running_server(tmp_path) as server, server.client() as client:  # the built-in app
        refused = client.post(f"/api/jobs/{old}/retry")
        assert refused.status_code == 409
        assert "a type this app does not know" in refused.json()["error"]


def test_jobs_retry_of_a_collection_scan_says_to_scan_again(tmp_path: Path) -> None:
    photos, data_dir = tmp_path / "photos", tmp_path / "state"
    photos.mkdir()
    (photos / "bad.jpg").write_bytes(b"not an image")
    scan = jobtrack(data_dir, "scan", str(photos), "--json")
    assert scan.returncode == 1, scan.stderr  # its one image failed
    old = json.loads(scan.stdout)["id"]
    done = jobtrack(data_dir, "jobs", "retry", old)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: job {old} is retried by scanning its collection again: jobtrack scan {photos}\n"
    )
