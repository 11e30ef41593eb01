"""``jobtrack queues`` and ``jobtrack dead``: the app's stage queues, their
dead letters, and sending chosen ones back or dropping them
(:mod:`jobtrack.runtime.queues` does the work, as for the HTTP API)."""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path

import click
from rich.table import Table

from jobtrack.broker import dead_letter_queue
from jobtrack.cli.options import (
    app_option,
    broker_option,
    data_dir_option,
    json_option,
    settings_from,
    stdout,
    store_option,
    with_app,
)
from jobtrack.runtime import App, Settings
from jobtrack.runtime.queues import (
    DeadLetterView,
    QueueRow,
    drop_dead,
    list_dead,
    queue_rows,
    requeue_dead,
)

__all__ = ["dead", "queues"]

#: Dead letters ``dead list`` shows per queue by default.
DEFAULT_LIMIT = 50


def _shared(settings: Settings) -> Settings:
    """``settings``, if their broker is one other processes reach.

    :raises click.UsageError: the broker is ``memory://``, whose queues
        live only inside the process that runs them.
    """
    if settings.broker_url == "memory://":
        raise click.UsageError(
            "the broker is memory://, whose queues live inside the process running them:"
            " name the shared broker with --broker amqp://… (or JOBTRACK_BROKER_URL)"
        )
    return settings


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def queues_table(rows: list[QueueRow]) -> Table:
    """The stage queues as a Rich table: depth, consumers, unacked, oldest
    message and dead letters ("-" where the broker does not tell)."""
    table = Table(title="queues", title_justify="left")
    for name in ("queue", "type", "stage"):
        table.add_column(name, overflow="fold")
    for name in ("ready", "consumers", "unacked", "oldest", "dead"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            row.queue.queue,
            row.queue.job_type,
            row.queue.stage,
            str(row.stats.messages),
            str(row.stats.consumers),
            _count(row.stats.unacked),
            _age(row.stats.oldest_seconds),
            str(row.dead_letters) if not row.dead_letters else f"[red]{row.dead_letters}[/red]",
        )
    return table


def dead_table(queue: str, views: list[DeadLetterView]) -> Table:
    """A queue's dead letters as a Rich table."""
    table = Table(title=f"dead letters of {queue}", title_justify="left")
    for name in ("id", "died", "count", "job", "stage", "key", "reason"):
        table.add_column(name, overflow="fold")
    for view in views:
        table.add_row(
            view.id,
            view.died_at or "-",
            _count(view.delivery_count),
            view.job_id or "-",
            view.stage or "-",
            view.key or view.preview,
            view.reason,
        )
    return table


def _by() -> str:
    """Who acts from the command line, for the jobs' events."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return f"jobtrack dead on the command line ({user}@{socket.gethostname()})"


@click.command("queues")
@json_option
@app_option
@data_dir_option
@store_option
@broker_option
def queues(
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
) -> None:
    """Show the app's stage queues: messages ready, consumers, messages in
    flight and the oldest message's age where the broker tells, and dead
    letters."""
    settings = _shared(settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url))
    rows = with_app(settings, queue_rows, app_spec=app_spec)
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    stdout.print(queues_table(rows) if rows else "no stage queues in this app")


@click.group("dead")
def dead() -> None:
    """List the dead letters of the app's stage queues; send chosen ones
    back to their queue, or drop them."""


@dead.command("list")
@click.argument("queue", required=False)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Dead letters shown per queue, oldest first.",
)
@json_option
@app_option
@data_dir_option
@store_option
@broker_option
def list_dead_letters(
    queue: str | None,
    limit: int,
    as_json: bool,
    app_spec: str | None,
    data_dir: Path | None,
    store_url: str | None,
    broker_url: str | None,
) -> None:
    """List the dead letters of QUEUE (default: of every stage queue that
    has some), each with its id, reason, delivery count, when it died and
    the job, stage and item it was for. They stay where they are."""
    settings = _shared(settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url))

    async def read(app: App) -> list[tuple[str, list[DeadLetterView]]]:
        if queue is not None:
            return [(queue, await list_dead(app, queue, limit=limit))]
        rows = await queue_rows(app)
        names = [row.queue.queue for row in rows if row.dead_letters]
        return [(name, await list_dead(app, name, limit=limit)) for name in names]

    found = with_app(settings, read, app_spec=app_spec)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"queue": name, "dead_letters": [v.to_dict() for v in views]}
                    for name, views in found
                ],
                indent=2,
            )
        )
        return
    shown = [(name, views) for name, views in found if views]
    if not shown:
        stdout.print("no dead letters" + (f" in {queue}" if queue else ""))
    for name, views in shown:
        stdout.print(dead_table(name, views))


def _settle_command(name: str, *, requeue: bool) -> click.Command:
    verb = "Send back" if requeue else "Drop"
    done = "requeued" if requeue else "dropped"

    @click.command(name)
    @click.argument("queue")
    @click.argument("ids", nargs=-1)
    @click.option("--all", "every", is_flag=True, help="Every dead letter of QUEUE.")
    @json_option
    @app_option
    @data_dir_option
    @store_option
    @broker_option
    def command(
        queue: str,
        ids: tuple[str, ...],
        every: bool,
        as_json: bool,
        app_spec: str | None,
        data_dir: Path | None,
        store_url: str | None,
        broker_url: str | None,
    ) -> None:
        if every == bool(ids):
            raise click.UsageError("name the dead letters' ids, or --all (not both)")
        settings = _shared(
            settings_from(data_dir=data_dir, store_url=store_url, broker_url=broker_url)
        )
        chosen = None if every else list(dict.fromkeys(ids))
        action = requeue_dead if requeue else drop_dead

        async def act(app: App) -> tuple[list[DeadLetterView], int]:
            taken = await action(app, queue, chosen, by=_by())
            return taken, (await app.broker.queue_stats(dead_letter_queue(queue))).messages

        taken, remaining = with_app(settings, act, app_spec=app_spec)
        if as_json:
            answer = {"queue": queue, done: [v.to_dict() for v in taken], "remaining": remaining}
            click.echo(json.dumps(answer, indent=2))
            return
        where = f"back to {queue}" if requeue else f"from {queue}'s dead letters"
        stdout.print(f"{done} {len(taken)} dead letter(s) {where}; {remaining} remain")

    command.help = (
        f"{verb} the dead letters IDS of QUEUE (or --all of them, at most 1,000 at once)"
        + (", published to QUEUE again," if requeue else "")
        + " and record it on each message's job. An id not found changes nothing."
    )
    return command


dead.add_command(_settle_command("requeue", requeue=True))
dead.add_command(_settle_command("drop", requeue=False))
