"""``jobtrack jobs``: list, show and cancel jobs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from jobtrack.cli.options import (
    data_dir_option,
    json_option,
    settings_from,
    stderr,
    stdout,
    store_option,
    with_app,
)
from jobtrack.cli.views import job_json, jobs_table, print_job
from jobtrack.errors import StoreMissing
from jobtrack.model import Job, JobEvent, JobStatus
from jobtrack.pipeline.failures import ItemFailure, job_failures
from jobtrack.runtime import App
from jobtrack.runtime.cancel import CancelOutcome, cancel_job
from jobtrack.store import JobQuery

__all__ = ["jobs"]


@click.group()
def jobs() -> None:
    """List, show and cancel jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), help="Only this status.")
@click.option("--type", "job_type", help="Only this job type.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@data_dir_option
@store_option
def list_jobs(
    status: str | None,
    job_type: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    data_dir: Path | None,
    store_url: str | None,
) -> None:
    """List jobs, newest first."""
    settings = settings_from(data_dir=data_dir, store_url=store_url)
    query = JobQuery(
        status=None if status is None else JobStatus(status),
        job_type=job_type,
        limit=limit,
        offset=offset,
    )

    def no_store(exc: StoreMissing) -> list[Job]:
        stderr.print(f"{exc}: nothing has been stored there yet")
        return []

    found = with_app(settings, lambda app: app.store.list_jobs(query), on_missing=no_store)
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    stdout.print(jobs_table(found) if found else "no jobs")


@jobs.command("show")
@click.argument("job_id")
@json_option
@data_dir_option
@store_option
def show_job(job_id: str, as_json: bool, data_dir: Path | None, store_url: str | None) -> None:
    """Show one job: its stages, where its renditions are, what failed, and
    its history (reconciliations, re-drives, failures)."""
    settings = settings_from(data_dir=data_dir, store_url=store_url)

    async def show(app: App) -> tuple[Job, list[ItemFailure], list[JobEvent]]:
        job = await app.store.get_job(job_id)
        failures = await job_failures(app.catalog, job)
        return job, failures, await app.store.list_events(job_id)

    job, failures, events = with_app(settings, show)
    if as_json:
        click.echo(json.dumps(job_json(job, failures, events), indent=2))
        return
    print_job(stdout, job, failures, data_dir=settings.data_dir, events=events)


#: ``jobtrack jobs cancel`` exit status per outcome (1 stays an error: no such job, no store).
CANCEL_EXIT = {CancelOutcome.CANCELLED: 0, CancelOutcome.ENDED: 3}


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--message", default="cancelled by the user", show_default=True)
@json_option
@data_dir_option
@store_option
def cancel_job_command(
    job_id: str, message: str, as_json: bool, data_dir: Path | None, store_url: str | None
) -> None:
    """Cancel a job that has not ended; its scan stops walking within a second.

    Says what really happened, with the exit status: 0 cancelled (recorded
    as a "cancelled" event), however busy the job is; 3 it had already ended
    (completed, failed or cancelled), and is left as it was. --json prints
    the same answer as the HTTP API.
    """
    settings = settings_from(data_dir=data_dir, store_url=store_url)
    result = with_app(
        settings, lambda app: cancel_job(app.store, job_id, message=message, source="cli")
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        stdout.print(result.describe())
    raise SystemExit(CANCEL_EXIT[result.outcome])
