"""Import a CSV file of payments into a SQLite table, as a two-stage job.

    python examples/csv_import.py payments.csv            # rows into payments.db

Each row of the file is an item of the ``parse`` stage (the producer adds
them): its handler checks the row (three columns: id, name, amount; the
amount a number) and hands the parsed row to the ``write`` stage, whose
handler inserts it into the ``payments`` table of the output database. A
bad row fails its item with the reason, and the import goes on.

On the embedded default (a SQLite store under the data folder, the
in-process broker) the handlers run in this process. With a shared broker
(``JOBTRACK_BROKER_URL=amqp://…``) pass ``--no-work``: this process only
produces and follows the job, and a worker does the work::

    jobtrack worker --app examples.csv_import:app

It ends printing each stage's counts and the failed rows; it exits 0 when
every row was imported, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

import jobtrack
from jobtrack.cli.progress import JobProgress

app = jobtrack.App()
imports = app.job_type("csv-import", ["parse", "write"])

COLUMNS = ("id", "name", "amount")


@imports.handler("parse", feeds=["write"])
def parse(item: jobtrack.Item) -> None:
    """Check one row and pass it on to ``write``; a bad row raises."""
    fields: list[str] = item.payload["fields"]
    if len(fields) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} columns, got {len(fields)}")
    row_id, name, amount = (field.strip() for field in fields)
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"amount {amount!r} is not a number") from None
    item.add("write", key=item.key, payload={"id": row_id, "name": name, "amount": value})


@imports.handler("write")
def write(item: jobtrack.Item) -> None:
    """Insert (or replace) one parsed row in the output table."""
    with sqlite3.connect(item.job.attributes["output"], timeout=30) as db:
        db.execute(
            "INSERT OR REPLACE INTO payments (line, id, name, amount) VALUES (?, ?, ?, ?)",
            (item.key, item.payload["id"], item.payload["name"], item.payload["amount"]),
        )


def rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The file's data rows as items: key ``line-N`` (N its line), the fields."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        next(reader, None)  # the header
        for fields in reader:
            if fields:
                yield f"line-{reader.line_num}", {"fields": fields}


def prepare(output: Path) -> None:
    """Create the output table (and its folder) if there is none."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(output) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS payments"
            " (line TEXT PRIMARY KEY, id TEXT, name TEXT, amount REAL)"
        )
    db.close()


async def follow(job_id: str, console: Console) -> jobtrack.Job:
    """Draw the job's stages until it ends; the job as it ended."""
    job = await app.store.get_job(job_id)
    with JobProgress(console) as progress:
        while True:
            progress.update(job)
            if job.status.terminal:
                return job
            await asyncio.sleep(0.2)
            job = await app.store.get_job(job_id)


async def report(job: jobtrack.Job) -> None:
    """Print each stage's counts and the failed items."""
    print(f"job {job.id}: {job.status.value}")
    for name, stage in job.stages.items():
        print(
            f"{name}: {stage.total_items} items, {stage.completed_items} done,"
            f" {stage.failed_items} failed"
        )
    for failure in await app.store.list_failures(job.id, limit=1000):
        print(f"failed {failure.stage} {failure.key}: {failure.error}")


async def main(path: Path, output: Path, *, work: bool, concurrency: int) -> int:
    """Import ``path`` into ``output``; the exit status."""
    prepare(output)
    attributes = {"file": str(path), "output": str(output)}
    async with app:
        if not work and not app.shared_broker:
            raise SystemExit("--no-work needs a shared broker (JOBTRACK_BROKER_URL=amqp://…)")
        async with app.working(concurrency=concurrency) if work else nullcontext():
            async with app.start_job(imports, attributes=attributes) as producer:
                await producer.add("parse", rows(path))
            print(f"job {producer.job.id}: {producer.added} rows added", flush=True)
            job = await follow(producer.job.id, Console(stderr=True))
        await report(job)
    with sqlite3.connect(output) as db:
        (count,) = db.execute("SELECT count(*) FROM payments").fetchone()
    db.close()
    print(f"{count} rows in {output}")
    return 0 if job.status is jobtrack.JobStatus.COMPLETED else 1


def cli() -> None:
    """Parse the command line and run the import."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the CSV file (header: id,name,amount)")
    parser.add_argument("--output", type=Path, help="the SQLite file (default: FILE.db)")
    parser.add_argument(
        "--no-work", action="store_true", help="only produce and follow (a worker works)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="handler threads")
    args = parser.parse_args()
    path = args.file.resolve()
    output = (args.output or path.with_suffix(".db")).resolve()
    sys.exit(asyncio.run(main(path, output, work=not args.no_work, concurrency=args.concurrency)))


if __name__ == "__main__":
    cli()
