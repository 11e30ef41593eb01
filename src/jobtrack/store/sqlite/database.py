"""One SQLite database file: connection settings, migrations, error mapping.

The job store and the reference pipeline's catalog share one database file
(and one connection per process), each with its own migrations.

The connection lives on a thread of its own, and every statement runs there:
the stores' async methods are sync bodies that :func:`on_database_thread`
submits whole (one hop per operation, a transaction never interleaved with
another). A statement takes microseconds, but a write may wait up to the busy
timeout for another process's write lock; on the event loop that wait would
freeze every request of a server, here it holds only this database's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from jobtrack.errors import ConfigurationError, StoreError, StoreMissing, StoreUnavailable
from jobtrack.store.base import STORE_SETTING
from jobtrack.store.sql import load_queries, migrations

__all__ = ["SqliteDatabase", "from_micros", "on_database_thread", "to_micros"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

logger = logging.getLogger(__name__)

_Q = load_queries("jobtrack.store.sqlite")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# Conditions that pass: another writer, a full or failing disk, a file that
# cannot be opened just now. A write refused for these is worth retrying.
# What a database that does not open at all says: a path that cannot be
# opened (a folder, no write access: SQLITE_CANTOPEN), a file that is not a
# database (SQLITE_NOTADB), a read-only place (SQLITE_READONLY).
# Folder errors that pass (a full or failing disk, too many open files).
_PASSING = frozenset({errno.ENOSPC, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_UNOPENABLE = frozenset({sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_READONLY})
_BUSY = (
    "database is locked",
    "database is busy",
    "unable to open database",
    "database or disk is full",
    "disk I/O error",
)


# Every open database of the process. A fork waits until none is in the middle
# of a piece of work: SQLite keeps its file locks' state in the process's
# memory, and a child forked while a transaction held the write lock would
# inherit that state and wait on a lock nobody will release (Celery's prefork
# pool and RQ's work horses fork while a TaskCounter's thread writes).
_OPEN: weakref.WeakSet[SqliteDatabase] = weakref.WeakSet()


def _before_fork() -> None:
    for database in list(_OPEN):
        database._idle.acquire()
        database._held_for_fork = True


def _after_fork() -> None:
    for database in list(_OPEN):
        if database._held_for_fork:
            database._held_for_fork = False
            database._idle.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )


def _shown(path: Path | str) -> str:
    """A path as an error says it back: quoted, cut short."""
    text = repr(str(path))
    return text if len(text) <= 200 else text[:200] + "…"


def to_micros(moment: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the epoch."""
    return (moment - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    """The inverse of :func:`to_micros`."""
    return _EPOCH + timedelta(microseconds=value)


class SqliteDatabase:
    """A connection to one SQLite file in WAL mode, ready for the stores,
    owned by a thread of its own (see :meth:`run`)."""

    def __init__(
        self, path: Path | str, *, create: bool = True, busy_timeout_ms: int = 10_000
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            self._prepare_file(Path(self.path), create=create)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobtrack-sqlite")
        self._thread_id: int | None = None
        # Held by each piece of work on the thread, and by a fork (see _OPEN).
        self._idle = threading.Lock()
        self._held_for_fork = False
        _OPEN.add(self)
        # Made on its thread; usable from another (tests, benchmarks) while idle.
        try:
            self.connection = self.call(self._connect, busy_timeout_ms)
        except BaseException:
            self._thread.shutdown(wait=False)
            raise

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        self._thread_id = threading.get_ident()
        try:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._unopenable(exc) from exc
        try:
            self._configure(connection, busy_timeout_ms)
        except sqlite3.Error as exc:
            connection.close()
            raise self._unopenable(exc) from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _unopenable(self, exc: sqlite3.Error) -> StoreError | ConfigurationError:
        """The error for a database that does not open: a path no database
        can be opened at (a folder, a file that is no database, a place
        that cannot be written) is a configuration error; anything else is
        translated as usual."""
        if exc.sqlite_errorcode & 0xFF in _UNOPENABLE:
            return ConfigurationError(
                f"no SQLite database can be opened at {_shown(self.path)}: {exc}",
                setting=STORE_SETTING,
            )
        return self.translate(exc)

    def _configure(self, connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        # Checkpoint every 10,000 pages (40 MiB of WAL), not SQLite's 1,000:
        # a ledger batch of keys in no order dirties about a page a key,
        # so the default checkpointed (and synced) after every batch. The
        # WAL file is cut back to 64 MiB after a checkpoint.
        connection.execute("PRAGMA wal_autocheckpoint = 10000")
        connection.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
        connection.execute(_Q["migrations_table"])

    async def run(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``work(*args, **kwargs)`` on the database's thread, after what was
        submitted before it; the event loop keeps serving meanwhile. Cancelled
        before it starts, it never runs; once started, it runs to its end.
        StoreError if the database is closed; whatever ``work`` raises."""
        return await asyncio.wrap_future(self._submit(work, *args, **kwargs))

    def call(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``work(*args, **kwargs)`` on the database's thread, waiting for it
        here (for sync callers: opening, migrations); raises as :meth:`run`."""
        if threading.get_ident() == self._thread_id:
            return work(*args, **kwargs)
        return self._submit(work, *args, **kwargs).result()

    def _submit(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        def guarded() -> _T:
            with self._idle:  # no fork in the middle of it
                return work(*args, **kwargs)

        try:
            return self._thread.submit(guarded)
        except RuntimeError as exc:  # shut down
            raise StoreError(f"SQLite database {self.path} is closed") from exc

    @staticmethod
    def _prepare_file(path: Path, *, create: bool) -> None:
        """Make the database's folder.

        :raises StoreMissing: ``create`` is false and there is no file.
        :raises ConfigurationError: the path cannot name a file (a NUL),
            or its folder cannot be made (a file in its way, a name too
            long, no permission).
        :raises StoreError: the disk is full or failing.
        """
        if not create and not path.is_file():
            raise StoreMissing(f"no database at {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in _PASSING:
                raise StoreError(f"cannot create a database at {path}: {exc.strerror}") from exc
            raise ConfigurationError(
                f"cannot create a database at {_shown(path)}: {exc.strerror}",
                setting=STORE_SETTING,
            ) from exc
        except ValueError as exc:  # a NUL in the path
            raise ConfigurationError(
                f"cannot create a database at {_shown(path)}: {exc}", setting=STORE_SETTING
            ) from exc

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

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction that takes the write lock up front
        (``BEGIN IMMEDIATE``), so it never fails half-way on a busy lock."""
        return self.transaction(write=True)

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A transaction, errors translated: to write, ``BEGIN IMMEDIATE``
        (see :meth:`write`); to read, a deferred one (one snapshot for all
        its statements). Rolled back if its body raises."""
        with self.translate_errors():
            self.connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
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
        return self.call(self._migrate, component, package)

    def _migrate(self, component: str, package: str) -> list[int]:
        found = migrations(package)
        with self.translate_errors():
            if {m.version for m in found} <= self._applied(component):
                return []  # as it is most times: no need to wait for the write lock
        applied_now: list[int] = []
        with self.write() as conn:
            done = self._applied(component)  # again, under the lock
            for migration in found:
                if migration.version in done:
                    continue
                for statement in _statements(migration.read()):
                    conn.execute(statement)
                conn.execute(
                    _Q["migration_record"],
                    {
                        "component": component,
                        "version": migration.version,
                        "name": migration.name,
                        "now": to_micros(datetime.now(UTC)),
                    },
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

    def _applied(self, component: str) -> set[int]:
        rows = self.connection.execute(_Q["migrations_applied"], {"component": component})
        return {row[0] for row in rows}

    def schema_version(self, component: str) -> int:
        """The highest migration applied for ``component`` (0 for none)."""
        return self.call(self._schema_version, component)

    def _schema_version(self, component: str) -> int:
        with self.translate_errors():
            row = self.connection.execute(_Q["schema_version"], {"component": component}).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection once what was submitted before has run, and
        end its thread."""
        with contextlib.suppress(StoreError):  # closed already
            self.call(self.connection.close)
        self._thread.shutdown(wait=threading.get_ident() != self._thread_id)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        with contextlib.suppress(StoreError):
            await self.run(self.connection.close)
        self._thread.shutdown(wait=False)


class _UsesDatabase(Protocol):
    @property
    def database(self) -> SqliteDatabase: ...


_S = TypeVar("_S", bound=_UsesDatabase)


def on_database_thread(
    method: Callable[Concatenate[_S, _P], _T],
) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _T]]:
    """An async method that runs the sync ``method`` whole on its object's
    database thread (:meth:`SqliteDatabase.run`); it raises what ``method``
    raises."""

    @functools.wraps(method)
    async def on_thread(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self.database.run(method, self, *args, **kwargs)

    return on_thread


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
