"""Settings: one frozen object, from flags, then ``JOBTRACK_*`` variables.

The same names serve every command, so a worker, a monitor and a server
started with one environment share one store, one broker and one data folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobtrack.errors import ConfigurationError

__all__ = ["Settings", "default_data_dir"]

_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}
_SHOWN = 80  # characters of a refused value said back
_DATA_DIR_SETTING = "JOBTRACK_DATA_DIR / --data-dir"

#: The largest value of each whole-number setting: far past any use, and
#: small enough that every duration made of it is a valid date's distance.
_MOST = {
    "JOBTRACK_FLUSH_INTERVAL_MS": 3_600_000,  # an hour
    "JOBTRACK_WORKERS": 10_000,
    "JOBTRACK_STUCK_AFTER": 10**9,  # seconds: about 31 years
    "JOBTRACK_MONITOR_INTERVAL": 10**9,
    "JOBTRACK_LEDGER_RETENTION": 36_500,  # days: a hundred years
    "JOBTRACK_HEARTBEAT_INTERVAL": 3600,  # seconds: an hour
}


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "…")


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$JOBTRACK_DATA_DIR``, else ``$XDG_DATA_HOME/jobtrack``,
    else ``~/.local/share/jobtrack``.

    :raises ConfigurationError: no home folder can be found for the last.
    """
    if env.get("JOBTRACK_DATA_DIR"):
        return Path(env["JOBTRACK_DATA_DIR"])
    base = env.get("XDG_DATA_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "share")
        except RuntimeError:
            raise ConfigurationError(
                "no home folder to keep jobtrack's data in", setting=_DATA_DIR_SETTING
            ) from None
    return Path(base) / "jobtrack"


def _data_dir(env: Mapping[str, str], given: Path | None) -> tuple[Path, str]:
    """The data folder, absolute: the flag's, else :func:`default_data_dir`;
    and the setting it comes from.

    :raises ConfigurationError: a NUL in it, a ``~user`` of no user, or a
        path the system cannot resolve.
    """
    if given is not None or env.get("JOBTRACK_DATA_DIR"):
        setting = _DATA_DIR_SETTING  # the commands' flag reads the variable too
    else:
        setting = "XDG_DATA_HOME" if env.get("XDG_DATA_HOME") else "HOME"
    folder = given or default_data_dir(env)
    try:
        return folder.expanduser().resolve(), setting
    except (OSError, RuntimeError, ValueError) as exc:  # NUL (ValueError), ~nobody (Runtime)
        raise ConfigurationError(
            f"the data folder {_shown(str(folder))} cannot be used: {exc}", setting=setting
        ) from None


def _default_store(folder: Path, setting: str) -> str:
    """The URL of the SQLite store in the data folder.

    :raises ConfigurationError: the folder's path holds a ``?`` or a ``#``,
        which a SQLite URL would read as its options.
    """
    if "?" in str(folder) or "#" in str(folder):
        raise ConfigurationError(
            f"the data folder {_shown(str(folder))} cannot hold the default store: a SQLite"
            " URL reads ? and # as options (set JOBTRACK_STORE_URL, or another folder)",
            setting=setting,
        )
    return f"sqlite:///{folder / 'jobtrack.db'}"


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be on or off, not {_shown(raw)}", setting=name)


def _choice(env: Mapping[str, str], name: str, choices: Mapping[str, bool]) -> bool:
    raw = env.get(name) or next(iter(choices))
    if raw not in choices:
        raise ConfigurationError(
            f"{name} must be one of {', '.join(choices)}, not {_shown(raw)}", setting=name
        )
    return choices[raw]


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:  # not a number, or past Python's 4,300 digits
        raise ConfigurationError(
            f"{name} must be a whole number, not {_shown(raw)}", setting=name
        ) from None
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, not {value}", setting=name)
    if value > _MOST[name]:
        raise ConfigurationError(
            f"{name} must be at most {_MOST[name]:,}, not {_shown(raw)}", setting=name
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where jobtrack keeps its state and how it runs."""

    data_dir: Path
    store_url: str
    broker_url: str = "memory://"
    """``memory://`` (in this process) or ``amqp://…``; a RabbitMQ cluster's
    nodes as several ``amqp://`` URLs separated by commas, tried in turn
    (:func:`jobtrack.broker.rabbitmq.split_broker_urls`)."""
    consumer_progress: bool = True
    coalesce: bool = True
    flush_interval: float = 0.1
    workers: int = 2
    stuck_after: float = 300.0
    monitor_interval: float = 60.0
    ledger_retention: int = 7
    """Days the item ledger and failures of an ended job are kept (what a
    retry of the job needs), before the monitor deletes them."""
    broker_management_url: str | None = None
    """RabbitMQ's management API (``http://user:password@host:15672``),
    optional: where set, a queue's numbers come from it, with the messages
    delivered and not yet acked (AMQP does not tell them)."""
    heartbeat_interval: float = 5.0
    """Seconds between two heartbeats of a worker process; a worker silent
    for more than two of them counts as dead."""

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        *,
        data_dir: Path | None = None,
        store_url: str | None = None,
        broker_url: str | None = None,
        workers: int | None = None,
        consumer_progress: bool | None = None,
    ) -> Settings:
        """Flags first (the keyword arguments), then the environment, then defaults.

        :raises ConfigurationError: (an :class:`~jobtrack.errors.InvalidRequest`)
            a value that can never work, naming its variable (or flag): a
            data folder that cannot be resolved (or, with no store URL, holds
            a ``?`` or ``#``), a flag that is not on or off, a number that is
            not a whole number from 1 to its bound.
        """
        folder, folder_setting = _data_dir(env, data_dir)
        return cls(
            data_dir=folder,
            store_url=store_url
            or env.get("JOBTRACK_STORE_URL")
            or _default_store(folder, folder_setting),
            broker_url=broker_url or env.get("JOBTRACK_BROKER_URL") or "memory://",
            consumer_progress=_flag(env, "JOBTRACK_CONSUMER_PROGRESS", True)
            if consumer_progress is None
            else consumer_progress,
            coalesce=_choice(
                env, "JOBTRACK_PROGRESS_WRITES", {"coalesced": True, "per-item": False}
            ),
            flush_interval=_positive(env, "JOBTRACK_FLUSH_INTERVAL_MS", 100) / 1000,
            workers=workers or _positive(env, "JOBTRACK_WORKERS", os.cpu_count() or 1),
            stuck_after=_positive(env, "JOBTRACK_STUCK_AFTER", 300),
            monitor_interval=_positive(env, "JOBTRACK_MONITOR_INTERVAL", 60),
            ledger_retention=_positive(env, "JOBTRACK_LEDGER_RETENTION", 7),
            broker_management_url=env.get("JOBTRACK_BROKER_MANAGEMENT_URL") or None,
            heartbeat_interval=_positive(env, "JOBTRACK_HEARTBEAT_INTERVAL", 5),
        )
