"""What the commands share: options, consoles, settings and store access."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from jobtrack.errors import (
    ConfigurationError,
    InvalidRequest,
    JobtrackError,
    StoreMissing,
)
from jobtrack.runtime import App, Settings
from jobtrack.runtime.builtin import builtin_app
from jobtrack.runtime.loading import APP_ENV, load_app

__all__ = [
    "SettingError",
    "app_for",
    "app_option",
    "broker_option",
    "data_dir_option",
    "json_option",
    "preflight",
    "settings_for",
    "settings_from",
    "signalled",
    "stderr",
    "stdout",
    "stopped",
    "store_option",
    "usage_error",
    "with_app",
]

T = TypeVar("T")

stderr = Console(stderr=True)
stdout = Console(highlight=False, soft_wrap=True)

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="JOBTRACK_DATA_DIR",
    show_envvar=True,
    help="Where the database and renditions live [default: ~/.local/share/jobtrack].",
)
store_option = click.option(
    "--store",
    "store_url",
    envvar="JOBTRACK_STORE_URL",
    show_envvar=True,
    help="Store URL: sqlite:///relative.db, sqlite:////absolute.db or memory://"
    " [default: DATA_DIR/jobtrack.db].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
broker_option = click.option(
    "--broker",
    "broker_url",
    envvar="JOBTRACK_BROKER_URL",
    show_envvar=True,
    help="Broker URL: memory:// (in this process) or amqp://user:password@host:port/vhost;"
    " a RabbitMQ cluster's nodes as several amqp:// URLs separated by commas, tried in turn"
    " [default: memory://].",
)

app_option = click.option(
    "--app",
    "app_spec",
    envvar=APP_ENV,
    show_envvar=True,
    metavar="MODULE:ATTR",
    help="Your app, whose job types these are (an App, or a function returning one)"
    " [default: the built-in app, the collection scan].",
)


class SettingError(click.ClickException):
    """A setting that can never work: one line naming it, exit 2 (as for a
    usage error, without the usage)."""

    exit_code = 2


def usage_error(exc: InvalidRequest) -> click.ClickException:
    """The command-line error for what can never work: a wrong setting is one
    line that names it (:class:`SettingError`), anything else a usage error."""
    if isinstance(exc, ConfigurationError):
        return SettingError(str(exc))
    return click.UsageError(str(exc))


def preflight(settings: Settings, *, broker: bool = True, within: float = 5.0) -> None:
    """Connect once to the settings' PostgreSQL store and AMQP broker
    (:meth:`App.preflight <jobtrack.runtime.App.preflight>`), so that a wrong
    setting (a refused login, a missing database or virtual host) stops the
    command at once with one line, rather than looking like an outage later.
    A server that is only away is left to the command's own retries.

    :raises SettingError: a setting that can never work.
    :raises click.ClickException: any other error of the store or broker
        that is not an outage.
    """
    try:
        asyncio.run(App(settings).preflight(broker=broker, within=within))
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    except JobtrackError as exc:  # a broker that stopped on an error: said, not a traceback
        raise click.ClickException(str(exc)) from None


def settings_from(**flags: Any) -> Settings:
    """Settings from flags, then the environment; bad values are usage errors."""
    try:
        return Settings.from_env(**flags)
    except InvalidRequest as exc:
        raise usage_error(exc) from None


def app_for(spec: str | None, settings: Settings, **options: Any) -> App:
    """The app the commands run on: the user's app ``spec`` names
    (``module:attribute``) with ``settings`` (its job types, the command's
    flags), or the built-in app when there is none; ``options`` as
    :class:`App`'s (``create_store``).

    :raises SettingError: the module cannot be imported, the attribute is
        missing or not an App, or the spec is malformed.
    :raises click.UsageError: the app's own declarations are refused.
    """
    try:
        found = load_app(spec, {})  # (JOBTRACK_APP comes in through the option)
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    if found is None:
        return builtin_app(settings, **options)
    return found.with_settings(settings_for(found, settings), **options)


def settings_for(app: App, settings: Settings) -> Settings:
    """The settings a command runs a user's ``app`` with: the command's
    (its flags, then ``JOBTRACK_*``), except that settings the app was given
    in code win over the environment; a flag still wins over both (a
    setting is taken as flagged where the command's differs from the
    environment's alone)."""
    if not app.settings_given:
        return settings
    try:
        environment = Settings.from_env()
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    flagged = {
        field.name: getattr(settings, field.name)
        for field in fields(Settings)
        if getattr(settings, field.name) != getattr(environment, field.name)
    }
    return replace(app.settings, **flagged)


def with_app(
    settings: Settings,
    action: Callable[[App], Awaitable[T]],
    *,
    app_spec: str | None = None,
    on_missing: Callable[[StoreMissing], T] | None = None,
) -> T:
    """Run ``action`` on the app ``app_spec`` names (:func:`app_for`; the
    built-in app when None) with the settings, whose store must exist
    already (never created); jobtrack errors become clean command-line
    errors."""
    chosen = app_for(app_spec, settings, create_store=False)

    async def run() -> T:
        async with chosen as app:
            return await action(app)

    try:
        return asyncio.run(run())
    except StoreMissing as exc:
        if on_missing is None:
            raise click.ClickException(f"{exc}: nothing has been stored there yet") from None
        return on_missing(exc)
    except InvalidRequest as exc:
        raise usage_error(exc) from None
    except JobtrackError as exc:
        raise click.ClickException(str(exc)) from None


@asynccontextmanager
async def signalled() -> AsyncIterator[asyncio.Event]:
    """An event SIGINT or SIGTERM sets while the block runs (on the running
    loop), for a command that draws until it is stopped.

    The signals set an event the loop waits on, rather than cancelling the
    task as ``asyncio.run`` does: a cancellation that lands as an awaited
    call completes can be lost on Python 3.11, and the command would then
    go on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def stopped(stop: asyncio.Event, interval: float) -> bool:
    """Wait ``interval`` seconds, or less if ``stop`` is set; whether it is."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter}, timeout=interval)
    finally:
        waiter.cancel()
    return stop.is_set()
