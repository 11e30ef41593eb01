"""The store port and its backends.

``open_store(url)`` picks the backend from the URL: ``memory://``,
``sqlite:///path/to/file.db`` or ``postgresql://user@host/db`` (which needs the
``postgres`` extra).
"""

from __future__ import annotations

import os

from jobtrack.errors import ConfigurationError, InvalidRequest, masked_url
from jobtrack.model import Clock, utc_now
from jobtrack.store.base import (
    CHANGES_LIMIT,
    DEFAULT_PAGE_SIZE,
    STORE_SETTING,
    STUCK_QUERY_LIMIT,
    ChangeCursor,
    Changes,
    Ended,
    Increment,
    JobQuery,
    JobStore,
    ProgressResult,
    StageProgress,
    StoreStats,
)
from jobtrack.store.memory import InMemoryJobStore
from jobtrack.store.overview import (
    SearchField,
    TypeCounts,
    Watched,
    WatchQuery,
    WatchState,
)
from jobtrack.store.sqlite import SqliteDatabase, SqliteJobStore
from jobtrack.store.workers import (
    StageCount,
    ThroughputPoint,
    WorkerBeat,
    WorkerInfo,
    WorkerState,
)

__all__ = [
    "CHANGES_LIMIT",
    "DEFAULT_PAGE_SIZE",
    "STUCK_QUERY_LIMIT",
    "ChangeCursor",
    "Changes",
    "Ended",
    "InMemoryJobStore",
    "Increment",
    "JobQuery",
    "JobStore",
    "ProgressResult",
    "SearchField",
    "SqliteDatabase",
    "SqliteJobStore",
    "StageCount",
    "StageProgress",
    "StoreStats",
    "ThroughputPoint",
    "TypeCounts",
    "WatchQuery",
    "WatchState",
    "Watched",
    "WorkerBeat",
    "WorkerInfo",
    "WorkerState",
    "open_store",
    "sqlite_path",
]


def sqlite_path(url: str) -> str:
    """The file path of a SQLite URL, as SQLAlchemy reads them:
    ``sqlite:///jobs.db`` is relative, ``sqlite:////var/lib/jobs.db`` absolute.

    :raises ConfigurationError: (an :class:`~jobtrack.errors.InvalidRequest`)
        not a SQLite URL, one with options (``?``, ``#``), or a path no file
        can have (a NUL, a character the file system's encoding lacks).
    """

    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(why, setting=STORE_SETTING)

    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise refuse(
            f"not a SQLite URL: {_shown(url)} (expected sqlite:///relative.db or sqlite:////abs.db)"
        )
    if "?" in url or "#" in url:
        raise refuse(f"SQLite URL options are not supported: {_shown(url)}")
    path = url.removeprefix("sqlite:///")
    if "\x00" in path:
        raise refuse(f"a SQLite path must not contain NUL characters: {_shown(url)}")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise refuse(f"a SQLite path the file system cannot name: {_shown(url)}") from None
    return path


def open_store(url: str, *, create: bool = True, clock: Clock = utc_now) -> JobStore:
    """Open the store a URL names; with ``create=False``, only one that exists
    (for SQLite; a server's database always exists).

    :raises ConfigurationError: (an :class:`~jobtrack.errors.InvalidRequest`)
        a URL of no backend, a SQLite URL :func:`sqlite_path` refuses or whose
        file cannot be made or opened, a PostgreSQL URL that can never connect.
    :raises InvalidRequest: a PostgreSQL URL without the ``postgres`` extra.
    :raises StoreMissing: ``create=False`` and no SQLite database at the path.
    :raises StoreError: the SQLite database cannot be migrated.
    """
    if url == "memory://":
        return InMemoryJobStore(clock=clock)
    if url.startswith("sqlite:"):
        return SqliteJobStore.open(sqlite_path(url), create=create, clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from jobtrack.store.postgres import PostgresJobStore  # noqa: PLC0415 - optional
        except ImportError as exc:
            raise InvalidRequest(
                f"{url.split(':', 1)[0]} URLs need psycopg: pip install 'jobtrack[postgres]'"
            ) from exc
        return PostgresJobStore(url, clock=clock)
    raise ConfigurationError(
        f"unsupported store URL {_shown(url)}: use memory://, sqlite:///path or postgresql://…",
        setting=STORE_SETTING,
    )


def _shown(url: str) -> str:
    """``url`` as an error says it back: quoted, its password masked, cut short."""
    text = repr(masked_url(url))
    return text if len(text) <= 200 else text[:200] + "…"
