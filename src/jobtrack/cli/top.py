"""``jobtrack top`` and ``jobtrack workers``: the operator's first screen
in a terminal.

:func:`top_snapshot` reads everything one frame shows, with the reads the
HTTP API's overview, workers, throughput and queues routes use (the store's
``throughput``, ``list_workers``, ``count_by_type`` and ``list_watched``;
:func:`jobtrack.runtime.queues.queue_rows`), into a :class:`TopSnapshot`;
:func:`render_top` draws one, with no input or output of its own, and
:meth:`TopSnapshot.to_dict` is the same data as JSON, built by the API's
own JSON functions. A store or broker that does not answer is said on the
frame (:attr:`TopSnapshot.store_error`, :attr:`TopSnapshot.broker_error`),
and the next frame tries again.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobtrack.api.overview import overview_json, reason_of, watched_json
from jobtrack.api.workers import throughput_json, throughput_since, workers_json
from jobtrack.cli.options import (
    app_option,
    broker_option,
    data_dir_option,
    json_option,
    settings_from,
    signalled,
    stdout,
    stopped,
    store_option,
    with_app,
)
from jobtrack.cli.queues import queues_table
from jobtrack.errors import BrokerError, StoreError
from jobtrack.model import utc_now
from jobtrack.runtime import App
from jobtrack.runtime.queues import QueueRow, queue_rows
from jobtrack.store import TypeCounts, Watched, WatchQuery, WorkerInfo, WorkerState

__all__ = [
    "MEMORY_BROKER_NOTE",
    "WATCHED_SHOWN",
    "WORKERS_SHOWN",
    "StageRate",
    "TopSnapshot",
    "render_top",
    "top",
    "top_snapshot",
    "workers",
    "workers_table",
]

#: The stuck and waiting jobs a frame lists, at most (the counts hold them all).
WATCHED_SHOWN = 5
#: The workers a frame lists, at most (live first; the title counts them all).
WORKERS_SHOWN = 10
#: What a frame says instead of the queues when the broker is in process.
MEMORY_BROKER_NOTE = (
    "no queues: the broker is memory://, whose queues live inside the process running them"
    " (name the shared broker with --broker amqp://…)"
)
#: Seconds a frame's reads of the store, or of the broker, may take at least.
MIN_READ_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class StageRate:
    """Items of a job type's stage done and failed over the last minute and
    the last hour, summed over the workers."""

    job_type: str
    stage: str
    done: int
    failed: int
    hour_done: int = 0
    hour_failed: int = 0

    @property
    def per_second(self) -> float:
        """Items (done and failed) per second over the last minute."""
        return (self.done + self.failed) / 60


@dataclass(frozen=True, slots=True)
class TopSnapshot:
    """One frame of ``jobtrack top``: what the store and broker said at ``at``.

    The store's parts are empty and ``store_error`` says why when the store
    did not answer; ``queues`` is None when the broker is in process
    (``queues_note`` says so) or did not answer (``broker_error``).
    """

    at: datetime
    stuck_after: float
    heartbeat_interval: float
    rates: list[StageRate] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    counts: list[TypeCounts] = field(default_factory=list)
    watched: list[Watched] = field(default_factory=list)
    queues: list[QueueRow] | None = None
    queues_note: str | None = None
    store_error: str | None = None
    broker_error: str | None = None
    #: The raw throughput JSON (``GET /api/throughput?minutes=1``'s), for :meth:`to_dict`.
    throughput: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the store, and the broker when shared, answered."""
        return self.store_error is None and self.broker_error is None

    def to_dict(self) -> dict[str, Any]:
        """As JSON: the same objects as ``GET /api/throughput?minutes=1``
        (``throughput``), ``/api/workers`` (``workers``), ``/api/overview``
        (``overview``), the first jobs of ``/api/watch`` (``watched``) and
        ``/api/queues``' entries (``queues``, null without a shared broker),
        each null when its store or broker did not answer, and the errors."""
        store_ok = self.store_error is None
        return {
            "at": _iso(self.at),
            "throughput": self.throughput if store_ok else None,
            "workers": workers_json(self.workers, self.heartbeat_interval) if store_ok else None,
            "overview": overview_json(self.counts, self.stuck_after) if store_ok else None,
            "watched": (
                [watched_json(w, now=self.at, stuck_after=self.stuck_after) for w in self.watched]
                if store_ok
                else None
            ),
            "queues": None if self.queues is None else [row.to_dict() for row in self.queues],
            "queues_note": self.queues_note,
            "store_error": self.store_error,
            "broker_error": self.broker_error,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _failure(exc: BaseException, within: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {within:g} s"
    return str(exc) or type(exc).__name__


def _rates(throughput: dict[str, Any]) -> list[StageRate]:
    return [
        StageRate(
            entry["job_type"],
            entry["stage"],
            entry["last_minute"]["done"],
            entry["last_minute"]["failed"],
            entry["last_hour"]["done"],
            entry["last_hour"]["failed"],
        )
        for entry in throughput["series"]
    ]


async def top_snapshot(
    app: App, *, within: float = MIN_READ_WAIT, watched: int = WATCHED_SHOWN
) -> TopSnapshot:
    """Read one frame: the throughput of the last minute and hour per job
    type and stage, the workers, the jobs per type with the stuck, waiting
    and re-driven ones, the first ``watched`` of those, and, with a shared
    broker, the stage queues. Each of the store's reads, and the broker's,
    may take ``within`` seconds.

    A store or broker that is away, or does not answer in time, is told in
    the snapshot's ``store_error`` or ``broker_error``, not raised.

    :raises InvalidRequest: a setting that can never work (a store or
        broker URL of no backend), or a closed app.
    """
    now = utc_now()
    stuck_after = app.settings.stuck_after
    snapshot: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within):
            store = app.store
            points = await store.throughput(since=throughput_since(now, 1))
            snapshot["throughput"] = throughput_json(points, now, 1)
            snapshot["rates"] = _rates(snapshot["throughput"])
            snapshot["workers"] = await store.list_workers()
            stuck_before = now - timedelta(seconds=stuck_after)
            snapshot["counts"] = await store.count_by_type(stuck_before=stuck_before)
            snapshot["watched"] = await store.list_watched(
                WatchQuery(stuck_before=stuck_before, limit=watched)
            )
    except (StoreError, TimeoutError) as exc:
        snapshot = {"store_error": _failure(exc, within)}
    if not app.shared_broker:
        snapshot["queues_note"] = MEMORY_BROKER_NOTE
    else:
        try:
            async with asyncio.timeout(within):
                snapshot["queues"] = await queue_rows(app)
        except (BrokerError, TimeoutError) as exc:
            snapshot["broker_error"] = _failure(exc, within)
    return TopSnapshot(
        at=now,
        stuck_after=stuck_after,
        heartbeat_interval=app.settings.heartbeat_interval,
        **snapshot,
    )


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max((now - moment).total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _rates_table(rates: Sequence[StageRate]) -> Table:
    table = Table(title="throughput (last minute)", title_justify="left")
    table.add_column("type", overflow="fold")
    table.add_column("stage", overflow="fold")
    for name in ("done", "failed", "items/s", "done 1 h", "failed 1 h"):
        table.add_column(name, justify="right")
    for rate in rates:
        table.add_row(
            rate.job_type,
            rate.stage,
            str(rate.done),
            f"[red]{rate.failed}[/red]" if rate.failed else "0",
            f"{rate.per_second:.1f}",
            str(rate.hour_done),
            str(rate.hour_failed),
        )
    return table


_STATE_STYLE = {WorkerState.LIVE: "green", WorkerState.DEAD: "red", WorkerState.STOPPED: "dim"}


def workers_table(
    workers: Sequence[WorkerInfo], now: datetime, *, shown: int | None = None
) -> Table:
    """The workers' heartbeats as a Rich table: state (a dead worker's since
    its last beat), host, pid, stages, concurrency, items done and failed,
    the last beat (as an age from ``now``) and the last error; with
    ``shown``, only the first so many, the title counting them all per
    state."""
    title = "workers"
    if shown is not None and len(workers) > shown:
        states = [info.state for info in workers]
        per_state = ", ".join(
            f"{states.count(state)} {state.value}" for state in WorkerState if state in states
        )
        title = f"workers (the first {shown} of {len(workers)}: {per_state})"
        workers = workers[:shown]
    table = Table(title=title, title_justify="left")
    for name in ("worker", "state", "host"):
        table.add_column(name, overflow="fold")
    table.add_column("pid", justify="right")
    table.add_column("stages", overflow="fold")
    for name in ("conc.", "done", "failed"):
        table.add_column(name, justify="right")
    table.add_column("last beat")
    table.add_column("last error", overflow="fold")
    for info in workers:
        beat = info.beat
        state = Text(info.state.value, style=_STATE_STYLE[info.state])
        table.add_row(
            beat.worker_id,
            state,
            beat.host,
            str(beat.pid),
            ", ".join(beat.stages),
            str(beat.concurrency),
            str(beat.done),
            str(beat.failed),
            _ago(beat.beat_at, now),
            Text(beat.last_error or "-"),
        )
    return table


def _counts_table(counts: Sequence[TypeCounts]) -> Table:
    table = Table(title="jobs per type", title_justify="left")
    table.add_column("type", overflow="fold")
    for name in ("active", "stuck", "waiting", "re-driven", "failed", "completed"):
        table.add_column(name, justify="right")
    for count in counts:
        table.add_row(
            count.job_type,
            str(count.active),
            f"[red]{count.stuck}[/red]" if count.stuck else "0",
            str(count.waiting),
            str(count.redriving),
            str(count.failed),
            str(count.completed),
        )
    return table


def _watched_table(watched: Sequence[Watched], now: datetime, stuck_after: float) -> Table:
    table = Table(title="stuck and waiting jobs (newest first)", title_justify="left")
    for name in ("job", "type", "reason", "monitor's last action"):
        table.add_column(name, overflow="fold")
    for job in watched:
        action = job.action
        table.add_row(
            job.job_id[:12],
            job.job_type,
            Text(reason_of(job, now=now, stuck_after=stuck_after)),
            Text(
                "none yet"
                if action is None
                else f"{action.kind} {_ago(action.at, now)}: {action.message}"
            ),
        )
    return table


def render_top(snapshot: TopSnapshot, *, retrying: bool = True) -> RenderableType:
    """One frame of ``jobtrack top`` from a snapshot: the throughput per job
    type and stage, the queues (or why there are none), the workers, the
    jobs per type and the first stuck and waiting ones; a store or broker
    that did not answer is said in its place (with ``retrying``, that the
    next frame tries again). Pure: it reads nothing but the snapshot."""
    now = snapshot.at
    again = " (trying again)" if retrying else ""
    parts: list[RenderableType] = [
        Text(f"jobtrack top — {now.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC", style="bold")
    ]
    if snapshot.store_error is not None:
        parts.append(Text(f"store unavailable: {snapshot.store_error}{again}", style="bold red"))
    else:
        parts.append(
            _rates_table(snapshot.rates)
            if snapshot.rates
            else Text("throughput: no items counted in the last hour")
        )
    if snapshot.broker_error is not None:
        parts.append(Text(f"broker unavailable: {snapshot.broker_error}{again}", style="bold red"))
    elif snapshot.queues is None:
        parts.append(Text(snapshot.queues_note or "no queues"))
    elif snapshot.queues:
        parts.append(queues_table(snapshot.queues))
    else:
        parts.append(Text("no stage queues in this app"))
    if snapshot.store_error is None:
        parts.append(
            workers_table(snapshot.workers, now, shown=WORKERS_SHOWN)
            if snapshot.workers
            else Text("workers: none has written a heartbeat")
        )
        parts.append(
            _counts_table(snapshot.counts) if snapshot.counts else Text("jobs: none stored")
        )
        if snapshot.watched:
            parts.append(_watched_table(snapshot.watched, now, snapshot.stuck_after))
        else:
            parts.append(Text("stuck and waiting jobs: none"))
    return Group(*parts)


async def _live(app: App, interval: float) -> None:
    """Draw a frame every ``interval`` seconds until SIGINT or SIGTERM
    (:func:`~jobtrack.cli.options.signalled`, as ``jobs watch``)."""
    within = max(MIN_READ_WAIT, interval)
    async with signalled() as stop:
        if not stdout.is_terminal:  # piped: one frame after another
            while not stop.is_set():
                stdout.print(render_top(await top_snapshot(app, within=within)))
                if await stopped(stop, interval):
                    return
            return
        with Live(console=stdout, auto_refresh=False, screen=True) as live:
            while not stop.is_set():
                snapshot = await top_snapshot(app, within=within)
                live.update(render_top(snapshot), refresh=True)
                if await stopped(stop, interval):
                    return


@click.command("top")
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between frames.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@json_option
@app_option
@data_dir_option
@store_option
@broker_option
def top(
    interval: float,
    once: bool,
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
) -> None:
    """A live screen of what the workers do: items done and failed per job
    type and stage over the last minute (and items/s), the stage queues
    (with a shared broker: ready, consumers, unacked, dead letters), the
    workers (live, dead or stopped, host, pid, items, last beat), the jobs
    per type and the first stuck and waiting ones, with why and the
    monitor's last action. A new frame every --interval seconds; Ctrl-C
    exits (status 0). A store or broker that does not answer is said on
    the screen, and tried again.

    --once prints one frame and exits: 0, or 1 when the store or the
    broker did not answer; with --json, the frame's data as one JSON object.
    """
    if as_json and not once:
        raise click.UsageError("--json prints one frame: use it with --once")
    settings = settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url)
    if not once:
        with_app(settings, lambda app: _live(app, interval), app_spec=app_spec)
        return
    snapshot = with_app(settings, top_snapshot, app_spec=app_spec)
    if as_json:
        click.echo(json.dumps(snapshot.to_dict(), indent=2))
    else:
        stdout.print(render_top(snapshot, retrying=False))
    sys.exit(0 if snapshot.ok else 1)


@click.command("workers")
@json_option
@app_option
@data_dir_option
@store_option
def workers(
    as_json: bool, app_spec: str | None, data_dir: Path | None, store_url: str | None
) -> None:
    """List the worker processes that wrote a heartbeat in the last day,
    live first: state (live; dead, its heartbeat stopped; stopped), host,
    pid, stages, concurrency, items done and failed, last beat and last
    error. --json prints the same answer as GET /api/workers."""
    settings = settings_from(data_dir=data_dir, store_url=store_url)

    async def read(app: App) -> tuple[list[WorkerInfo], float]:
        return await app.store.list_workers(), app.settings.heartbeat_interval

    listed, heartbeat_interval = with_app(settings, read, app_spec=app_spec)
    if as_json:
        click.echo(json.dumps(workers_json(listed, heartbeat_interval), indent=2))
        return
    if not listed:
        stdout.print("no worker has written a heartbeat")
        return
    stdout.print(workers_table(listed, utc_now()))
