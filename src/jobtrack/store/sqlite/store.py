"""The SQLite job store: the embedded default (``sqlite:///path``).

The job operations are :mod:`jobtrack.store.sqlcore`'s plans, each driven
whole on the database's thread in one ``BEGIN IMMEDIATE`` transaction (one
hop per operation). What is SQLite's own: the per-item increment, one
``UPDATE … RETURNING`` whose ``CASE`` expressions apply the stage rules and
whose triggers touch the job (taking the next change sequence value) and
re-derive its status; with an item key it is preceded, in the same
transaction, by an insert into ``item_keys`` whose primary key makes the same
(job, stage, item) count once.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any, ClassVar, TypeVar

from jobtrack.errors import JobNotFound, StageNotFound
from jobtrack.model import Clock, JobStatus, utc_now
from jobtrack.store.base import (
    Increment,
    ProgressResult,
    StageProgress,
    increment_progress,
    merge_screened,
    screen_progress,
)
from jobtrack.store.overview import SearchField
from jobtrack.store.sql import load_queries
from jobtrack.store.sqlcore import (
    Codec,
    Execute,
    Fetch,
    Plan,
    Request,
    Row,
    SqlJobStore,
    drive,
    lock_job,
    lock_stage,
    stage_from_row,
)
from jobtrack.store.sqlite.database import (
    SqliteDatabase,
    from_micros,
    on_database_thread,
    to_micros,
)

__all__ = ["SqliteCodec", "SqliteConnector", "SqliteJobStore"]

_Q = load_queries("jobtrack.store.sqlite")
_T = TypeVar("_T")


class SqliteCodec(Codec):
    """Times as integer microseconds, booleans as 0 and 1, JSON (and lists
    of parameters, read with ``json_each``) as text."""

    def encode(self, value: Any) -> Any:
        """A parameter as SQLite takes it."""
        if isinstance(value, datetime):
            return to_micros(value)
        if isinstance(value, dict | list):
            return json.dumps(value)
        return int(value) if isinstance(value, bool) else value

    def decode(self, names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
        """A row by column name, times, booleans and JSON decoded."""
        return {
            name: value if value is None or convert is None else convert(value)
            for name, convert, value in zip(names, _converters(tuple(names)), values, strict=True)
        }


@functools.cache
def _converters(names: tuple[str, ...]) -> tuple[Callable[[Any], Any] | None, ...]:
    """Per column of a row, how SQLite's value becomes Python's (None: as it is)."""
    return tuple(
        from_micros
        if name in Codec.TIMES
        else json.loads
        if name in Codec.JSON
        else bool
        if name in Codec.BOOLEANS
        else None
        for name in names
    )


class SqliteConnector:
    """Drives plans on one :class:`SqliteDatabase`, on its thread."""

    codec: Codec = SqliteCodec()

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def run(self, plan: Plan[_T], *, write: bool = True) -> _T:
        """The plan, whole, in one transaction on the database's thread
        (``BEGIN IMMEDIATE`` to write); raises what it raises."""
        return await self.database.run(self.call, plan, write=write)

    def call(self, plan: Plan[_T], *, write: bool = True) -> _T:
        """:meth:`run`, from the database's thread."""
        with self.database.transaction(write=write):
            return drive(plan, self.do)

    async def fetch(self, request: Fetch) -> list[Row]:
        """The decoded rows of one query, on the database's thread, in no
        ``BEGIN`` of its own (the statement is its own transaction, one
        snapshot); raises ``StoreError`` (``StoreUnavailable`` when busy)."""
        return await self.database.run(self._fetch, request)

    def _fetch(self, request: Fetch) -> list[Row]:
        with self.database.translate_errors():
            rows: list[Row] = self.do(request)
        return rows

    def do(self, request: Request) -> Any:
        """One request: its decoded rows, or its changes count."""
        params = {name: self.codec.encode(value) for name, value in request.params.items()}
        cursor = self.database.connection.execute(_Q[request.name], params)
        if isinstance(request, Execute):
            return cursor.rowcount
        names = [column[0] for column in cursor.description]
        return [self.codec.decode(names, row) for row in cursor.fetchall()]


class SqliteJobStore(SqlJobStore):
    """A :class:`~jobtrack.store.base.JobStore` on one SQLite database."""

    backend: ClassVar[str] = "sqlite"

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self.database = database
        database.migrate("jobs", "jobtrack.store.sqlite.migrations")
        self._sqlite = SqliteConnector(database)
        super().__init__(self._sqlite, clock)

    def _ledger_batch(self, keys: list[str], payloads: list[str]) -> dict[str, Any]:
        """The batch as one JSON array of ``[key, payload]`` pairs, read by
        ``json_each`` in the one ``add_items`` statement: no bound variable
        per item, so no limit on their number. The payloads are JSON text
        already, joined in as they are."""
        pairs = ",".join(
            f"[{encode_basestring(key)},{payload}]"
            for key, payload in zip(keys, payloads, strict=True)
        )
        return {"items": f"[{pairs}]"}

    def _outcome_batch(self, keys: list[str], failed: int) -> dict[str, Any]:
        """Every key and the failed ones as two JSON arrays, read by
        ``json_each`` in the one ``record_outcomes`` statement."""
        return {"keys": keys, "failed": keys[len(keys) - failed :]}

    def _search_path(self, field: SearchField) -> str:
        """A searchable field's path as a SQLite JSON path, each name quoted
        (``$."collection"."path"``; the names hold no quote)."""
        return "$" + "".join(f'."{part}"' for part in field.parts)

    @classmethod
    def open(cls, path: str, *, create: bool = True, clock: Clock = utc_now) -> SqliteJobStore:
        """Open (creating and migrating as needed) the database at ``path``;
        with ``create=False``, StoreMissing if there is none."""
        return cls(SqliteDatabase(path, create=create), clock=clock)

    @on_database_thread
    def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        """Count finished items atomically; at most once per item key.
        Raises ``NotFound`` for an unknown job or stage, ``InvalidIncrement``."""
        progress = increment_progress(job_id, stage, completed, failed, item_key)
        now = self._clock()
        if item_key is not None:
            return self._sqlite.call(_add(progress, now)).as_increment()
        # The hot path: one statement, no transaction block.
        counts = {"completed": progress.completed, "failed": progress.failed}
        params = {"job_id": job_id, "stage": stage, **counts}
        try:
            rows = self._sqlite.do(Fetch("increment", params | {"now": now}))
            return drive(_counted(job_id, stage, rows), self._sqlite.do)
        except sqlite3.Error as exc:
            raise self.database.translate(exc) from exc

    @on_database_thread
    def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """Apply many stages' progress in one ``BEGIN IMMEDIATE`` transaction:
        per stage, claim the new keys, then one increment with the counts.
        An entry no backend can store is refused alone, before the write."""
        screened = screen_progress(batch)
        now = self._clock()
        todo = [p for p, r in zip(batch, screened, strict=True) if r is None]
        return merge_screened(screened, self._sqlite.call(_add_all(todo, now)))

    async def aclose(self) -> None:
        """Close the database connection."""
        await self.database.aclose()


def _add_all(batch: Sequence[StageProgress], now: datetime) -> Plan[list[ProgressResult]]:
    results = []
    for progress in batch:
        results.append((yield from _add(progress, now)))
    return results


def _add(progress: StageProgress, now: datetime) -> Plan[ProgressResult]:
    key: dict[str, Any] = {"job_id": progress.job_id, "stage": progress.stage}
    rows = yield Fetch("stage_and_job", key)
    if not rows:
        job = yield Fetch("lock_job", key)
        missing = (
            StageNotFound(progress.job_id, progress.stage) if job else JobNotFound(progress.job_id)
        )
        return ProgressResult(progress, 0, None, missing=missing)
    current = stage_from_row(rows[0])
    if current.status.terminal or JobStatus(rows[0]["job_status"]).terminal:
        return ProgressResult(progress, 0, current)
    completed, failed = progress.completed, progress.failed
    if progress.completed_keys:
        completed += yield Execute("claim_stage_keys", key | {"keys": [*progress.completed_keys]})
    if progress.failed_keys:
        failed += yield Execute("claim_stage_keys", key | {"keys": [*progress.failed_keys]})
    if completed + failed == 0:
        return ProgressResult(progress, 0, current)
    rows = yield Fetch("increment", key | {"completed": completed, "failed": failed, "now": now})
    counted = yield from _counted(progress.job_id, progress.stage, rows)
    return ProgressResult(progress, completed + failed, counted.stage, counted.job_status)


def _counted(job_id: str, stage: str, rows: Sequence[Mapping[str, Any]]) -> Plan[Increment]:
    """What the increment statement's rows say it did: nothing counted (the
    stage or job is terminal) when none came back."""
    if not rows:
        yield from lock_job(job_id)
        return Increment(counted=False, stage=(yield from lock_stage(job_id, stage)))
    counted = stage_from_row(rows[0])
    if not counted.status.terminal:
        return Increment(counted=True, stage=counted)
    # The triggers have re-derived the job's status; read what they wrote.
    job = yield from lock_job(job_id)
    return Increment(counted=True, stage=counted, job_status=JobStatus(job["status"]))
