"""``jobtrack jobs``: list, show, watch, cancel and retry jobs."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

import click

from jobtrack.cli.options import (
    app_option,
    broker_option,
    data_dir_option,
    json_option,
    settings_from,
    signalled,
    stderr,
    stdout,
    stopped,
    store_option,
    with_app,
)
from jobtrack.cli.progress import JobProgress
from jobtrack.cli.views import job_json, jobs_table, print_job
from jobtrack.errors import StoreMissing
from jobtrack.jobs.types import item_failures_of, search_fields
from jobtrack.model import Job, JobEvent, JobStatus
from jobtrack.runtime import App
from jobtrack.runtime.cancel import CancelOutcome, cancel_job
from jobtrack.store import JobQuery
from jobtrack.store.ledger import ItemFailure

__all__ = ["jobs"]


@click.group()
def jobs() -> None:
    """List, show, watch, cancel and retry jobs."""


#: Failed items (item and stage) ``jobs show`` reads, at most.
MAX_FAILURES = 10_000
#: The longest search term ``jobs list --search`` takes.
MAX_SEARCH = 200
#: Exit status of ``jobs watch`` when Ctrl-C stops the watching (the job goes on).
EXIT_INTERRUPTED = 130


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), help="Only this status.")
@click.option("--type", "job_type", help="Only this job type.")
@click.option(
    "--search",
    help="Only jobs whose id starts with this, or with it in a field their type declares"
    " searchable (a collection scan's path), case-insensitively.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@app_option
@data_dir_option
@store_option
def list_jobs(
    status: str | None,
    job_type: str | None,
    search: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
) -> None:
    """List jobs, newest first."""
    settings = settings_from(data_dir=data_dir, store_url=store_url)
    if search is not None and not 0 < len(search) <= MAX_SEARCH:
        raise click.BadParameter(f"takes 1 to {MAX_SEARCH} characters", param_hint="--search")
    query = JobQuery(
        status=None if status is None else JobStatus(status),
        job_type=job_type,
        limit=limit,
        offset=offset,
        search=search,
    )

    def listed(app: App) -> Awaitable[list[Job]]:
        fields = search_fields(app.job_types.values()) if search else ()
        return app.store.list_jobs(replace(query, search_fields=fields))

    def no_store(exc: StoreMissing) -> list[Job]:
        stderr.print(f"{exc}: nothing has been stored there yet")
        return []

    found = with_app(settings, listed, app_spec=app_spec, on_missing=no_store)
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    stdout.print(jobs_table(found) if found else "no jobs")


@jobs.command("show")
@click.argument("job_id")
@json_option
@app_option
@data_dir_option
@store_option
def show_job(
    job_id: str, as_json: bool, app_spec: str | None, data_dir: Path | None, store_url: str | None
) -> None:
    """Show one job: its stages, what its type says of it (where a scan's
    renditions are), what failed, and its history (reconciliations,
    re-drives, failures)."""
    settings = settings_from(data_dir=data_dir, store_url=store_url)

    async def show(app: App) -> tuple[Job, list[ItemFailure], list[str], list[JobEvent]]:
        job = await app.store.get_job(job_id)
        failures = await item_failures_of(app, job, limit=MAX_FAILURES)
        known = app.job_types.get(job.job_type)
        details = [] if known is None else known.details(app, job)
        return job, failures, details, await app.store.list_events(job_id)

    job, failures, details, events = with_app(settings, show, app_spec=app_spec)
    if as_json:
        click.echo(json.dumps(job_json(job, failures, events), indent=2))
        return
    print_job(stdout, job, failures, details=details, events=events)


@jobs.command("watch")
@click.argument("job_id")
@click.option(
    "--interval",
    type=click.FloatRange(0.01, 60),
    default=0.25,
    show_default=True,
    help="Seconds between reads of the job.",
)
@json_option
@app_option
@data_dir_option
@store_option
def watch_job(
    job_id: str,
    interval: float,
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
) -> None:
    """Follow a job until it ends, one live bar per stage (on stderr).

    Exits 0 when the job completed, 1 when it failed or was cancelled, 130
    when interrupted (Ctrl-C stops the watching only: the job goes on).
    --json prints the job as it ended, without bars.
    """
    settings = settings_from(data_dir=data_dir, store_url=store_url)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        job = with_app(
            settings,
            lambda app: _follow(app, job_id, interval=interval, live=not as_json),
            app_spec=app_spec,
        )
    except KeyboardInterrupt:
        job = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if job is None:  # interrupted: the watching stops, the job goes on
        stderr.print(f"stopped watching job {job_id}; it goes on (jobtrack jobs show {job_id})")
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        click.echo(json.dumps(job_json(job), indent=2))
    else:
        message = f": {job.message}" if job.message else ""
        stdout.print(f"job {job.id} ({job.job_type}): {job.status.value}{message}", markup=False)
    sys.exit(0 if job.status is JobStatus.COMPLETED else 1)


async def _follow(app: App, job_id: str, *, interval: float, live: bool) -> Job | None:
    """Read the job every ``interval`` seconds until it has ended (the job),
    or until SIGINT or SIGTERM (None, see :func:`~jobtrack.cli.options.signalled`);
    with ``live``, draw its stages' bars as it goes."""
    async with signalled() as stop:
        job = await app.store.get_job(job_id)
        stderr.print(f"watching job {job.id} ({job.job_type}): {job.status.value}", markup=False)
        with JobProgress(stderr) if live else contextlib.nullcontext() as progress:
            if progress is not None:
                progress.update(job)
            while not job.status.terminal:
                if await stopped(stop, interval):
                    return None
                job = await app.store.get_job(job_id)
                if progress is not None:
                    progress.update(job)
        return job


#: ``jobtrack jobs cancel`` exit status per outcome (1 stays an error: no such job, no store).
CANCEL_EXIT = {CancelOutcome.CANCELLED: 0, CancelOutcome.ENDED: 3}


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--message", default="cancelled by the user", show_default=True)
@json_option
@app_option
@data_dir_option
@store_option
def cancel_job_command(
    job_id: str,
    message: str,
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
) -> None:
    """Cancel a job that has not ended; its scan stops walking within a second.

    Says what really happened, with the exit status: 0 cancelled (recorded
    as a "cancelled" event), however busy the job is; 3 it had already ended
    (completed, failed or cancelled), and is left as it was. --json prints
    the same answer as the HTTP API.
    """
    settings = settings_from(data_dir=data_dir, store_url=store_url)
    result = with_app(
        settings,
        lambda app: cancel_job(app.store, job_id, message=message, source="cli"),
        app_spec=app_spec,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        stdout.print(result.describe())
    raise SystemExit(CANCEL_EXIT[result.outcome])


@jobs.command("retry")
@click.argument("job_id")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Handler threads, when the new job is worked here (in-process broker).",
)
@json_option
@app_option
@data_dir_option
@store_option
@broker_option
def retry_job_command(
    job_id: str,
    concurrency: int,
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
) -> None:
    """Do the failed items of an ended job again, as its type retries: a
    collection scan by scanning its collection again; a job of any other
    type of the app (--app) by a new job of its failed items. Prints the
    new job's id.

    With a shared broker (amqp://) the workers do the new job; with the
    in-process broker this command works it itself, with its bars, until
    it ends. Exits 0 when the retry started (and, worked here, completed),
    1 otherwise. --json prints the same answer as the HTTP API.
    """
    settings = settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url)

    async def retry(app: App) -> tuple[Job, int, Job | None]:
        job = await app.store.get_job(job_id)
        job_type = app.job_types.get(job.job_type)
        here = (
            not app.shared_broker
            and job_type is not None
            and job_type.retry is None
            and bool(job_type.handlers)
        )
        if not here:
            again, failed = await app.retry(job_id)
            return again, failed, None
        async with app.working(concurrency=concurrency):
            again, failed = await app.retry(job_id)
            stderr.print(f"job {job_id}: {failed} failed items retried as job {again.id}")
            ended = await _follow(app, again.id, interval=0.25, live=not as_json)
        return again, failed, ended

    again, failed, ended = with_app(settings, retry, app_spec=app_spec)
    if as_json:
        shown = again if ended is None else ended
        answer = {"retried_from": job_id, "failed_items": failed, "job": job_json(shown)}
        click.echo(json.dumps(answer, indent=2))
    elif ended is None:
        stdout.print(f"job {job_id}: {failed} failed items retried as job {again.id}")
    else:
        message = f": {ended.message}" if ended.message else ""
        stdout.print(
            f"job {ended.id} ({ended.job_type}): {ended.status.value}{message}", markup=False
        )
    sys.exit(0 if ended is None or ended.status is JobStatus.COMPLETED else 1)
