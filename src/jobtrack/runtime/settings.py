"""Settings: one frozen object, from flags, then ``JOBTRACK_*`` variables.

The same names serve every command, so a worker, a monitor and a server
started with one environment share one store, one broker and one data folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobtrack.errors import InvalidRequest

__all__ = ["Settings", "default_data_dir"]

_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$JOBTRACK_DATA_DIR``, else ``$XDG_DATA_HOME/jobtrack``,
    else ``~/.local/share/jobtrack``."""
    if env.get("JOBTRACK_DATA_DIR"):
        return Path(env["JOBTRACK_DATA_DIR"])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jobtrack"


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidRequest(f"{name} must be on or off, not {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: Mapping[str, bool]) -> bool:
    raw = env.get(name) or next(iter(choices))
    if raw not in choices:
        raise InvalidRequest(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return choices[raw]


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise InvalidRequest(f"{name} must be at least 1, not {value}")
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
        """Flags first (the keyword arguments), then the environment, then defaults."""
        folder = (data_dir or default_data_dir(env)).expanduser().resolve()
        return cls(
            data_dir=folder,
            store_url=store_url
            or env.get("JOBTRACK_STORE_URL")
            or f"sqlite:///{folder / 'jobtrack.db'}",
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
        )
