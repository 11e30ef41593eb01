"""How jobs look on the terminal and in JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from jobtrack.jobs.types import failure_json
from jobtrack.model import Job, JobEvent, Stage
from jobtrack.store.ledger import ItemFailure

__all__ = ["job_json", "jobs_table", "plural", "print_job"]


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def job_json(
    job: Job,
    failures: Sequence[ItemFailure] | None = None,
    events: Sequence[JobEvent] | None = None,
) -> dict[str, Any]:
    """The job as in the JSON contract, with its failed items (one entry per
    key: :func:`~jobtrack.jobs.types.failure_json`) and its events when known."""
    data = job.to_dict()
    if failures is not None:
        data["failures"] = failure_json(failures)
    if events is not None:
        data["events"] = [event.to_dict() for event in events]
    return data


def stage_cell(stage: Stage) -> str:
    """``48/50`` with failures spelled out: ``48/50 (2 failed)``."""
    cell = f"{stage.completed_items}/{stage.total_items}"
    if not stage.total_final:
        cell += "+"
    return f"{cell} ({stage.failed_items} failed)" if stage.failed_items else cell


def jobs_table(jobs: Sequence[Job]) -> Table:
    """One row per job: id, type, status, created, then a cell per stage."""
    names: list[str] = []
    for job in jobs:
        names.extend(name for name in job.stages if name not in names)
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("type", overflow="fold")
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("created", overflow="fold")
    for name in names:
        table.add_column(name, no_wrap=True)
    for job in jobs:
        cells = [stage_cell(job.stages[n]) if n in job.stages else "" for n in names]
        table.add_row(job.id, job.job_type, job.status.value, job.to_dict()["created_at"], *cells)
    return table


def stage_table(job: Job) -> Table:
    """The job's stages, one row each."""
    table = Table(box=None, pad_edge=False)
    for column in ("stage", "status", "completed", "failed", "total", "final"):
        table.add_column(column, no_wrap=True)
    table.add_column("message")
    for stage in job.stages.values():
        table.add_row(
            stage.name,
            stage.status.value,
            str(stage.completed_items),
            str(stage.failed_items),
            str(stage.total_items),
            "yes" if stage.total_final else "no",
            stage.message,
        )
    return table


def print_job(
    console: Console,
    job: Job,
    failures: Sequence[ItemFailure],
    *,
    details: Sequence[str] = (),
    events: Sequence[JobEvent] = (),
) -> None:
    """The job, its stages, what its type says more about it (``details``:
    :meth:`~jobtrack.jobs.types.JobType.details`), what failed (one line per
    key) and its events."""
    console.print(f"job {job.id} ({job.job_type}): [bold]{job.status.value}[/bold]")
    for line in details:
        console.print(line, markup=False)
    if job.message:
        console.print(f"  {job.message}", markup=False)
    console.print(stage_table(job))
    failed = failure_json(failures)
    if failed:
        console.print(f"[red]{plural(len(failed), 'item')} failed:[/red]")
        for entry in failed:
            stages = ", ".join(entry["stages"])
            console.print(f"  {entry['image']} ({stages}): {entry['error']}", markup=False)
    if events:
        console.print("events:")
        for event in events:
            at = event.at.strftime("%Y-%m-%d %H:%M:%S")
            console.print(f"  {at}  {event.kind:<11} {event.message}", markup=False)
