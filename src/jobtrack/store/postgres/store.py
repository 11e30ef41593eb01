"""The PostgreSQL job store (``postgresql://…``), on psycopg 3 with a pool.

The per-item increment is one round trip: ``jobtrack_add`` (in the
migration) locks the job row, claims the item key, counts the
items with the stage rules in an ``UPDATE … RETURNING`` and re-derives the
job's status when the stage changed. Taking the job's row lock first orders
every writer of one job, so the re-derivation sees the other stages as
committed: two stages finishing at once complete the job exactly once. The
rarer writes (totals, seals, reconciliation) lock the job, then the stage,
and apply :mod:`jobtrack.model.rules` in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
import psycopg_pool
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from jobtrack.errors import (
    InvalidRequest,
    JobNotFound,
    StageNotFound,
    StoreError,
    StoreUnavailable,
)
from jobtrack.model import (
    Clock,
    Job,
    JobEvent,
    JobStatus,
    Stage,
    StageCounts,
    StageStatus,
    check_increment,
    default_completed,
    new_id,
    raise_total,
    seal_total,
    set_counts,
    start_stage,
    utc_now,
)
from jobtrack.store.base import (
    CHANGES_LIMIT,
    EVENTS_LIMIT,
    STUCK_QUERY_LIMIT,
    Increment,
    JobQuery,
    ProgressResult,
    StageProgress,
    StoreStats,
    as_progress,
    check_end_status,
    check_event,
    check_unmoved,
    merge_screened,
    screen_progress,
    validate_new_job,
)
from jobtrack.store.postgres.conninfo import check_url, refusal
from jobtrack.store.sql import load_queries, migrations

__all__ = ["PostgresJobStore"]

_Q = load_queries("jobtrack.store.postgres")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # before every updated_at: find_stuck with no lower bound
_STAGE_STATUS = {status.value: status for status in StageStatus}
_MIGRATION_LOCK = 0x6A6F62747261636B  # "jobtrack": one migrator at a time
_Connection = psycopg.AsyncConnection[TupleRow]


class PostgresJobStore:
    """A :class:`~jobtrack.store.base.JobStore` on PostgreSQL.

    :raises ConfigurationError: for a URL that can never connect (here), and
        from the first operation for a login or database the server refuses.
    """

    backend: ClassVar[str] = "postgres"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
        clock: Clock = utc_now,
    ) -> None:
        check_url(url)
        self.url = url
        self._clock = clock
        self._pool: psycopg_pool.AsyncConnectionPool[_Connection] = (
            psycopg_pool.AsyncConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                open=False,
                kwargs={"autocommit": True},
                # A connection left broken by a server restart is replaced
                # before use, not handed out to fail once.
                check=psycopg_pool.AsyncConnectionPool.check_connection,
            )
        )
        self._ready = False
        self._opening = asyncio.Lock()
        self._timeout = timeout
        self._hot: _Connection | None = None
        self._closed = False
        self._hot_lock = asyncio.Lock()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        """A pooled connection, with driver errors translated once, here."""
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        try:
            if not self._ready:
                await self._open()
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc) from exc

    async def _open(self) -> None:
        async with self._opening:
            if self._ready:
                return
            # One connection of our own first: the pool would retry a refused
            # login or a missing database in the background until its timeout.
            first = await self._first_connection()
            await self._pool.open(wait=False)
            if first is None:  # unreachable for now: the pool waits for the server
                async with self._pool.connection() as conn:
                    await migrate(conn, "jobs", "jobtrack.store.postgres.migrations")
            else:
                try:
                    await migrate(first, "jobs", "jobtrack.store.postgres.migrations")
                finally:
                    await first.close()
            self._ready = True

    async def _first_connection(self) -> _Connection | None:
        """A connection, or None if the server is away; a configuration error
        (login refused, no such database) raises."""
        try:
            return await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.url, autocommit=True), self._timeout
            )
        except TimeoutError:
            return None
        except psycopg.OperationalError as exc:
            refused = refusal(exc, self.url)
            if refused is not None:
                raise refused from exc
            return None

    async def create_job(
        self,
        job_type: str,
        stages: Sequence[str],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a pending job with these stages, in this order."""
        validate_new_job(job_type, stages, attributes)
        job_id = new_id()
        async with self.connection() as conn, conn.transaction():
            await conn.execute(
                _Q["insert_job"],
                {
                    "id": job_id,
                    "job_type": job_type,
                    "attributes": Jsonb(dict(attributes or {})),
                    "now": self._clock(),
                },
            )
            await conn.execute(_Q["insert_stages"], {"job_id": job_id, "names": list(stages)})
        return await self.get_job(job_id)

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now."""
        async with self.connection() as conn:
            row = await (await conn.execute(_Q["get_job"], {"job_id": job_id})).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            return (await self._with_stages(conn, [row]))[0]

    async def list_jobs(self, query: JobQuery | None = None) -> list[Job]:
        """Jobs matching the query, newest first."""
        query = query or JobQuery()
        sql = (
            "SELECT id, job_type, status, attributes, message, created_at, updated_at,"
            " completed_at FROM jobs"
            " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
            " AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)"
            " ORDER BY created_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s"
        )
        params = {
            "status": None if query.status is None else query.status.value,
            "job_type": query.job_type,
            "limit": query.limit,
            "offset": query.offset,
        }
        async with self.connection() as conn:
            rows = await (await conn.execute(sql, params)).fetchall()
            return await self._with_stages(conn, rows)

    async def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        """Count finished items in one round trip; at most once per item key."""
        completed = default_completed(completed, failed)
        check_increment(completed, failed)
        p = as_progress(job_id, stage, completed, failed, item_key)
        params = (
            job_id,
            stage,
            p.completed,
            p.failed,
            list(p.completed_keys),
            list(p.failed_keys),
            self._clock(),
        )
        row = await self._hot_fetch(_Q["add"], params)
        if row[0] != "ok":
            raise JobNotFound(job_id) if row[0] == "no_job" else StageNotFound(job_id, stage)
        ended = None if row[11] is None else JobStatus(row[11])
        return Increment(row[1] > 0, _stage(row[2:11]), ended)

    async def _hot_fetch(self, sql: str, params: Sequence[Any]) -> TupleRow:
        """One row from one statement, on a connection kept out of the pool for
        the per-item path, so that a loop of increments pays no pool checkout;
        a caller arriving while it is busy takes a pooled connection instead."""
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        if self._hot_lock.locked():
            async with self.connection() as conn:
                row = await (await conn.execute(sql, params, prepare=True)).fetchone()
        else:
            async with self._hot_lock:
                try:
                    if self._hot is None or self._hot.closed:
                        if not self._ready:
                            await self._open()
                        self._hot = await psycopg.AsyncConnection.connect(
                            self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
                        )
                    row = await (await self._hot.execute(sql, params, prepare=True)).fetchone()
                except psycopg.Error as exc:
                    await self._drop_hot()
                    raise _translate(exc) from exc
        assert row is not None  # the function always returns one row
        return row

    async def _drop_hot(self) -> None:
        if self._hot is not None:
            await self._hot.close()
            self._hot = None

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """Apply many stages' progress in one round trip (``jobtrack_add_many``),
        jobs locked in id order so that concurrent flushes never deadlock. An
        entry no backend can store (a NUL character in a job id, say, which
        PostgreSQL text refuses) is refused alone, before the call."""
        screened = screen_progress(batch)
        todo = [p for p, r in zip(batch, screened, strict=True) if r is None]
        if not todo:
            return merge_screened(screened, [])
        ordered = sorted(range(len(todo)), key=lambda i: (todo[i].job_id, todo[i].stage))
        entries = [todo[i] for i in ordered]
        ckeys, cstart, ccount = _flatten([p.completed_keys for p in entries])
        fkeys, fstart, fcount = _flatten([p.failed_keys for p in entries])
        params = (
            [p.job_id for p in entries],
            [p.stage for p in entries],
            [p.completed for p in entries],
            [p.failed for p in entries],
            ckeys,
            cstart,
            ccount,
            fkeys,
            fstart,
            fcount,
            self._clock(),
        )
        async with self.connection() as conn:
            rows = await (await conn.execute(_Q["add_many"], params, prepare=True)).fetchall()
        results: list[ProgressResult | None] = [None] * len(todo)
        for index, row in zip(ordered, rows, strict=True):
            results[index] = _result(todo[index], row)
        return merge_screened(screened, [r for r in results if r is not None])

    async def raise_total(self, job_id: str, stage: str, *, by: int) -> Stage:
        """Add ``by`` items to the stage's (unsealed) total."""
        return await self._change(job_id, stage, lambda s, now: raise_total(s, now, by=by))

    async def seal_total(self, job_id: str, stage: str, *, total: int | None = None) -> Stage:
        """Make the stage's total final; it may complete at once."""
        return await self._change(job_id, stage, lambda s, now: seal_total(s, now, total=total))

    async def start_stage(self, job_id: str, stage: str, *, message: str | None = None) -> Stage:
        """Mark a stage as started (and set its message)."""
        return await self._change(
            job_id, stage, lambda s, now: start_stage(s, now, message=message)
        )

    async def end_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        message: str = "",
        if_updated_at: datetime | None = None,
    ) -> Job:
        """Complete, fail or cancel a job; a job already ended stays as it is."""
        check_end_status(status)
        params: dict[str, Any] = {"job_id": job_id, "status": status.value, "message": message}
        params |= {"now": self._clock(), "if_updated_at": if_updated_at}
        async with self.connection() as conn, conn.transaction():
            ended = await conn.execute(_Q["end_job"], params)
            if ended.rowcount:
                await conn.execute(_Q["forget_keys"], params)
            elif if_updated_at is not None:
                cursor = await conn.execute(_Q["lock_job_updated_at"], {"job_id": job_id})
                row = await cursor.fetchone()
                if row is not None:
                    check_unmoved(job_id, row[1], if_updated_at)
        return await self.get_job(job_id)

    async def end_job_if_active(
        self, job_id: str, status: JobStatus, *, message: str = ""
    ) -> tuple[Job, bool]:
        """End a job that has not ended; the job after the call, and whether
        this call ended it. A concurrent writer holding the job's row lock
        is waited for, not a conflict; of two ends racing, the second finds
        the job ended when the first commits and changes nothing."""
        check_end_status(status)
        params: dict[str, Any] = {"job_id": job_id, "status": status.value, "message": message}
        params["now"] = self._clock()
        async with self.connection() as conn, conn.transaction():
            ended = await conn.execute(_Q["end_job_if_active"], params)
            changed = await ended.fetchone() is not None
            if changed:
                await conn.execute(_Q["forget_keys"], params)
            row = await (await conn.execute(_Q["get_job"], params)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            return (await self._with_stages(conn, [row]))[0], changed

    async def list_changed(
        self, *, after: tuple[datetime, str] | None = None, limit: int = CHANGES_LIMIT
    ) -> list[Job]:
        """Jobs written after ``after``, oldest write first (the change feed)."""
        params = {
            **_position(after),
            "limit": limit,
        }
        async with self.connection() as conn:
            rows = await (await conn.execute(_Q["list_changed"], params)).fetchall()
            return await self._with_stages(conn, rows)

    async def count_items(self, job_type: str, stage: str) -> int:
        """Items of ``stage`` counted over every job of ``job_type``."""
        async with self.connection() as conn:
            cursor = await conn.execute(_Q["count_items"], {"job_type": job_type, "stage": stage})
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])

    async def last_change(self) -> tuple[datetime, str] | None:
        """The position of the newest write."""
        async with self.connection() as conn:
            row = await (await conn.execute(_Q["last_change"])).fetchone()
        return None if row is None else (row[0], row[1])

    async def stats(self, *, stuck_before: datetime) -> StoreStats:
        """Totals across the store, for metrics."""
        async with self.connection() as conn:
            jobs = await (await conn.execute(_Q["stats_jobs"])).fetchall()
            items = await (await conn.execute(_Q["stats_items"])).fetchall()
            events = await (await conn.execute(_Q["stats_events"])).fetchall()
            stuck = await (
                await conn.execute(_Q["stats_stuck"], {"before": stuck_before})
            ).fetchone()
            waiting = await (await conn.execute(_Q["stats_waiting"])).fetchone()
        return StoreStats.from_rows(
            jobs, items, events, stuck[0] if stuck else 0, waiting[0] if waiting else 0
        )

    async def find_stuck(
        self,
        job_type: str,
        *,
        updated_before: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = STUCK_QUERY_LIMIT,
    ) -> list[Job]:
        """Active jobs of this type not updated since ``updated_before``, oldest first."""
        params = {
            "job_type": job_type,
            "before": updated_before,
            **_position(after),
            "limit": limit,
        }
        async with self.connection() as conn:
            rows = await (await conn.execute(_Q["find_stuck"], params)).fetchall()
            return await self._with_stages(conn, rows)

    async def set_counts(
        self,
        job_id: str,
        counts: Mapping[str, StageCounts],
        *,
        keys: Mapping[str, Collection[str]] | None = None,
        if_updated_at: datetime | None = None,
    ) -> Job:
        """Set stage counts to the ground truth, up or down (and, with ``keys``,
        each named stage's counted keys to exactly those), in one transaction."""
        now = self._clock()
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(_Q["lock_job_updated_at"], {"job_id": job_id})
            row = await cursor.fetchone()
            if row is None:
                raise JobNotFound(job_id)
            status = str(row[0])
            check_unmoved(job_id, row[1], if_updated_at)
            changed = [
                set_counts(await self._lock_stage(conn, job_id, name), now, truth)
                for name, truth in counts.items()
            ]
            for name, stage_keys in (keys or {}).items():
                await self._lock_stage(conn, job_id, name)
                params: dict[str, Any] = {"job_id": job_id, "stage": name}
                await conn.execute(_Q["forget_stage_keys"], params)
                if not JobStatus(status).terminal:
                    # Before the counts: a job they end forgets its keys.
                    params["keys"] = list(stage_keys)
                    await conn.execute(_Q["claim_stage_keys"], params)
            for stage in changed:
                await self._write_stage(conn, job_id, stage)
            await conn.execute(_Q["touch_and_settle"], {"job_id": job_id, "now": now})
        return await self.get_job(job_id)

    async def claim_stuck(self, job_id: str, updated_at: datetime) -> datetime | None:
        """Touch an active job still at ``updated_at``; its new ``updated_at``, or None."""
        now = self._clock()
        params = {"job_id": job_id, "expected": updated_at, "now": now}
        async with self.connection() as conn:
            cursor = await conn.execute(_Q["claim_stuck"], params)
        return now if cursor.rowcount == 1 else None

    async def add_event(
        self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        """Append an entry to the job's history."""
        message = check_event(kind, message)
        now = self._clock()
        payload = dict(data or {})
        params = {"job_id": job_id, "at": now, "kind": kind, "message": message}
        async with self.connection() as conn:
            cursor = await conn.execute(_Q["add_event"], params | {"data": Jsonb(payload)})
            row = await cursor.fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobEvent(job_id, now, kind, message, payload, row[0])

    async def list_events(self, job_id: str, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The job's last ``limit`` events, oldest first."""
        await self.get_job(job_id)
        async with self.connection() as conn:
            cursor = await conn.execute(
                _Q["list_events"], {"job_id": job_id, "limit": max(limit, 0)}
            )
            rows = await cursor.fetchall()
        return [JobEvent(r[1], r[2], r[3], r[4], r[5], r[0]) for r in rows]

    async def recent_events(self, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The last ``limit`` events of every job, newest first."""
        async with self.connection() as conn:
            cursor = await conn.execute(_Q["recent_events"], {"limit": max(limit, 0)})
            rows = await cursor.fetchall()
        return [JobEvent(r[1], r[2], r[3], r[4], r[5], r[0]) for r in rows]

    async def aclose(self) -> None:
        """Close the pool and the per-item connection."""
        self._closed = True
        await self._drop_hot()
        await self._pool.close()

    async def _change(
        self, job_id: str, stage: str, change: Callable[[Stage, datetime], Stage]
    ) -> Stage:
        now = self._clock()
        async with self.connection() as conn, conn.transaction():
            await self._lock_job(conn, job_id)
            changed = change(await self._lock_stage(conn, job_id, stage), now)
            await self._write_stage(conn, job_id, changed)
            await conn.execute(_Q["touch_and_settle"], {"job_id": job_id, "now": now})
        return changed

    async def _lock_job(self, conn: _Connection, job_id: str) -> str:
        row = await (await conn.execute(_Q["lock_job"], {"job_id": job_id})).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return str(row[0])

    async def _lock_stage(self, conn: _Connection, job_id: str, stage: str) -> Stage:
        params = {"job_id": job_id, "stage": stage}
        row = await (await conn.execute(_Q["lock_stage"], params)).fetchone()
        if row is None:
            raise StageNotFound(job_id, stage)
        return _stage(row)

    async def _write_stage(self, conn: _Connection, job_id: str, stage: Stage) -> None:
        await conn.execute(
            _Q["put_stage"],
            {
                "job_id": job_id,
                "name": stage.name,
                "status": stage.status.value,
                "total_items": stage.total_items,
                "completed_items": stage.completed_items,
                "failed_items": stage.failed_items,
                "total_final": stage.total_final,
                "message": stage.message,
                "started_at": stage.started_at,
                "completed_at": stage.completed_at,
            },
        )

    async def _with_stages(self, conn: _Connection, rows: Sequence[TupleRow]) -> list[Job]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        stage_rows = await (await conn.execute(_Q["get_stages"], {"job_ids": ids})).fetchall()
        by_job: dict[str, list[Stage]] = {job_id: [] for job_id in ids}
        for stage_row in stage_rows:
            by_job[stage_row[0]].append(_stage(stage_row[1:]))
        return [_job(row, by_job[row[0]]) for row in rows]


async def migrate(conn: _Connection, component: str, package: str) -> list[int]:
    """Apply the migrations of ``package`` not yet applied for ``component``,
    one migrator at a time (an advisory lock); returns the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component text NOT NULL, version integer NOT NULL, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
        cursor = await conn.execute(
            "SELECT version FROM schema_migrations WHERE component = %s", (component,)
        )
        done = {row[0] for row in await cursor.fetchall()}
        for migration in migrations(package):
            if migration.version in done:
                continue
            await conn.execute(migration.read().encode())
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, name) VALUES (%s, %s, %s)",
                (component, migration.version, migration.name),
            )
            applied.append(migration.version)
    return applied


def _position(after: tuple[datetime, str] | None) -> dict[str, Any]:
    """A keyset position ``(updated_at, id)`` as query parameters; None:
    before every job."""
    return {"after": _EPOCH if after is None else after[0], "after_id": after[1] if after else ""}


def _translate(exc: psycopg.Error | psycopg_pool.PoolTimeout) -> StoreError | InvalidRequest:
    """The jobtrack error for a driver error: the server unreachable or the
    pool exhausted are :class:`StoreUnavailable`; data PostgreSQL cannot
    hold (a NUL in a text, a value out of range: ``DataError``) is the
    caller's :class:`InvalidRequest`, which no retry would mend."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        return StoreUnavailable(f"PostgreSQL unavailable: {exc}")
    if isinstance(exc, psycopg.DataError):
        return InvalidRequest(f"PostgreSQL refused the data: {exc}")
    return StoreError(f"PostgreSQL error: {exc}")


def _flatten(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[int], list[int]]:
    """Ragged key lists as one array, with each group's 1-based start and length."""
    flat: list[str] = []
    starts, counts = [], []
    for group in groups:
        starts.append(len(flat) + 1)
        counts.append(len(group))
        flat.extend(group)
    return flat, starts, counts


def _result(progress: StageProgress, row: Sequence[Any]) -> ProgressResult:
    found = row[0]
    if found == "no_job":
        return ProgressResult(progress, 0, None, missing=JobNotFound(progress.job_id))
    if found == "no_stage":
        refused = StageNotFound(progress.job_id, progress.stage)
        return ProgressResult(progress, 0, None, missing=refused)
    ended = None if row[11] is None else JobStatus(row[11])
    return ProgressResult(progress, row[1], _stage(row[2:11]), ended)


def _stage(row: Sequence[Any]) -> Stage:
    return Stage(
        name=row[0],
        status=_STAGE_STATUS[row[1]],
        total_items=row[2],
        completed_items=row[3],
        failed_items=row[4],
        total_final=row[5],
        message=row[6],
        started_at=row[7],
        completed_at=row[8],
    )


def _job(row: Sequence[Any], stages: list[Stage]) -> Job:
    return Job(
        id=row[0],
        job_type=row[1],
        status=JobStatus(row[2]),
        attributes=row[3],
        message=row[4],
        created_at=row[5],
        updated_at=row[6],
        completed_at=row[7],
        stages={stage.name: stage for stage in stages},
    )
