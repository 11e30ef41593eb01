"""What the commands share: options, consoles, settings and store access."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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

__all__ = [
    "SettingError",
    "broker_option",
    "data_dir_option",
    "json_option",
    "preflight",
    "settings_from",
    "stderr",
    "stdout",
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
    help="Broker URL: memory:// (in this process) or amqp://user:password@host:port/vhost"
    " [default: memory://].",
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


def with_app(
    settings: Settings,
    action: Callable[[App], Awaitable[T]],
    *,
    on_missing: Callable[[StoreMissing], T] | None = None,
) -> T:
    """Run ``action`` on an :class:`App` of the settings whose store must
    exist already (never created); jobtrack errors become clean command-line
    errors."""

    async def run() -> T:
        async with App(settings, create_store=False) as app:
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
