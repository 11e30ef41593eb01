"""The job operations of the SQL stores, written once over a connector.

Each operation is a *plan*: a generator that yields query requests
(:class:`Fetch`, :class:`Execute`: a named query of the engine's
``queries.sql`` and its parameters) and is sent back their rows or row
count. A connector drives a plan whole: SQLite's synchronously on its
database thread, in one ``BEGIN IMMEDIATE`` to write (a deferred ``BEGIN``
to read; one hop per operation); PostgreSQL's with ``await`` on one
connection, in one transaction to write (a read's statements each on their
own). The reads of jobs (``get_job``, ``list_jobs``, ``find_stuck``) are no
plans but one query each, the jobs' rows joined with their stages' (one row
per stage, :func:`jobs_from_rows`), which a connector runs alone
(:meth:`Connector.fetch`) outside any explicit transaction: one statement
reads one snapshot, and on PostgreSQL takes one round trip. What truly
differs per engine stays in the backends: the increment and flush
statements, migrations, indexes, error translation, pooling.

Rows are mappings by column name, decoded by the engine's :class:`Codec`
(times, booleans, JSON), so a query may reorder or add columns freely.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from jobtrack.errors import InvalidRequest, JobNotFound, StageNotFound
from jobtrack.model import (
    Clock,
    Job,
    JobEvent,
    JobStatus,
    Stage,
    StageCounts,
    StageStatus,
    new_id,
    raise_total,
    seal_total,
    set_counts,
)
from jobtrack.store.base import (
    CHANGES_LIMIT,
    EVENTS_LIMIT,
    MAX_EVENT_MESSAGE,
    STUCK_QUERY_LIMIT,
    ChangeCursor,
    Changes,
    Ended,
    JobQuery,
    StageWrites,
    StoreStats,
    check_end_status,
    check_event,
    check_unmoved,
    key_problem,
    validate_new_job,
)
from jobtrack.store.ledger import (
    ItemFailure,
    LedgerItem,
    LedgerTally,
    check_items,
    check_outcomes,
    storable_error,
)
from jobtrack.store.overview import (
    SearchField,
    TypeCounts,
    Watched,
    WatchQuery,
    like_pattern,
)
from jobtrack.store.workers import (
    StageCount,
    ThroughputPoint,
    WorkerBeat,
    WorkerInfo,
    bucket_start,
    check_beat,
    sorted_workers,
)

__all__ = [
    "Codec",
    "Connector",
    "Execute",
    "Fetch",
    "Plan",
    "Request",
    "Row",
    "SqlJobStore",
    "drive",
    "drive_async",
    "job_from_row",
    "jobs_from_rows",
    "lock_job",
    "lock_stage",
    "stage_from_row",
]

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # before every updated_at: find_stuck from the start
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run the named query; the plan is sent its rows (a list of :data:`Row`)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Execute:
    """Run the named statement; the plan is sent how many rows it changed."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


Request = Fetch | Execute
#: An operation: yields requests, is sent their results, returns its answer.
Plan = Generator[Request, Any, _T]


def drive(plan: Plan[_T], do: Callable[[Request], Any]) -> _T:
    """Run ``plan`` to its end, answering each request with ``do``; returns
    what the plan returns and raises what it (or ``do``) raises."""
    result: Any = None
    while True:
        try:
            request = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result = do(request)


async def drive_async(plan: Plan[_T], do: Callable[[Request], Any]) -> _T:
    """:func:`drive` with an async ``do`` (a coroutine function)."""
    result: Any = None
    while True:
        try:
            request = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result = await do(request)


class Codec:
    """How an engine holds times, booleans and JSON: parameters encoded on
    the way in, rows decoded by column name on the way out. This one holds
    them natively (PostgreSQL)."""

    TIMES: ClassVar[frozenset[str]] = frozenset(
        {
            "created_at",
            "updated_at",
            "completed_at",
            "started_at",
            "at",
            "added_at",
            "failed_at",
            "action_at",
            "stage_started_at",
            "stage_completed_at",
            "beat_at",
            "stopped_at",
            "last_error_at",
            "bucket_start",
        }
    )
    JSON: ClassVar[frozenset[str]] = frozenset({"attributes", "data", "payload", "action_data"})
    BOOLEANS: ClassVar[frozenset[str]] = frozenset({"total_final", "stage_total_final"})

    def encode(self, value: Any) -> Any:
        """A parameter as the engine takes it."""
        return value

    def decode(self, names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
        """A row as a mapping by column name, in Python's types."""
        return dict(zip(names, values, strict=True))


class Connector(Protocol):
    """Runs plans, and single queries, on its engine."""

    codec: Codec

    async def run(self, plan: Plan[_T], *, write: bool = True) -> _T:
        """Drive ``plan`` whole, in one transaction to write; raises what it
        raises, and the engine's errors as jobtrack's (``StoreUnavailable``
        when unreachable)."""
        ...

    async def fetch(self, request: Fetch) -> list[Row]:
        """The decoded rows of one query run alone, outside any explicit
        transaction (a statement reads one snapshot by itself); raises the
        engine's errors as jobtrack's, as :meth:`run` does."""
        ...


_STAGE_STATUS = {status.value: status for status in StageStatus}


def stage_from_row(row: Row, prefix: str = "") -> Stage:
    """A stage from a decoded row of the ``stages`` table, its columns named
    with ``prefix`` first (``stage_`` in a row joined with the job's)."""
    return Stage(
        name=row[prefix + "name"],
        status=_STAGE_STATUS[row[prefix + "status"]],
        total_items=row[prefix + "total_items"],
        completed_items=row[prefix + "completed_items"],
        failed_items=row[prefix + "failed_items"],
        total_final=row[prefix + "total_final"],
        message=row[prefix + "message"],
        started_at=row[prefix + "started_at"],
        completed_at=row[prefix + "completed_at"],
    )


def job_from_row(row: Row, stages: Sequence[Stage]) -> Job:
    """A job from a decoded row of the ``jobs`` table and its stages."""
    return Job(
        id=row["id"],
        job_type=row["job_type"],
        status=JobStatus(row["status"]),
        attributes=row["attributes"],
        message=row["message"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        seq=row["seq"],
        stages={stage.name: stage for stage in stages},
    )


def jobs_from_rows(rows: Sequence[Row]) -> list[Job]:
    """The jobs of a query that joins each job's row with its stages'
    (``stage_``-prefixed columns, NULL for a job without stages): one row
    per stage, a job's rows together and its stages in position order; the
    jobs in the order of their first rows."""
    jobs: dict[str, tuple[Row, list[Stage]]] = {}
    for row in rows:
        job = jobs.get(row["id"])
        if job is None:
            job = jobs[row["id"]] = (row, [])
        if row["stage_name"] is not None:
            job[1].append(stage_from_row(row, "stage_"))
    return [job_from_row(row, stages) for row, stages in jobs.values()]


class SqlJobStore(StageWrites):
    """The :class:`~jobtrack.store.base.JobStore` operations shared by the
    SQL backends; a backend adds ``increment``, ``add_progress`` and
    ``aclose`` over its own statements."""

    backend: ClassVar[str] = "sql"

    def __init__(self, connector: Connector, clock: Clock) -> None:
        self._connector = connector
        self._clock = clock

    async def create_job(
        self,
        job_type: str,
        stages: Sequence[str],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a pending job with these stages, in this order; raises
        :class:`~jobtrack.errors.InvalidRequest` for a job no backend stores."""
        validate_new_job(job_type, stages, attributes)
        return await self._connector.run(
            _create(new_id(), job_type, stages, dict(attributes or {}), self._clock())
        )

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now, read in one query; :class:`~jobtrack.errors.JobNotFound`
        if none."""
        return _one_job(job_id, await self._connector.fetch(_read_job(job_id)))

    async def list_jobs(self, query: JobQuery | None = None) -> list[Job]:
        """Jobs matching the query, newest first."""
        query = query or JobQuery()
        params = {
            "status": None if query.status is None else query.status.value,
            "job_type": query.job_type,
            "updated_since": query.updated_since,
            "limit": query.limit,
            "offset": query.offset,
            "search": query.search,
            # Ids are lowercase hex: the prefix matched whatever the term's case.
            "id_prefix": None if query.search is None else query.search.lower(),
            "active": query.active,
            "pattern": like_pattern(query.search or ""),
            "search_types": [field.job_type for field in query.search_fields],
            "search_paths": [self._search_path(field) for field in query.search_fields],
        }
        return jobs_from_rows(await self._connector.fetch(Fetch("list_jobs", params)))

    def _search_path(self, field: SearchField) -> str:
        """A searchable field's path as the engine's ``list_jobs`` takes it.
        This one: the dotted path (PostgreSQL splits it)."""
        return field.path

    async def _change(
        self, job_id: str, stage: str, change: Callable[[Stage, datetime], Stage]
    ) -> Stage:
        return await self._connector.run(_change(job_id, stage, change, self._clock()))

    async def end_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        message: str = "",
        if_seq: int | None = None,
    ) -> Ended:
        """Complete, fail or cancel a job; a job already ended stays as it
        is. Raises :class:`~jobtrack.errors.Conflict` when ``if_seq`` is
        given and the job was written since, ``InvalidRequest`` for a status
        that is no end, ``JobNotFound``."""
        check_end_status(status)
        return await self._connector.run(_end(job_id, status, message, self._clock(), if_seq))

    async def list_changed(
        self, *, after: ChangeCursor | None = None, limit: int = CHANGES_LIMIT
    ) -> Changes:
        """Jobs written after the cursor, in write (``seq``) order, and the
        cursor after them (the change feed)."""
        after = after or ChangeCursor(0)
        params = {"after": after.seq, "snapshot": after.snapshot or None, "limit": limit}
        return await self._connector.run(_changed(after, params), write=False)

    async def last_change(self) -> ChangeCursor:
        """The cursor after the newest write: where a change feed starts."""
        return await self._connector.run(_last_change(), write=False)

    async def count_items(self, job_type: str, stage: str) -> int:
        """Items of ``stage`` counted over every job of ``job_type``."""
        params = {"job_type": job_type, "stage": stage}
        return await self._connector.run(_value("count_items", params, "items"), write=False)

    async def stats(self, *, stuck_before: datetime) -> StoreStats:
        """Totals across the store, for metrics."""
        return await self._connector.run(_stats(stuck_before), write=False)

    async def find_stuck(
        self,
        job_type: str,
        *,
        updated_before: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = STUCK_QUERY_LIMIT,
    ) -> list[Job]:
        """Active jobs of this type not updated since ``updated_before``,
        oldest first; page with the last one's ``(updated_at, id)``."""
        params = {
            "job_type": job_type,
            "before": updated_before,
            "after": _EPOCH if after is None else after[0],
            "after_id": "" if after is None else after[1],
            "limit": limit,
        }
        return jobs_from_rows(await self._connector.fetch(Fetch("find_stuck", params)))

    async def claim_stuck(self, job_id: str, seq: int) -> int | None:
        """Touch an active job still at ``seq``; its new ``seq``, or None
        when it moved or ended meanwhile (another claimer won)."""
        return await self._connector.run(_claim(job_id, seq, self._clock()))

    async def set_counts(
        self,
        job_id: str,
        counts: Mapping[str, StageCounts],
        *,
        keys: Mapping[str, Collection[str]] | None = None,
        if_seq: int | None = None,
    ) -> Job:
        """Set stage counts to the ground truth, up or down (and, with
        ``keys``, each named stage's counted keys to exactly those), in one
        transaction that writes the job. Raises ``Conflict`` when ``if_seq``
        is given and the job was written since, ``NotFound`` for unknown
        names, ``InvalidRequest`` for negative counts."""
        plan = _set_counts(job_id, counts, keys or {}, if_seq, self._clock())
        return await self._connector.run(plan)

    async def add_event(
        self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        """Append an entry to the job's history; ``JobNotFound``,
        ``InvalidRequest`` for an event without a kind."""
        event = JobEvent(job_id, self._clock(), kind, check_event(kind, message), dict(data or {}))
        return await self._connector.run(_add_event(event))

    async def list_events(self, job_id: str, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The job's last ``limit`` events, oldest first; ``JobNotFound``."""
        params = {"job_id": job_id, "limit": max(limit, 0)}
        return await self._connector.run(_events("list_events", params, job_id), write=False)

    async def recent_events(self, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The last ``limit`` events of every job, newest first."""
        params = {"limit": max(limit, 0)}
        return await self._connector.run(_events("recent_events", params, None), write=False)

    # The operator's overview (store.overview).

    async def count_by_type(self, *, stuck_before: datetime) -> list[TypeCounts]:
        """Per job type, in name order, its jobs per status and its active
        jobs stuck, waiting and being re-driven, in one query."""
        rows = await self._connector.fetch(Fetch("count_by_type", {"before": stuck_before}))
        return [_type_counts(row) for row in rows]

    async def list_watched(self, query: WatchQuery) -> list[Watched]:
        """Active jobs stuck, waiting or being re-driven, newest first, each
        with the monitor's latest action, in one query."""
        params = {
            "before": query.stuck_before,
            "state": None if query.state is None else query.state.value,
            "job_type": query.job_type,
            "limit": query.limit,
            "offset": query.offset,
        }
        return [_watched(row) for row in await self._connector.fetch(Fetch("list_watched", params))]

    # The item ledger.

    def _ledger_batch(self, keys: list[str], payloads: list[str]) -> dict[str, Any]:
        """The parameters of the engine's ``add_items`` statement for a batch:
        its keys and their payloads as JSON text, in order. This one: two
        arrays (PostgreSQL)."""
        return {"keys": keys, "payloads": payloads}

    async def add_items(
        self, job_id: str, stage: str, items: Sequence[LedgerItem], *, seal: bool = False
    ) -> int:
        """Record items in the ledger (one statement for the batch) and raise
        the stage's total by the new ones, sealing it with ``seal``, in one
        transaction that writes the job. Returns how many were new. Raises
        ``InvalidRequest`` for a batch :func:`~jobtrack.store.ledger.check_items`
        refuses or new items for a sealed stage (nothing written),
        ``JobNotFound``, ``StageNotFound``."""
        payloads = check_items(items)
        batch = self._ledger_batch([item.key for item in items], payloads) if items else None
        return await self._connector.run(_add_items(job_id, stage, batch, seal, self._clock()))

    async def tally_ledger(self, job_id: str) -> dict[str, LedgerTally]:
        """Per stage with items in the ledger, the items recorded against the
        keys counted (one query); ``JobNotFound``."""
        return await self._connector.run(_tally(job_id), write=False)

    async def missing_items(
        self, job_id: str, stage: str, *, after: str | None = None, limit: int = 1000
    ) -> list[LedgerItem]:
        """The stage's ledger items whose key is not counted, in key order
        (code point), after ``after``; ``JobNotFound``, ``StageNotFound``."""
        params = {"job_id": job_id, "stage": stage, "after": after or "", "limit": max(limit, 0)}
        return await self._connector.run(_missing(params), write=False)

    async def settled_items(
        self, job_id: str, stage: str, *, after: str | None = None, limit: int = 1000
    ) -> list[str]:
        """The keys of the stage's ledger items counted or with an outcome, in
        key order (code point), after ``after``; ``JobNotFound``,
        ``StageNotFound``."""
        params = {"job_id": job_id, "stage": stage, "after": after or "", "limit": max(limit, 0)}
        return await self._connector.run(_settled(params), write=False)

    async def ledger_items(
        self, job_id: str, stage: str, keys: Collection[str]
    ) -> list[LedgerItem]:
        """The stage's ledger items with these keys, in key order; keys not in
        the ledger are left out. ``JobNotFound``."""
        wanted = sorted({key for key in keys if key_problem(key) is None})
        params = {"job_id": job_id, "stage": stage, "keys": wanted}
        return await self._connector.run(_ledger_items(params), write=False)

    def _outcome_batch(self, keys: list[str], failed: int) -> dict[str, Any]:
        """The parameters of the engine's ``record_outcomes`` statement: every
        key, the last ``failed`` of them failed. This one: the keys and their
        outcomes as two arrays (PostgreSQL)."""
        outcomes = ["done"] * (len(keys) - failed) + ["failed"] * failed
        return {"keys": keys, "outcomes": outcomes}

    async def record_outcomes(
        self,
        job_id: str,
        stage: str,
        done_keys: Collection[str],
        failed_keys: Collection[str] = (),
    ) -> int:
        """Record the items' outcomes in the ledger, in one statement; how
        many ledger items were recorded. Raises ``InvalidRequest`` for keys
        :func:`~jobtrack.store.ledger.check_outcomes` refuses,
        ``JobNotFound``, ``StageNotFound``."""
        keys = check_outcomes(done_keys, failed_keys)
        failed = len(keys) - len(dict.fromkeys(done_keys))
        params = {"job_id": job_id, "stage": stage, "now": self._clock()}
        batch = self._outcome_batch(keys, failed) if keys else None
        return await self._connector.run(_record_outcomes(params, batch))

    async def record_failure(
        self, job_id: str, stage: str, key: str, error: str, *, attempts: int = 1
    ) -> None:
        """Keep why an item failed (a later failure replaces it), in one
        statement. Raises ``InvalidRequest`` for a key no store can hold,
        ``JobNotFound``, ``StageNotFound``."""
        problem = key_problem(key)
        if problem is not None:
            raise InvalidRequest(problem)
        params = {
            "job_id": job_id,
            "stage": stage,
            "key": key,
            "error": storable_error(error, MAX_EVENT_MESSAGE),
            "attempts": attempts,
            "now": self._clock(),
        }
        await self._connector.run(_record_failure(params))

    async def list_failures(
        self,
        job_id: str,
        *,
        stage: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[ItemFailure]:
        """The job's failed items with their errors and ledger payloads, in
        (stage, key) order, after ``after``; ``JobNotFound``."""
        after_stage, after_key = after or ("", "")
        params = {
            "job_id": job_id,
            "stage": stage,
            "after_stage": after_stage,
            "after_key": after_key,
            "limit": max(limit, 0),
        }
        return await self._connector.run(_failures(params), write=False)

    async def purge_ledger(self, *, ended_before: datetime, limit: int = 10_000) -> int:
        """Delete the ledger rows and failures of jobs that ended before
        ``ended_before``, at most ``limit`` jobs a call; returns how many jobs
        were purged. Active jobs keep theirs whatever their age."""
        return await self._connector.run(_purge(ended_before, max(limit, 0)))

    # Worker heartbeats and throughput (store/workers.py).

    async def beat_worker(self, beat: WorkerBeat, counts: Sequence[StageCount] = ()) -> None:
        """Write the worker's heartbeat, stamped by the store's clock, and add
        ``counts`` to its row of the beat's throughput bucket, in one
        transaction; a beat whose number the row holds already (or a later
        one) changes nothing. Raises
        ``InvalidRequest`` for a beat :func:`~jobtrack.store.workers.check_beat`
        refuses."""
        beat = check_beat(beat, counts, self._clock())
        await self._connector.run(_beat(beat, counts))

    async def list_workers(self, *, limit: int = 1000) -> list[WorkerInfo]:
        """The workers with a row, live first, each with its state by the
        store's clock (one query)."""
        rows = await self._connector.fetch(Fetch("list_workers", {"limit": max(limit, 0)}))
        return sorted_workers([_beat_from_row(row) for row in rows], self._clock())

    async def throughput(self, *, since: datetime) -> list[ThroughputPoint]:
        """Items counted per bucket, job type and stage, summed over the
        workers, from the bucket ``since`` falls in on (one query)."""
        params = {"since": bucket_start(since)}
        rows = await self._connector.fetch(Fetch("throughput", params))
        return [
            ThroughputPoint(
                row["bucket_start"],
                row["job_type"],
                row["stage"],
                int(row["done"]),
                int(row["failed"]),
            )
            for row in rows
        ]

    async def purge_workers(self, *, before: datetime) -> int:
        """Delete the workers whose last beat (or stop) is older than
        ``before``, and the throughput buckets that start before it; returns
        how many workers were deleted."""
        return await self._connector.run(_purge_workers(before))


def _type_counts(row: Row) -> TypeCounts:
    names = ("pending", "in_progress", "completed", "failed", "cancelled")
    marks = ("stuck", "waiting", "redriving")
    return TypeCounts(row["job_type"], **{name: int(row[name] or 0) for name in (*names, *marks)})


def _watched(row: Row) -> Watched:
    action = None
    if row["action_id"] is not None:
        action = JobEvent(
            row["id"],
            row["action_at"],
            row["action_kind"],
            row["action_message"],
            row["action_data"] or {},
            int(row["action_id"]),
        )
    return Watched(
        row["id"],
        row["job_type"],
        JobStatus(row["status"]),
        row["message"],
        row["created_at"],
        row["updated_at"],
        bool(row["stuck"]),
        bool(row["waiting"]),
        bool(row["redriving"]),
        action,
    )


# The plans. Each runs whole in one transaction of its connector.


def _read_job(job_id: str) -> Fetch:
    return Fetch("read_job", {"job_id": job_id})


def _one_job(job_id: str, rows: Sequence[Row]) -> Job:
    if not rows:
        raise JobNotFound(job_id)
    return jobs_from_rows(rows)[0]


def _get_job(job_id: str) -> Plan[Job]:
    return _one_job(job_id, (yield _read_job(job_id)))


def _with_stages(rows: Sequence[Row]) -> Plan[list[Job]]:
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    by_job: dict[str, list[Stage]] = {job_id: [] for job_id in ids}
    for stage in (yield Fetch("get_stages", {"job_ids": ids})):
        by_job[stage["job_id"]].append(stage_from_row(stage))
    return [job_from_row(row, by_job[row["id"]]) for row in rows]


def _create(
    job_id: str, job_type: str, stages: Sequence[str], attributes: dict[str, Any], now: datetime
) -> Plan[Job]:
    params = {"id": job_id, "job_type": job_type, "attributes": attributes, "now": now}
    yield Execute("insert_job", params)
    yield Execute("insert_stages", {"job_id": job_id, "names": list(stages), "now": now})
    return (yield from _get_job(job_id))


def lock_job(job_id: str) -> Plan[Row]:
    """The job's row (status, seq), locked for this transaction;
    :class:`~jobtrack.errors.JobNotFound` if there is none."""
    rows = yield Fetch("lock_job", {"job_id": job_id})
    if not rows:
        raise JobNotFound(job_id)
    return rows[0]  # type: ignore[no-any-return]


def lock_stage(job_id: str, stage: str) -> Plan[Stage]:
    """The stage, locked for this transaction; ``StageNotFound`` if none."""
    rows = yield Fetch("lock_stage", {"job_id": job_id, "stage": stage})
    if not rows:
        raise StageNotFound(job_id, stage)
    return stage_from_row(rows[0])


def _put_stage(job_id: str, stage: Stage, now: datetime) -> Plan[None]:
    yield Execute(
        "put_stage",
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
            "now": now,
        },
    )


def _change(
    job_id: str, name: str, change: Callable[[Stage, datetime], Stage], now: datetime
) -> Plan[Stage]:
    yield from lock_job(job_id)
    changed = change((yield from lock_stage(job_id, name)), now)
    yield from _put_stage(job_id, changed, now)
    yield Execute("touch_and_settle", {"job_id": job_id, "now": now})
    return changed


def _end(
    job_id: str, status: JobStatus, message: str, now: datetime, if_seq: int | None
) -> Plan[Ended]:
    params = {"job_id": job_id, "status": status.value, "message": message, "now": now}
    ended = bool((yield Fetch("end_job", params | {"if_seq": if_seq})))
    if ended:
        yield Execute("forget_keys", {"job_id": job_id})
    elif if_seq is not None:
        check_unmoved(job_id, (yield from lock_job(job_id))["seq"], if_seq)
    return Ended((yield from _get_job(job_id)), ended)


def _set_counts(
    job_id: str,
    counts: Mapping[str, StageCounts],
    keys: Mapping[str, Collection[str]],
    if_seq: int | None,
    now: datetime,
) -> Plan[Job]:
    job = yield from lock_job(job_id)
    check_unmoved(job_id, job["seq"], if_seq)
    changed = []  # all or nothing: every stage read and checked before any is written
    for name, truth in counts.items():
        changed.append(set_counts((yield from lock_stage(job_id, name)), now, truth))
    for name, stage_keys in keys.items():
        yield from lock_stage(job_id, name)
        yield Execute("forget_stage_keys", {"job_id": job_id, "stage": name})
        if not JobStatus(job["status"]).terminal:
            # Before the counts: a job they end forgets its keys.
            params = {"job_id": job_id, "stage": name, "keys": list(stage_keys)}
            yield Execute("claim_stage_keys", params)
    for stage in changed:
        yield from _put_stage(job_id, stage, now)
    yield Execute("touch_and_settle", {"job_id": job_id, "now": now})
    return (yield from _get_job(job_id))


def _claim(job_id: str, seq: int, now: datetime) -> Plan[int | None]:
    if not (yield Fetch("claim_stuck", {"job_id": job_id, "expected": seq, "now": now})):
        return None
    return int((yield from lock_job(job_id))["seq"])


def _changed(after: ChangeCursor, params: Mapping[str, Any]) -> Plan[Changes]:
    rows = yield Fetch("list_changed", params)
    snapshot = (rows[0]["snapshot"] or "") if rows else ""
    rows = [row for row in rows if row["id"] is not None]  # the snapshot's own row
    jobs = yield from _with_stages(rows)
    # The next seq is the page's last: a job of a transaction the last read did
    # not see may lie past it, and the jobs between are read next time.
    seq = max([after.seq, *(int(row["seq"]) for row in rows if row["from_page"])])
    return Changes(jobs, ChangeCursor(seq, snapshot))


def _last_change() -> Plan[ChangeCursor]:
    [row] = yield Fetch("last_change")
    return ChangeCursor(int(row["seq"]), row["snapshot"] or "")


def _value(name: str, params: Mapping[str, Any], column: str) -> Plan[int]:
    rows = yield Fetch(name, params)
    return int(rows[0][column]) if rows and rows[0][column] is not None else 0


def _stats(stuck_before: datetime) -> Plan[StoreStats]:
    jobs = yield Fetch("stats_jobs")
    items = yield Fetch("stats_items")
    events = yield Fetch("stats_events")
    return StoreStats(
        jobs={row["status"]: int(row["jobs"]) for row in jobs},
        items={row["name"]: (int(row["completed"]), int(row["failed"])) for row in items},
        events={row["kind"]: int(row["events"]) for row in events},
        stuck=(yield from _value("stats_stuck", {"before": stuck_before}, "jobs")),
        waiting=(yield from _value("stats_waiting", {}, "jobs")),
    )


def _add_event(event: JobEvent) -> Plan[JobEvent]:
    params = {
        "job_id": event.job_id,
        "at": event.at,
        "kind": event.kind,
        "message": event.message,
        "data": dict(event.data),
    }
    rows = yield Fetch("add_event", params)
    if not rows:
        raise JobNotFound(event.job_id)
    return JobEvent(event.job_id, event.at, event.kind, event.message, event.data, rows[0]["id"])


def _events(name: str, params: Mapping[str, Any], job_id: str | None) -> Plan[list[JobEvent]]:
    if job_id is not None and not (yield Fetch("get_job", {"job_id": job_id})):
        raise JobNotFound(job_id)
    rows = yield Fetch(name, params)
    return [
        JobEvent(r["job_id"], r["at"], r["kind"], r["message"], r["data"], r["id"]) for r in rows
    ]


def _add_items(
    job_id: str, stage: str, batch: Mapping[str, Any] | None, seal: bool, now: datetime
) -> Plan[int]:
    yield from lock_job(job_id)
    current = yield from lock_stage(job_id, stage)
    added = 0
    if batch is not None:
        params = {"job_id": job_id, "stage": stage, "now": now, **batch}
        added = int((yield Execute("add_items", params)))
    changed = current
    if added:
        # A sealed stage raises: the transaction, the rows above with it, rolls back.
        changed = raise_total(changed, now, by=added)
    if seal:
        changed = seal_total(changed, now)
    if changed != current:
        yield from _put_stage(job_id, changed, now)
        yield Execute("touch_and_settle", {"job_id": job_id, "now": now})
    return added


def _job_exists(job_id: str) -> Plan[None]:
    if not (yield Fetch("get_job", {"job_id": job_id})):
        raise JobNotFound(job_id)


def _tally(job_id: str) -> Plan[dict[str, LedgerTally]]:
    yield from _job_exists(job_id)
    rows = yield Fetch("tally_ledger", {"job_id": job_id})
    return {
        row["stage"]: LedgerTally(
            int(row["items"]), int(row["counted"]), int(row["failed"]), int(row["recorded"])
        )
        for row in rows
    }


def _missing(params: Mapping[str, Any]) -> Plan[list[LedgerItem]]:
    yield from _job_exists(params["job_id"])
    if not (yield Fetch("stage_exists", params)):
        raise StageNotFound(params["job_id"], params["stage"])
    rows = yield Fetch("missing_items", params)
    return [LedgerItem(row["item_key"], row["payload"]) for row in rows]


def _settled(params: Mapping[str, Any]) -> Plan[list[str]]:
    yield from _job_exists(params["job_id"])
    if not (yield Fetch("stage_exists", params)):
        raise StageNotFound(params["job_id"], params["stage"])
    rows = yield Fetch("settled_items", params)
    return [row["item_key"] for row in rows]


def _ledger_items(params: Mapping[str, Any]) -> Plan[list[LedgerItem]]:
    yield from _job_exists(params["job_id"])
    if not params["keys"]:
        return []
    rows = yield Fetch("ledger_items", params)
    return [LedgerItem(row["item_key"], row["payload"]) for row in rows]


def _record_outcomes(params: Mapping[str, Any], batch: Mapping[str, Any] | None) -> Plan[int]:
    recorded = 0
    if batch is not None:
        recorded = int((yield Execute("record_outcomes", {**params, **batch})))
    if batch is None or recorded < len(batch["keys"]):  # an unknown job or stage, say so
        yield from _job_exists(params["job_id"])
        if not (yield Fetch("stage_exists", params)):
            raise StageNotFound(params["job_id"], params["stage"])
    return recorded


def _record_failure(params: Mapping[str, Any]) -> Plan[None]:
    if not (yield Fetch("record_failure", params)):
        yield from _job_exists(params["job_id"])
        raise StageNotFound(params["job_id"], params["stage"])


def _failures(params: Mapping[str, Any]) -> Plan[list[ItemFailure]]:
    yield from _job_exists(params["job_id"])
    rows = yield Fetch("list_failures", params)
    return [
        ItemFailure(
            row["stage"],
            row["item_key"],
            row["error"],
            int(row["attempts"]),
            row["failed_at"],
            row["payload"],
        )
        for row in rows
    ]


def _purge(before: datetime, limit: int) -> Plan[int]:
    rows = yield Fetch("purgeable_jobs", {"before": before, "limit": limit})
    if not rows:
        return 0
    ids = [row["id"] for row in rows]
    yield Execute("purge_items", {"job_ids": ids})
    yield Execute("purge_failures", {"job_ids": ids})
    return len(ids)


def _beat(beat: WorkerBeat, counts: Sequence[StageCount]) -> Plan[None]:
    written = yield Execute(
        "beat_worker",
        {
            "worker_id": beat.worker_id,
            "host": beat.host,
            "pid": beat.pid,
            "stages_json": json.dumps(list(beat.stages)),
            "concurrency": beat.concurrency,
            "prefetch": beat.prefetch,
            "interval": float(beat.interval),
            "done": beat.done,
            "failed": beat.failed,
            "last_error": beat.last_error,
            "last_error_at": beat.last_error_at,
            "started_at": beat.started_at,
            "beat_at": beat.beat_at,
            "stopped_at": beat.stopped_at,
            "seq": beat.seq,
        },
    )
    if not written:
        return  # this beat was written already, its counts with it
    bucket = bucket_start(beat.beat_at)
    for count in counts:
        if count.done or count.failed:
            yield Execute(
                "add_throughput",
                {
                    "bucket_start": bucket,
                    "worker_id": beat.worker_id,
                    "job_type": count.job_type,
                    "stage": count.stage,
                    "done": count.done,
                    "failed": count.failed,
                },
            )


def _beat_from_row(row: Row) -> WorkerBeat:
    return WorkerBeat(
        worker_id=row["worker_id"],
        host=row["host"],
        pid=int(row["pid"]),
        stages=tuple(json.loads(row["stages_json"])),
        concurrency=int(row["concurrency"]),
        prefetch=int(row["prefetch"]),
        interval=float(row["beat_interval"]),
        started_at=row["started_at"],
        beat_at=row["beat_at"],
        done=int(row["done"]),
        failed=int(row["failed"]),
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
        stopped_at=row["stopped_at"],
        seq=int(row["beat_seq"]),
    )


def _purge_workers(before: datetime) -> Plan[int]:
    purged = int((yield Execute("purge_workers", {"before": before})))
    yield Execute("purge_throughput", {"before": before})
    return purged
