"""The store port and its backends.

``open_store(url)`` picks the backend from the URL: ``memory://``,
``sqlite:///path/to/file.db`` or ``postgresql://user@host/db`` (which needs the
``postgres`` extra).
"""

from __future__ import annotations

from jobtrack.errors import InvalidRequest
from jobtrack.model import Clock, utc_now
from jobtrack.store.base import (
    CHANGES_LIMIT,
    DEFAULT_PAGE_SIZE,
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
from jobtrack.store.sqlite import SqliteDatabase, SqliteJobStore

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
    "SqliteDatabase",
    "SqliteJobStore",
    "StageProgress",
    "StoreStats",
    "open_store",
    "sqlite_path",
]


def sqlite_path(url: str) -> str:
    """The file path of a SQLite URL, as SQLAlchemy reads them:
    ``sqlite:///jobs.db`` is relative, ``sqlite:////var/lib/jobs.db`` absolute."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise InvalidRequest(
            f"not a SQLite URL: {url!r} (expected sqlite:///relative.db or sqlite:////abs.db)"
        )
    if "?" in url or "#" in url:
        raise InvalidRequest(f"SQLite URL options are not supported: {url!r}")
    return url.removeprefix("sqlite:///")


def open_store(url: str, *, create: bool = True, clock: Clock = utc_now) -> JobStore:
    """Open the store a URL names; with ``create=False``, only one that exists
    (for SQLite; a server's database always exists)."""
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
    raise InvalidRequest(
        f"unsupported store URL {url!r}: use memory://, sqlite:///path or postgresql://…"
    )
