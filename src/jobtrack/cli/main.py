"""The ``jobtrack`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from jobtrack.cli.progress import JobProgress
from jobtrack.errors import InvalidRequest, JobtrackError, PathRefused
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import ArtifactStatus
from jobtrack.pipeline.sample import generate_sample
from jobtrack.runtime import EmbeddedRuntime, ScanOutcome, Settings
from jobtrack.store import JobQuery, JobStore, open_store

__all__ = ["cli", "main"]

T = TypeVar("T")

_stderr = Console(stderr=True)
_stdout = Console(highlight=False)

_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="JOBTRACK_DATA_DIR",
    show_envvar=True,
    help="Where the database and renditions live [default: ~/.local/share/jobtrack].",
)
_store_option = click.option(
    "--store",
    "store_url",
    envvar="JOBTRACK_STORE_URL",
    show_envvar=True,
    help="Store URL: sqlite:///path or memory:// [default: sqlite:///DATA_DIR/jobtrack.db].",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="jobtrack")
def cli(verbose: int) -> None:
    """Track multi-stage background jobs; scan image collections."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=_stderr, show_path=False, rich_tracebacks=False)],
    )


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@_json_option
@_data_dir_option
@_store_option
@click.option(
    "--broker",
    "broker_url",
    envvar="JOBTRACK_BROKER_URL",
    show_envvar=True,
    help="Broker URL [default: memory://].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    envvar="JOBTRACK_WORKERS",
    show_envvar=True,
    help="Image worker processes [default: one per core].",
)
def scan(
    path: Path,
    as_json: bool,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
    workers: int | None,
) -> None:
    """Scan the image collection at PATH: thumbnails and cache copies, live.

    Exits 0 when the job completed (failed items are reported, not fatal),
    1 when it failed or was cancelled, 2 when PATH cannot be used.
    """
    settings = _settings(
        data_dir=data_dir, store_url=store_url, broker_url=broker_url, workers=workers
    )
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = asyncio.run(_scan(settings, path, live=not as_json))
    except PathRefused as exc:
        raise click.UsageError(str(exc)) from None
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        _stderr.print("interrupted: the scan's job was cancelled; run the scan again to resume")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(json.dumps(outcome.job.to_dict(), indent=2))
    sys.exit(0 if outcome.job.status is JobStatus.COMPLETED else 1)


def _settings(**flags: Any) -> Settings:
    try:
        return Settings.from_env(**flags)
    except InvalidRequest as exc:
        raise click.UsageError(str(exc)) from None


async def _scan(settings: Settings, path: Path, *, live: bool) -> ScanOutcome:
    async with EmbeddedRuntime(settings) as runtime:
        if live:
            with JobProgress(_stderr) as progress:
                outcome = await runtime.scan(path, on_progress=progress.update)
        else:
            outcome = await runtime.scan(path)
        if live:
            await _print_summary(runtime, outcome)
        return outcome


async def _print_summary(runtime: EmbeddedRuntime, outcome: ScanOutcome) -> None:
    job = outcome.job
    collection = job.attributes["collection"]
    verb = "started" if outcome.created else "was already running; followed"
    _stdout.print(f"job {job.id} {verb}: [bold]{job.status.value}[/bold]")
    if job.message:
        _stdout.print(f"  {job.message}")
    _stdout.print(_stage_table(job))
    for spec in runtime.renditions:
        _stdout.print(
            f"{spec.stage:>10}s: {runtime.output_dir(collection['id'], spec)}", soft_wrap=True
        )
    failures = await _failures(runtime, job)
    if failures:
        _stdout.print(f"[red]{len(failures)} images failed:[/red]")
        for line in failures:
            _stdout.print(f"  {line}", markup=False, soft_wrap=True)


async def _failures(runtime: EmbeddedRuntime, job: Job) -> list[str]:
    """One line per failed image: the stages it failed in, and the first error."""
    states = await runtime.catalog.images_of_job(job.attributes["collection"]["id"], job.id)
    lines = []
    for state in states:
        failed = [a for a in state.artifacts.values() if a.status is ArtifactStatus.FAILED]
        if failed:
            kinds = ", ".join(sorted(a.kind for a in failed))
            lines.append(f"{state.image.relpath} ({kinds}): {failed[0].error}")
    return lines


def _stage_table(job: Job) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("stage", "status", "completed", "failed", "total", "final", "message"):
        table.add_column(column)
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


@cli.group()
def jobs() -> None:
    """List and inspect jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), help="Only this status.")
@click.option("--type", "job_type", help="Only this job type.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@_json_option
@_data_dir_option
@_store_option
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
    settings = _settings(data_dir=data_dir, store_url=store_url)
    query = JobQuery(
        status=None if status is None else JobStatus(status),
        job_type=job_type,
        limit=limit,
        offset=offset,
    )
    found = _with_store(settings, lambda store: store.list_jobs(query))
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "type", "status", "created", *_stage_names(found)):
        table.add_column(column)
    for job in found:
        cells = [f"{s.done_items}/{s.total_items}" for s in job.stages.values()]
        table.add_row(job.id, job.job_type, job.status.value, job.to_dict()["created_at"], *cells)
    _stdout.print(table if found else "no jobs")


def _stage_names(found: list[Job]) -> list[str]:
    names: list[str] = []
    for job in found:
        names.extend(name for name in job.stages if name not in names)
    return names


@jobs.command("show")
@click.argument("job_id")
@_json_option
@_data_dir_option
@_store_option
def show_job(job_id: str, as_json: bool, data_dir: Path | None, store_url: str | None) -> None:
    """Show one job and its stages."""
    settings = _settings(data_dir=data_dir, store_url=store_url)
    job = _with_store(settings, lambda store: store.get_job(job_id))
    if as_json:
        click.echo(json.dumps(job.to_dict(), indent=2))
        return
    _stdout.print(f"job {job.id} ({job.job_type}): [bold]{job.status.value}[/bold]")
    for key, value in job.attributes.items():
        _stdout.print(f"  {key}: {value}", markup=False)
    if job.message:
        _stdout.print(f"  {job.message}", markup=False)
    _stdout.print(_stage_table(job))


def _with_store(settings: Settings, action: Callable[[JobStore], Awaitable[T]]) -> T:
    """Run ``action`` on the settings' store; jobtrack errors become clean CLI errors."""

    async def run() -> T:
        store = open_store(settings.store_url)
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--message", default="cancelled by the user", show_default=True)
@_json_option
@_data_dir_option
@_store_option
def cancel_job(
    job_id: str, message: str, as_json: bool, data_dir: Path | None, store_url: str | None
) -> None:
    """Cancel a job that has not ended; a job already ended is left as it is."""
    settings = _settings(data_dir=data_dir, store_url=store_url)

    async def cancel(store: JobStore) -> Job:
        return await store.end_job(job_id, JobStatus.CANCELLED, message=message)

    job = _with_store(settings, cancel)
    if as_json:
        click.echo(json.dumps(job.to_dict(), indent=2))
    elif job.status is JobStatus.CANCELLED and job.message == message:
        _stdout.print(f"job {job.id} cancelled")
    else:
        _stdout.print(f"job {job.id} had already ended: {job.status.value}")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Files to write, the broken ones included.",
)
@click.option(
    "--broken",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="How many of them are broken image files.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option("--max-megapixels", type=click.FloatRange(0.1, 50), default=12.0, show_default=True)
def sample(directory: Path, count: int, broken: int, seed: int, max_megapixels: float) -> None:
    """Write a sample collection of photo-like images to DIRECTORY."""
    if broken > count:
        raise click.BadParameter("cannot exceed --count", param_hint="--broken")
    manifest = generate_sample(
        directory, count=count, seed=seed, broken=broken, max_megapixels=max_megapixels
    )
    click.echo(
        f"wrote {len(manifest.images)} images, {len(manifest.broken)} broken files and "
        f"{len(manifest.others)} other files to {manifest.root}"
    )


def main() -> None:
    """Entry point of the ``jobtrack`` script."""
    cli(prog_name="jobtrack")
