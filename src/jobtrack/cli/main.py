"""The ``jobtrack`` command line: ``scan``, ``worker``, ``monitor``, ``jobs``, ``serve``,
``queues``, ``dead``, ``top``, ``workers``, ``sample``."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click
from rich.logging import RichHandler

from jobtrack.cli.jobs import jobs
from jobtrack.cli.monitor import monitor
from jobtrack.cli.options import (
    broker_option,
    data_dir_option,
    json_option,
    settings_from,
    stderr,
    stdout,
    store_option,
    usage_error,
)
from jobtrack.cli.progress import JobProgress
from jobtrack.cli.queues import dead, queues
from jobtrack.cli.serve import serve
from jobtrack.cli.top import top, workers
from jobtrack.cli.views import job_json, plural, print_job
from jobtrack.cli.worker import worker
from jobtrack.errors import InvalidRequest, JobtrackError
from jobtrack.model import Job, JobEvent, JobStatus
from jobtrack.runtime import EmbeddedRuntime, ScanOutcome, Settings
from jobtrack.runtime.builtin import collection_scan_type
from jobtrack.store.ledger import ItemFailure

__all__ = ["cli", "main"]

EXIT_INTERRUPTED = 130
#: Failed items (image and stage) a scan's summary reads, at most.
MAX_FAILURES = 10_000


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="jobtrack")
def cli(verbose: int) -> None:
    """Track multi-stage background jobs; scan image collections.

    Settings come from flags, then JOBTRACK_* environment variables, the same
    for every command: JOBTRACK_DATA_DIR, JOBTRACK_STORE_URL,
    JOBTRACK_BROKER_URL, JOBTRACK_WORKERS, JOBTRACK_STUCK_AFTER (seconds
    without progress before a scan's job counts as abandoned, default 300) and
    JOBTRACK_CONSUMER_PROGRESS=on|off (off: consumers report nothing and the
    counts come from reconciliation against the catalog). monitor, serve,
    jobs, queues, dead, top and workers take --app MODULE:ATTR (or
    JOBTRACK_APP): your app, whose job types they know (the built-in
    collection scan's by default).
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=False, rich_tracebacks=False)],
    )


cli.add_command(jobs)
cli.add_command(worker)
cli.add_command(monitor)
cli.add_command(serve)
cli.add_command(queues)
cli.add_command(dead)
cli.add_command(top)
cli.add_command(workers)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@json_option
@data_dir_option
@store_option
@broker_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    envvar="JOBTRACK_WORKERS",
    show_envvar=True,
    help="Image worker processes, with the in-process broker [default: one per core].",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Only walk and publish the work (a shared broker's workers do it), print the job"
    " id (the job with --json) and exit.",
)
def scan(
    path: Path,
    as_json: bool,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
    workers: int | None,
    no_wait: bool,
) -> None:
    """Scan the image collection at PATH: thumbnails and cache copies, live.

    With the in-process broker (the default) the work is done here; with
    --broker amqp://… (and a shared --store) `jobtrack worker` processes do
    it and the scan follows the job. A rescan does only what is missing or
    changed. Exits 0 when the job completed (failed items are listed, not
    fatal), 1 when it failed, 2 when PATH or a setting cannot be used, 130
    when interrupted (a job whose work was not all published is cancelled;
    scan again to resume).
    """
    settings = settings_from(
        data_dir=data_dir, store_url=store_url, broker_url=broker_url, workers=workers
    )
    if no_wait:
        _enqueue(settings, path, as_json=as_json)
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    seen: dict[str, EmbeddedRuntime] = {}
    try:
        outcome, failures, details, events = asyncio.run(
            _scan(settings, path, live=not as_json, seen=seen)
        )
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        runtime = seen.get("runtime")
        if runtime is None or runtime.cancelled or runtime.current_job_id is None:
            stderr.print("interrupted: the scan's job was cancelled; scan again to resume")
        else:
            stderr.print(
                f"stopped following job {runtime.current_job_id}; its workers go on"
                f" (jobtrack jobs show {runtime.current_job_id})"
            )
        sys.exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(json.dumps(job_json(outcome.job, failures, events), indent=2))
    else:
        if not outcome.created:
            stdout.print("(this job was started by another scan of the same collection)")
        print_job(stdout, outcome.job, failures, details=details, events=events)
    sys.exit(0 if outcome.job.status is JobStatus.COMPLETED else 1)


def _enqueue(settings: Settings, path: Path, *, as_json: bool) -> None:
    async def run() -> tuple[Job, bool]:
        async with EmbeddedRuntime(settings) as runtime:
            return await runtime.enqueue(path)

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        job, created = asyncio.run(run())
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        stderr.print("interrupted: the job was cancelled before all its work was published")
        sys.exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(json.dumps(job_json(job, None), indent=2))
    else:
        click.echo(job.id)
        if not created:
            stderr.print(f"the collection's job {job.id} is running already; nothing new queued")


async def _scan(
    settings: Settings, path: Path, *, live: bool, seen: dict[str, EmbeddedRuntime]
) -> tuple[ScanOutcome, list[ItemFailure], list[str], list[JobEvent]]:
    async with EmbeddedRuntime(settings) as runtime:
        seen["runtime"] = runtime
        if live:
            with JobProgress(stderr) as progress:
                outcome = await runtime.scan(path, on_progress=progress.update)
        else:
            outcome = await runtime.scan(path)
        scans = collection_scan_type()
        failures = await scans.item_failures(runtime.app, outcome.job, MAX_FAILURES)
        details = scans.details(runtime.app, outcome.job)
        return outcome, failures, details, await runtime.store.list_events(outcome.job.id)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Image files to write, the broken ones included.",
)
@click.option(
    "--broken",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="How many of them are broken image files.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option(
    "--max-megapixels",
    type=click.FloatRange(0.1, 50),
    default=12.0,
    show_default=True,
    help="Size of the largest images.",
)
def sample(directory: Path, count: int, broken: int, seed: int, max_megapixels: float) -> None:
    """Write a sample collection of photo-like images to DIRECTORY (new or empty)."""
    # Imported here: the built-in app's, and it needs Pillow, which the core installs without.
    try:
        from jobtrack.pipeline.sample import generate_sample  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise click.ClickException(str(exc)) from None

    if broken > count:
        raise click.BadParameter("cannot exceed --count", param_hint="--broken")
    if directory.exists() and any(directory.iterdir()):
        raise click.UsageError(f"{directory} is not empty; give a new or empty folder")
    try:
        manifest = generate_sample(
            directory, count=count, seed=seed, broken=broken, max_megapixels=max_megapixels
        )
    except OSError as exc:
        raise click.ClickException(f"cannot write to {directory}: {exc.strerror}") from None
    click.echo(
        f"wrote {plural(len(manifest.images), 'image')}, "
        f"{plural(len(manifest.broken), 'broken file')} and "
        f"{plural(len(manifest.others), 'other file')} to {manifest.root}"
    )


def main() -> None:
    """Entry point of the ``jobtrack`` script."""
    cli(prog_name="jobtrack")
