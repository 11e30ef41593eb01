"""The examples on PostgreSQL and RabbitMQ (a database and a virtual host
of this module's own): the example only produces and follows its job
(``--no-work``), and a real ``jobtrack worker --app examples.NAME:app``
process does the work; the counts, rows and files are exact."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.examples.run import EXAMPLES, ROOT, clean_env, failures, run_example, stage_counts
from tests.examples.site import MISSING, PAGES, serve_site
from tests.examples.test_examples_embedded import CSV_FAILURES, table_rows
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import scratch_vhost, vhost_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    require_postgres()
    require_rabbitmq()
    base = tmp_path_factory.mktemp("examples-shared")
    with scratch_database("examples") as database, scratch_vhost("examples") as vhost:
        yield clean_env(
            JOBTRACK_STORE_URL=database_url(database),
            JOBTRACK_BROKER_URL=vhost_url(vhost),
            JOBTRACK_DATA_DIR=str(base / "state"),
        )


@contextmanager
def worker(env: dict[str, str], app: str, log: Path) -> Iterator[subprocess.Popen[str]]:
    """A ``jobtrack -v worker --app APP`` process, ready; stopped with SIGTERM
    afterwards (it must exit 0)."""
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobtrack", "-v", "worker", "--app", app, "--concurrency", "2"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_the_csv_import_produced_here_is_worked_by_a_worker(
    env: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "payments.db"
    with worker(env, "examples.csv_import:app", tmp_path / "worker.log"):
        done = run_example(
            "csv_import", EXAMPLES / "payments.csv", "--output", output, "--no-work", env=env
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert stage_counts(done.stdout) == {"parse": (12, 10, 2), "write": (10, 10, 0)}
    assert failures(done.stdout) == CSV_FAILURES
    assert len(table_rows(output)) == 10


def test_the_crawl_produced_here_is_worked_by_a_worker(env: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "pages"
    with serve_site() as (url, hits), worker(env, "examples.crawler:app", tmp_path / "worker.log"):
        done = run_example("crawler", url, "--output", output, "--no-work", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    pages = PAGES + 1
    assert stage_counts(done.stdout) == {
        "fetch": (pages + 1, pages, 1),
        "links": (pages, pages, 0),
        "store": (pages, pages, 0),
    }
    assert failures(done.stdout) == [
        ("fetch", url.rstrip("/") + MISSING, "HTTPError: HTTP Error 404: File not found")
    ]
    assert sum(1 for path in output.rglob("*") if path.is_file()) == pages
    assert sum(hits.values()) == pages + 1
