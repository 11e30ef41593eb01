"""The examples as a user runs them first: one command each, on the
embedded default (a SQLite store in the data folder, the in-process
broker), the handlers working in the example's own process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.examples.run import EXAMPLES, clean_env, failures, run_example, stage_counts
from tests.examples.site import MISSING, PAGES, serve_site

CSV_FAILURES = [
    ("parse", "line-6", "ValueError: amount 'not-a-number' is not a number"),
    ("parse", "line-9", "ValueError: expected 3 columns, got 2"),
]


def table_rows(output: Path) -> list[tuple[str, str, str, float]]:
    """The payments table, in line order."""
    with sqlite3.connect(output) as db:
        found = db.execute("SELECT line, id, name, amount FROM payments ORDER BY id").fetchall()
    db.close()
    return found


def test_the_csv_import_writes_the_good_rows_and_fails_the_bad_ones(tmp_path: Path) -> None:
    output = tmp_path / "payments.db"
    env = clean_env(JOBTRACK_DATA_DIR=str(tmp_path / "state"))
    done = run_example("csv_import", EXAMPLES / "payments.csv", "--output", output, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert stage_counts(done.stdout) == {"parse": (12, 10, 2), "write": (10, 10, 0)}
    assert failures(done.stdout) == CSV_FAILURES
    assert "10 rows in" in done.stdout
    rows = table_rows(output)
    assert len(rows) == 10
    assert [row[1] for row in rows] == [f"p-{n:03d}" for n in (1, 2, 3, 4, 6, 7, 9, 10, 11, 12)]
    assert rows[0] == ("line-2", "p-001", "Ada Lovelace", 120.5)
    assert (tmp_path / "state" / "jobtrack.db").is_file()  # the store: the data folder's


def test_the_csv_import_run_twice_keeps_one_row_per_line(tmp_path: Path) -> None:
    output = tmp_path / "payments.db"
    env = clean_env(JOBTRACK_DATA_DIR=str(tmp_path / "state"))
    for _ in range(2):
        done = run_example("csv_import", EXAMPLES / "payments.csv", "--output", output, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert stage_counts(done.stdout) == {"parse": (12, 10, 2), "write": (10, 10, 0)}
    assert len(table_rows(output)) == 10


def test_the_csv_import_refuses_no_work_without_a_shared_broker(tmp_path: Path) -> None:
    env = clean_env(JOBTRACK_DATA_DIR=str(tmp_path / "state"))
    done = run_example("csv_import", EXAMPLES / "payments.csv", "--no-work", env=env)
    assert done.returncode == 1
    assert "--no-work needs a shared broker" in done.stderr


def test_the_crawler_stores_every_page_once_and_fails_the_broken_link(tmp_path: Path) -> None:
    output = tmp_path / "pages"
    env = clean_env(JOBTRACK_DATA_DIR=str(tmp_path / "state"))
    with serve_site() as (url, hits):
        done = run_example("crawler", url, "--output", output, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    pages = PAGES + 1  # and the index
    assert stage_counts(done.stdout) == {
        "fetch": (pages + 1, pages, 1),
        "links": (pages, pages, 0),
        "store": (pages, pages, 0),
    }
    assert failures(done.stdout) == [
        ("fetch", url.rstrip("/") + MISSING, "HTTPError: HTTP Error 404: File not found")
    ]
    stored = sorted(path.relative_to(output).as_posix() for path in output.rglob("*"))
    assert stored == ["index.html", *(f"page-{n:02d}.html" for n in range(PAGES))]
    assert (output / "page-07.html").read_text().startswith("<html><body><h1>page 7</h1>")
    assert hits == {"/": 1, MISSING: 1} | {f"/page-{n:02d}.html": 1 for n in range(PAGES)}
    assert f"{pages} files in" in done.stdout
