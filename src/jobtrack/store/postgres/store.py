"""The PostgreSQL job store (``postgresql://…``), on psycopg 3 with a pool.

The job operations are :mod:`jobtrack.store.sqlcore`'s plans, each driven
with ``await``: a write in one transaction on one pooled connection; a read
statement by statement on the store's direct connection (kept out of the
pool, its statements prepared, as the per-item increment's; a pooled one
when it is busy), so that reading a job, one query, is one round trip.
The rarer writes (totals, seals, reconciliation) lock the job, then the
stage, and apply :mod:`jobtrack.model.rules`. What is PostgreSQL's own: the
per-item increment, one round trip: ``jobtrack_add`` (in the migration)
locks the job row, claims the item key, counts the items with the stage
rules in an ``UPDATE … RETURNING`` and re-derives the job's status when the
stage changed. Taking the job's row lock first orders every writer of one
job, so the re-derivation sees the other stages as committed: two stages
finishing at once complete the job exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from jobtrack.errors import InvalidRequest, JobNotFound, StageNotFound, StoreError, StoreUnavailable
from jobtrack.model import Clock, JobStatus, utc_now
from jobtrack.store.base import (
    Increment,
    ProgressResult,
    StageProgress,
    increment_progress,
    merge_screened,
    screen_progress,
)
from jobtrack.store.postgres.conninfo import check_url, refusal
from jobtrack.store.sql import load_queries, migrations
from jobtrack.store.sqlcore import (
    Codec,
    Execute,
    Fetch,
    Plan,
    Request,
    Row,
    SqlJobStore,
    drive_async,
    stage_from_row,
)

__all__ = ["PostgresJobStore"]

_Q = load_queries("jobtrack.store.postgres")
_MIGRATION_LOCK = 0x6A6F62747261636B  # "jobtrack": one migrator at a time
_Connection = psycopg.AsyncConnection[Any]
_IDLE = psycopg.pq.TransactionStatus.IDLE
_T = TypeVar("_T")


class PostgresCodec(Codec):
    """PostgreSQL holds times, booleans and arrays natively; JSON as jsonb."""

    def encode(self, value: Any) -> Any:
        """A parameter as psycopg adapts it."""
        return Jsonb(value) if isinstance(value, dict) else value


class PostgresConnector:
    """Drives plans on the connections of a :class:`PostgresJobStore`."""

    codec: Codec = PostgresCodec()

    def __init__(self, store: PostgresJobStore) -> None:
        self._store = store

    async def run(self, plan: Plan[_T], *, write: bool = True) -> _T:
        """The plan, whole: to write, in one transaction on a pooled
        connection; to read, its statements as they come, each its own
        transaction, on the store's direct connection when it is free (see
        :meth:`PostgresJobStore.read`). Raises what the plan raises, and
        driver errors as jobtrack's."""
        if not write:
            return await self._store.read(plan)
        async with self._store.connection() as conn, conn.transaction():
            return await drive_async(plan, lambda request: execute(conn, request))

    async def fetch(self, request: Fetch) -> list[Row]:
        """The rows of one query, in one round trip on the direct connection
        when it is free (see :meth:`PostgresJobStore.read`); raises driver
        errors as jobtrack's."""
        rows: list[Row] = await self._store.read(_fetch(request))
        return rows


def _fetch(request: Fetch) -> Plan[list[Row]]:
    rows: list[Row] = yield request
    return rows


async def execute(conn: _Connection, request: Request, *, prepare: bool | None = None) -> Any:
    """One request on ``conn``: its rows, or how many rows it changed.
    ``prepare`` as psycopg's (None: prepared once run often)."""
    codec = PostgresConnector.codec
    params = {name: codec.encode(value) for name, value in request.params.items()}
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(_Q[request.name], params, prepare=prepare)
    if isinstance(request, Execute):
        return cursor.rowcount
    return await cursor.fetchall()


class PostgresJobStore(SqlJobStore):
    """A :class:`~jobtrack.store.base.JobStore` on PostgreSQL.

    ``free_first`` (False): every batch of :meth:`add_progress` is one
    transaction; True: a keyed batch's entries of the jobs no other
    transaction holds go first, in a transaction of their own, then the
    rest (see there). It measured no better on a quiet machine
    (docs/SCALING.md), so it is off by default.

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
        super().__init__(PostgresConnector(self), clock)
        self.url = url
        self._pool: psycopg_pool.AsyncConnectionPool[_Connection] = (
            psycopg_pool.AsyncConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                open=False,
                kwargs={"autocommit": True},
                configure=_configure,
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
        self.free_first = False

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
                except BaseException:
                    await first.close()
                    raise
                # Kept as the direct connection: the first read or increment
                # (a command's only one, often) has one ready.
                if self._hot is None and not self._closed:
                    self._hot = first
                else:
                    await first.close()
            self._ready = True

    async def _first_connection(self) -> _Connection | None:
        """A connection, or None if the server is away; a configuration error
        (login refused, no such database) raises."""
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.url, autocommit=True), self._timeout
            )
        except TimeoutError:
            return None
        except psycopg.OperationalError as exc:
            refused = refusal(exc, self.url)
            if refused is not None:
                raise refused from exc
            return None
        try:
            await _configure(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

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
        p = increment_progress(job_id, stage, completed, failed, item_key)
        params = {
            "job_id": job_id,
            "stage": stage,
            "completed": p.completed,
            "failed": p.failed,
            "completed_keys": list(p.completed_keys),
            "failed_keys": list(p.failed_keys),
            "now": self._clock(),
        }
        return _result(p, await self._hot_fetch(_Q["add"], params)).as_increment()

    async def _hot_fetch(self, sql: str, params: Mapping[str, Any]) -> DictRow:
        """One row from one statement, on the direct connection (see
        :meth:`read`), so that a loop of increments pays no pool checkout;
        a caller arriving while it is busy takes a pooled connection instead."""
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        if self._hot_lock.locked():
            async with self.connection() as conn:
                cursor = conn.cursor(row_factory=dict_row)
                row = await (await cursor.execute(sql, params, prepare=True)).fetchone()
        else:
            async with self._hot_lock:
                try:
                    cursor = (await self._hot_connection()).cursor(row_factory=dict_row)
                    row = await (await cursor.execute(sql, params, prepare=True)).fetchone()
                except psycopg.Error as exc:
                    await self._drop_hot()
                    raise _translate(exc) from exc
                except BaseException:
                    await self._drop_hot_if_busy()
                    raise
        assert row is not None  # the function always returns one row
        return row

    async def read(self, plan: Plan[_T]) -> _T:
        """Drive a read ``plan``: its statements as they come, each its own
        transaction (autocommit), on the store's direct connection when no
        other caller holds it, else on a pooled connection.

        The direct connection is kept out of the pool and its statements are
        prepared: a statement is one round trip, with no pool checkout and
        no check of the connection before it. A statement that finds it
        broken (the server restarted since, say) runs again on a pooled
        connection, which the pool checks first: a read is safe to repeat.

        :raises StoreUnavailable: the server is unreachable.
        :raises InvalidRequest: for data PostgreSQL refuses (a NUL in a text).
        :raises StoreError: the store is closed, or another driver error.
        """
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        if self._hot_lock.locked():
            async with self.connection() as conn:
                return await drive_async(plan, lambda request: execute(conn, request))
        async with self._hot_lock:
            return await drive_async(plan, self._direct_read)

    async def _direct_read(self, request: Request) -> Any:
        """One statement of a read on the direct connection (the caller holds
        its lock), or again on a pooled one if the direct one broke."""
        try:
            return await execute(await self._hot_connection(), request, prepare=True)
        except psycopg.Error as exc:
            if self._hot is not None and not self._hot.closed:
                await self._drop_hot_if_busy()
                raise _translate(exc) from exc
            await self._drop_hot()
        except BaseException:  # cancelled mid-statement, say
            await self._drop_hot_if_busy()
            raise
        async with self.connection() as conn:
            return await execute(conn, request)

    async def _hot_connection(self) -> _Connection:
        """The direct connection, connected (and the schema migrated) first
        if need be; the caller holds ``_hot_lock``."""
        if not self._ready:
            await self._open()  # which keeps its first connection as the direct one
        if self._hot is None or self._hot.closed:
            hot = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
            try:
                await _configure(hot)
            except BaseException:
                await hot.close()
                raise
            self._hot = hot
        return self._hot

    async def _drop_hot(self) -> None:
        if self._hot is not None:
            await self._hot.close()
            self._hot = None

    async def _drop_hot_if_busy(self) -> None:
        """Close the direct connection unless it is idle: a statement left
        running or a result left unread would fail the next caller's."""
        if self._hot is not None and self._hot.info.transaction_status != _IDLE:
            await self._drop_hot()

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """Apply many stages' progress (``jobtrack_flush``: ``jobtrack_add_many``,
        on cached plans for a small batch), jobs locked in id order so that
        concurrent flushes never deadlock. An entry no backend can store (a
        NUL character in a job id, say, which PostgreSQL text refuses) is
        refused alone, before the call.

        With :attr:`free_first`, a batch whose entries all count by key
        only is written in two
        transactions: first the entries of the jobs no other transaction
        holds at the time (found with a ``SKIP LOCKED`` read whose locks
        end with it), then the others. The first hardly ever waits for
        another flush, and the second waits holding only its own jobs'
        locks: a flush then no longer holds the locks of thousands of jobs
        while it waits for one, which made every concurrent flush wait for
        it in turn. Each transaction claims its keys before it locks its
        jobs, as one does. Should the second fail, the error is raised and
        the caller writes the whole batch again: the keys the first counted
        count nothing the second time. A batch with bare counts, which a
        second write would count again, is one transaction.
        """
        screened = screen_progress(batch)
        todo = [p for p, r in zip(batch, screened, strict=True) if r is None]
        if not todo:
            return merge_screened(screened, [])
        results: list[ProgressResult | None] = [None] * len(todo)
        keyed = self.free_first and all(not p.completed and not p.failed for p in todo)
        async with self.connection() as conn:
            if not keyed:
                await self._flush(conn, todo, range(len(todo)), results)
            else:
                jobs = sorted({p.job_id for p in todo})
                cursor = await conn.execute(_Q["free_jobs"], (jobs,), prepare=True)
                free = {row[0] for row in await cursor.fetchall()}
                first = [i for i, p in enumerate(todo) if p.job_id in free]
                await self._flush(conn, todo, first, results)
                rest = [i for i, p in enumerate(todo) if p.job_id not in free]
                await self._flush(conn, todo, rest, results)
        return merge_screened(screened, [r for r in results if r is not None])

    async def _flush(
        self,
        conn: _Connection,
        todo: Sequence[StageProgress],
        chosen: Sequence[int],
        results: list[ProgressResult | None],
    ) -> None:
        """``jobtrack_flush`` of the entries ``chosen`` of ``todo``, in
        (job, stage) order; their results put at their places in ``results``."""
        if not chosen:
            return
        ordered = sorted(chosen, key=lambda i: (todo[i].job_id, todo[i].stage))
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
        cursor = conn.cursor(row_factory=dict_row)
        rows = await (await cursor.execute(_Q["add_many"], params, prepare=True)).fetchall()
        for index, row in zip(ordered, rows, strict=True):
            results[index] = _result(todo[index], row)

    async def aclose(self) -> None:
        """Close the pool and the per-item connection."""
        self._closed = True
        await self._drop_hot()
        await self._pool.close()


async def migrate(conn: _Connection, component: str, package: str) -> list[int]:
    """Apply the migrations of ``package`` not yet applied for ``component``,
    one migrator at a time (an advisory lock); returns the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(_Q["migration_lock"], {"lock": _MIGRATION_LOCK})
        await conn.execute(_Q["migrations_table"])
        cursor = await conn.execute(_Q["migrations_applied"], {"component": component})
        done = {row[0] for row in await cursor.fetchall()}
        for migration in migrations(package):
            if migration.version in done:
                continue
            await conn.execute(migration.read().encode())
            params = {"component": component, "version": migration.version}
            await conn.execute(_Q["migration_record"], params | {"name": migration.name})
            applied.append(migration.version)
    return applied


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


def _result(progress: StageProgress, row: DictRow) -> ProgressResult:
    """What ``jobtrack_add`` said of one entry."""
    if row["found"] == "no_job":
        return ProgressResult(progress, 0, None, missing=JobNotFound(progress.job_id))
    if row["found"] == "no_stage":
        refused = StageNotFound(progress.job_id, progress.stage)
        return ProgressResult(progress, 0, None, missing=refused)
    ended = None if row["job_status"] is None else JobStatus(row["job_status"])
    return ProgressResult(progress, row["counted"], stage_from_row(row), ended)


async def _configure(conn: _Connection) -> None:
    """Settings of every connection of the store: no JIT compilation. The
    store's statements are short; JIT, which the planner starts on a cost
    estimate, took most of the overview's count (``count_by_type``) at
    10,000 jobs (about 340 of 360 ms) and helps none of them."""
    await conn.execute("SET jit = off")
