"""``jobtrack worker``: consume stage queues from a shared broker."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from jobtrack.cli.options import (
    broker_option,
    data_dir_option,
    preflight,
    settings_for,
    settings_from,
    store_option,
    usage_error,
)
from jobtrack.errors import ConfigurationError, InvalidRequest, JobtrackError
from jobtrack.runtime import Settings, Worker
from jobtrack.runtime.loading import APP_ENV, load_app

__all__ = ["worker"]


@click.command()
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:ATTR",
    envvar=APP_ENV,
    show_envvar=True,
    help="The app whose job types to work on, as module:attribute [default: the built-in"
    " collection scan].",
)
@data_dir_option
@store_option
@broker_option
@click.option(
    "--stage",
    "stages",
    multiple=True,
    metavar="STAGE",
    help="A stage to work on: thumbnail or cache, TYPE.STAGE, or a job type's STAGE when no"
    " other type has one of that name; repeat for several [default: all].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    envvar="JOBTRACK_WORKERS",
    show_envvar=True,
    help="Items worked on at once: images rendered in as many processes, a job type's"
    " handlers in as many threads or processes [default: one per core].",
)
@click.option(
    "--prefetch",
    type=click.IntRange(1, 10_000),
    help="Messages per stage held before acking [default: twice --concurrency].",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="Seconds the messages in flight get to finish on SIGTERM before going back to the queue.",
)
@click.option(
    "--progress/--no-progress",
    "consumer_progress",
    default=None,
    help="Report each item to the store (the default), or not: then the monitor's"
    " reconciliation alone keeps the counts [env JOBTRACK_CONSUMER_PROGRESS].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this worker's progress-write metrics (Prometheus) on 127.0.0.1:PORT/metrics.",
)
def worker(
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
    stages: tuple[str, ...],
    concurrency: int | None,
    prefetch: int | None,
    shutdown_grace: float,
    consumer_progress: bool | None,
    metrics_port: int | None,
) -> None:
    """Work on the jobs of every machine: consume the stage queues of a
    shared broker (--broker amqp://…) and count into a shared store
    (--store postgresql://…). With --app, the handlers of the app's job
    types; without it, the built-in app's renditions.

    Messages are acked once their item's progress is durable. SIGTERM or
    Ctrl-C stops taking messages, lets those in flight finish (or hands them
    back to the broker after --shutdown-grace) and exits 0.

    The worker writes a heartbeat to the store every
    JOBTRACK_HEARTBEAT_INTERVAL seconds (default 5), which the dashboard's
    Workers view and GET /api/workers show; a last one marks a graceful stop.
    """
    settings = settings_from(
        data_dir=data_dir,
        store_url=store_url,
        broker_url=broker_url,
        workers=concurrency,
        consumer_progress=consumer_progress,
    )
    try:
        user_app = load_app(app_spec, {})
    except ConfigurationError as exc:
        raise usage_error(exc) from None
    if user_app is not None:
        settings = settings_for(user_app, settings)
    preflight(settings)
    if metrics_port is not None:
        try:
            from jobtrack.api.metrics import serve_write_metrics  # noqa: PLC0415 (optional)
        except ImportError as exc:
            raise click.ClickException(
                f"--metrics-port needs the api extra (pip install 'jobtrack[api]'): {exc}"
            ) from None
        try:
            serve_write_metrics(metrics_port)
        except OSError as exc:
            raise click.UsageError(f"--metrics-port {metrics_port}: {exc}") from None
    try:
        runner = Worker(
            None if user_app is not None else settings,
            app=None if user_app is None else user_app.with_settings(settings, flush_wait=10.0),
            stages=stages,
            concurrency=settings.workers,
            prefetch=prefetch,
            shutdown_grace=shutdown_grace,
        )
        asyncio.run(_run(runner, settings))
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None


async def _run(runner: Worker, settings: Settings) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def announce() -> None:
        await ready.wait()
        click.echo(
            f"worker ready: {', '.join(runner.queues)}"
            f" (concurrency {runner.concurrency}, prefetch {runner.prefetch},"
            f" progress {'on' if settings.consumer_progress else 'off'})",
            err=True,
        )
        await stop.wait()
        click.echo("worker stopping: finishing the messages in flight", err=True)

    announcer = asyncio.create_task(announce())
    try:
        await runner.run(stop, ready=ready)
    finally:
        announcer.cancel()
    click.echo("worker stopped", err=True)
