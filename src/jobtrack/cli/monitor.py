"""``jobtrack monitor``: the fallback monitor, on its own."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import click

from jobtrack.cli.options import (
    app_for,
    app_option,
    broker_option,
    data_dir_option,
    json_option,
    preflight,
    settings_from,
    store_option,
    usage_error,
)
from jobtrack.errors import InvalidRequest, JobtrackError
from jobtrack.monitor import CycleReport
from jobtrack.runtime import App

__all__ = ["monitor"]


@click.command()
@app_option
@data_dir_option
@store_option
@broker_option
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "centralized"]),
    default="hybrid",
    show_default=True,
    help="hybrid: handle stuck jobs only; centralized: recount every active job each"
    " cycle, as the old polling service did (the rollback plan).",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.01, 86_400),
    help="Seconds between cycles [default: 60, or 5 in centralized mode].",
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(0.001, 86_400 * 30),
    help="Seconds without an update before a job is stuck [default: JOBTRACK_STUCK_AFTER or 300].",
)
@click.option(
    "--max-redrives",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="Times a missing item is published again, at most, before its job is failed.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Stuck jobs handled at once, at most (a cycle over thousands of stuck jobs"
    " goes faster with a few; the store's pool holds 8 connections).",
)
@click.option("--once", is_flag=True, help="Run one cycle, print what it did, and exit.")
@json_option
def monitor(
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
    mode: str,
    interval: float | None,
    stuck_after: float | None,
    max_redrives: int,
    concurrency: int,
    once: bool,
    as_json: bool,
) -> None:
    """Find stuck jobs, reconcile them against what was really produced,
    publish missing items again and fail what cannot finish.

    A job is stuck when it is pending or in progress and nothing has written
    to it for --stuck-after seconds. Its counts are set to the truth (the
    change is recorded as an event: jobtrack jobs show ID); if items are
    still missing they are published again (needs the workers' broker), at
    most --max-redrives times each; a job with items still missing after
    that is failed with the reason. A job whose missing items wait behind a
    backlog that is being consumed is left alone (a "waiting" event at most
    once an hour); a backlog that has neither shrunk nor had items counted
    for --stuck-after no longer holds it. Several monitors may run at once:
    each stuck job is handled by one of them. Every job type of the app
    (--app) is monitored.
    """
    settings = settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url)
    app = app_for(app_spec, settings)
    preflight(settings)
    try:
        asyncio.run(
            _run(
                app,
                mode=mode,
                interval=interval or (5.0 if mode == "centralized" else 60.0),
                stuck_after=stuck_after or settings.stuck_after,
                max_redrives=max_redrives,
                concurrency=concurrency,
                once=once,
                as_json=as_json,
            )
        )
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None


async def _run(
    app: App,
    *,
    mode: str,
    interval: float,
    stuck_after: float,
    max_redrives: int,
    concurrency: int,
    once: bool,
    as_json: bool,
) -> None:
    async with app:
        watcher = app.monitor(
            stuck_after=stuck_after, max_redrives=max_redrives, mode=mode, concurrency=concurrency
        )
        if not app.shared_broker and mode == "hybrid":
            click.echo(
                "no shared broker (--broker amqp://…): missing items cannot be published"
                " again, so jobs that miss items are failed",
                err=True,
            )
        if once:
            _print(await watcher.cycle(), as_json=as_json)
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        click.echo(
            f"monitor ({mode}): a cycle every {interval:g} s"
            + (f"; stuck after {stuck_after:g} s" if mode == "hybrid" else ""),
            err=True,
        )
        await watcher.run(stop, interval=interval)


def _print(report: CycleReport, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    done = {
        k: v for k, v in report.to_dict().items() if v and k not in ("jobs", "queries", "stuck")
    }
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in done.items())
    click.echo(f"{report.stuck} jobs looked at" + (f": {summary}" if report.stuck else ""))
