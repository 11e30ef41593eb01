"""One SQLite database file: connection settings, migrations, error mapping.

The job store and the reference pipeline's catalog share one database file
(and one connection per process), each with its own migrations.

Statements run on the calling thread, not in a thread pool: a statement here
takes a few microseconds, and a hop to a worker thread and back would cost
several times that on every increment. Writers wait for each other through
SQLite's busy timeout.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobtrack.errors import StoreError, StoreMissing, StoreUnavailable
from jobtrack.store.sql import migrations

__all__ = ["SqliteDatabase", "from_micros", "to_micros"]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# Conditions that pass: another writer, a full or failing disk, a file that
# cannot be opened just now. A write refused for these is worth retrying.
_BUSY = (
    "database is locked",
    "database is busy",
    "unable to open database",
    "database or disk is full",
    "disk I/O error",
)


def to_micros(moment: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the epoch."""
    return (moment - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    """The inverse of :func:`to_micros`."""
    return _EPOCH + timedelta(microseconds=value)


class SqliteDatabase:
    """A connection to one SQLite file in WAL mode, ready for the stores."""

    def __init__(
        self, path: Path | str, *, create: bool = True, busy_timeout_ms: int = 10_000
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            self._prepare_file(Path(self.path), create=create)
        with self.translate_errors():
            self.connection = sqlite3.connect(self.path, isolation_level=None)
            self.connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.execute("PRAGMA synchronous = NORMAL")
            self.connection.execute("PRAGMA foreign_keys = ON")
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
                " applied_at INTEGER NOT NULL, PRIMARY KEY (component, version))"
            )

    @staticmethod
    def _prepare_file(path: Path, *, create: bool) -> None:
        if not create and not path.is_file():
            raise StoreMissing(f"no database at {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create a database at {path}: {exc.strerror}") from exc

    def translate(self, exc: sqlite3.Error) -> StoreError:
        """The jobtrack error for a sqlite3 error: transient ones (a busy
        database) are :class:`StoreUnavailable`."""
        if isinstance(exc, sqlite3.OperationalError) and any(m in str(exc) for m in _BUSY):
            return StoreUnavailable(f"SQLite database {self.path} unavailable: {exc}")
        return StoreError(f"SQLite error: {exc}")

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn sqlite3 errors into jobtrack's own, once, at this boundary."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front
        (``BEGIN IMMEDIATE``), so it never fails half-way on a busy lock."""
        with self.translate_errors():
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                if self.connection.in_transaction:  # the body or the COMMIT failed
                    self.connection.execute("ROLLBACK")
                raise

    def migrate(self, component: str, package: str) -> list[int]:
        """Apply the ``NNNN_name.sql`` migrations of ``package`` not yet applied
        for ``component``; returns the versions applied now."""
        found = migrations(package)
        applied_now: list[int] = []
        with self.write() as conn:
            done = {
                row[0]
                for row in conn.execute(
                    "SELECT version FROM schema_migrations WHERE component = ?", (component,)
                )
            }
            for migration in found:
                if migration.version in done:
                    continue
                for statement in _statements(migration.read()):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, applied_at)"
                    " VALUES (?, ?, ?, ?)",
                    (component, migration.version, migration.name, to_micros(datetime.now(UTC))),
                )
                applied_now.append(migration.version)
        if applied_now:
            logger.info(
                "migrated %s to version %d",
                component,
                applied_now[-1],
                extra={"action": "migrate", "component": component},
            )
        return applied_now

    def schema_version(self, component: str) -> int:
        """The highest migration applied for ``component`` (0 for none)."""
        with self.translate_errors():
            row = self.connection.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
                (component,),
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements, keeping trigger bodies whole."""
    pending = ""
    for line in script.splitlines(keepends=True):
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise StoreError(f"incomplete SQL statement in migration: {pending[:80]!r}")
