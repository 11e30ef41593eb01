"""The SQLite job store: the embedded default (``sqlite:///path``).

The per-item increment is one ``UPDATE … RETURNING`` whose ``CASE``
expressions apply the stage rules and whose triggers touch the job and
re-derive its status; with an item key it is preceded, in the same
``BEGIN IMMEDIATE`` transaction, by an insert into ``item_keys`` whose primary
key makes the same (job, stage, item) count once. The rarer writes (totals,
seals, reconciliation) read the stage and apply :mod:`jobtrack.model.rules`
inside one write transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from jobtrack.errors import JobNotFound, NotFound, StageNotFound
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
from jobtrack.store.sql import load_queries
from jobtrack.store.sqlite.database import (
    SqliteDatabase,
    from_micros,
    on_database_thread,
    to_micros,
)

__all__ = ["SqliteJobStore"]

_Q = load_queries("jobtrack.store.sqlite")
_INCREMENT = _Q["increment"]
_STAGE_STATUS = {status.value: status for status in StageStatus}
_JOB_COLUMNS = "id, job_type, status, attributes, message, created_at, updated_at, completed_at"


class SqliteJobStore:
    """A :class:`~jobtrack.store.base.JobStore` on one SQLite database."""

    backend: ClassVar[str] = "sqlite"

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self.database = database
        self._clock = clock
        database.migrate("jobs", "jobtrack.store.sqlite.migrations")

    @classmethod
    def open(cls, path: str, *, create: bool = True, clock: Clock = utc_now) -> SqliteJobStore:
        """Open (creating and migrating as needed) the database at ``path``;
        with ``create=False``, StoreMissing if there is none."""
        return cls(SqliteDatabase(path, create=create), clock=clock)

    @on_database_thread
    def create_job(
        self,
        job_type: str,
        stages: Sequence[str],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a pending job with these stages, in this order."""
        validate_new_job(job_type, stages, attributes)
        job_id = new_id()
        now = to_micros(self._clock())
        with self.database.write() as conn:
            conn.execute(
                _Q["insert_job"],
                {
                    "id": job_id,
                    "job_type": job_type,
                    "attributes": json.dumps(dict(attributes or {})),
                    "now": now,
                },
            )
            conn.executemany(
                _Q["insert_stage"],
                [
                    {"job_id": job_id, "name": name, "position": i, "now": now}
                    for i, name in enumerate(stages)
                ],
            )
        return self._get_job(job_id)

    @on_database_thread
    def get_job(self, job_id: str) -> Job:
        """The job as it is now."""
        return self._get_job(job_id)

    def _get_job(self, job_id: str) -> Job:
        with self.database.translate_errors():
            conn = self.database.connection
            row = conn.execute(_Q["get_job"], {"job_id": job_id}).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            stages = conn.execute(_Q["get_stages"], {"job_id": job_id}).fetchall()
        return _job(row, [_stage(s[1:]) for s in stages])

    @on_database_thread
    def list_jobs(self, query: JobQuery | None = None) -> list[Job]:
        """Jobs matching the query, newest first."""
        query = query or JobQuery()
        where: list[str] = []
        params: dict[str, str | int] = {"limit": query.limit, "offset": query.offset}
        if query.status is not None:
            where.append("status = :status")
            params["status"] = query.status.value
        if query.job_type is not None:
            where.append("job_type = :job_type")
            params["job_type"] = query.job_type
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset"
        with self.database.translate_errors():
            rows = self.database.connection.execute(sql, params).fetchall()
        return self._with_stages(rows)

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
        """Count finished items atomically; at most once per item key."""
        completed = default_completed(completed, failed)
        check_increment(completed, failed)
        params = (job_id, stage, completed, failed, to_micros(self._clock()))
        if item_key is None:
            # The hot path: one statement, no context manager, no transaction block.
            try:
                row = self.database.connection.execute(_INCREMENT, params).fetchone()
            except sqlite3.Error as exc:
                raise self.database.translate(exc) from exc
            return self._increment_result(job_id, stage, row)
        progress = as_progress(job_id, stage, completed, failed, item_key)
        with self.database.write() as conn:
            result = self._add(conn, progress, params[4])
        return result.as_increment()

    @on_database_thread
    def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """Apply many stages' progress in one ``BEGIN IMMEDIATE`` transaction:
        per stage, claim the new keys, then one increment with the counts.
        An entry no backend can store is refused alone, before the write."""
        screened = screen_progress(batch)
        todo = [p for p, r in zip(batch, screened, strict=True) if r is None]
        now = to_micros(self._clock())
        with self.database.write() as conn:
            written = [self._add(conn, progress, now) for progress in todo]
        return merge_screened(screened, written)

    def _add(self, conn: sqlite3.Connection, progress: StageProgress, now: int) -> ProgressResult:
        job_id, stage = progress.job_id, progress.stage
        row = conn.execute(_Q["stage_and_job"], (job_id, stage)).fetchone()
        if row is None:
            refused = self._missing(job_id, stage)
            return ProgressResult(progress, 0, None, missing=refused)
        current, job_status = _stage(row), row[9]
        if current.status.terminal or job_status not in ("pending", "in_progress"):
            return ProgressResult(progress, 0, current)
        completed = progress.completed + self._claim(conn, job_id, stage, progress.completed_keys)
        failed = progress.failed + self._claim(conn, job_id, stage, progress.failed_keys)
        if completed + failed == 0:
            return ProgressResult(progress, 0, current)
        counted = conn.execute(_INCREMENT, (job_id, stage, completed, failed, now)).fetchone()
        result = self._increment_result(job_id, stage, counted)
        return ProgressResult(progress, completed + failed, result.stage, result.job_status)

    @staticmethod
    def _claim(conn: sqlite3.Connection, job_id: str, stage: str, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return conn.execute(_Q["claim_keys"], (job_id, stage, json.dumps(list(keys)))).rowcount

    @on_database_thread
    def raise_total(self, job_id: str, stage: str, *, by: int) -> Stage:
        """Add ``by`` items to the stage's (unsealed) total."""
        return self._change(job_id, stage, lambda s, now: raise_total(s, now, by=by))

    @on_database_thread
    def seal_total(self, job_id: str, stage: str, *, total: int | None = None) -> Stage:
        """Make the stage's total final; it may complete at once."""
        return self._change(job_id, stage, lambda s, now: seal_total(s, now, total=total))

    @on_database_thread
    def start_stage(self, job_id: str, stage: str, *, message: str | None = None) -> Stage:
        """Mark a stage as started (and set its message)."""
        return self._change(job_id, stage, lambda s, now: start_stage(s, now, message=message))

    @on_database_thread
    def end_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        message: str = "",
        if_updated_at: datetime | None = None,
    ) -> Job:
        """Complete, fail or cancel a job; a job already ended stays as it is."""
        check_end_status(status)
        params = {
            "job_id": job_id,
            "status": status.value,
            "message": message,
            "now": to_micros(self._clock()),
            "if_updated_at": None if if_updated_at is None else to_micros(if_updated_at),
        }
        with self.database.write() as conn:
            if not conn.execute(_Q["end_job"], params).rowcount:
                _check_unmoved(conn, job_id, if_updated_at)
        return self._get_job(job_id)

    @on_database_thread
    def end_job_if_active(
        self, job_id: str, status: JobStatus, *, message: str = ""
    ) -> tuple[Job, bool]:
        """End a job that has not ended; the job after the call, and whether
        this call ended it (the write changed its row)."""
        check_end_status(status)
        params = {
            "job_id": job_id,
            "status": status.value,
            "message": message,
            "now": to_micros(self._clock()),
        }
        with self.database.write() as conn:
            changed = conn.execute(_Q["end_job_if_active"], params).rowcount == 1
        return self._get_job(job_id), changed

    @on_database_thread
    def list_changed(
        self, *, after: tuple[datetime, str] | None = None, limit: int = CHANGES_LIMIT
    ) -> list[Job]:
        """Jobs written after ``after``, oldest write first (the change feed)."""
        params = {
            **_position(after),
            "limit": limit,
        }
        with self.database.translate_errors():
            rows = self.database.connection.execute(_Q["list_changed"], params).fetchall()
        return self._with_stages(rows)

    @on_database_thread
    def count_items(self, job_type: str, stage: str) -> int:
        """Items of ``stage`` counted over every job of ``job_type``."""
        with self.database.translate_errors():
            row = self.database.connection.execute(
                _Q["count_items"], {"job_type": job_type, "stage": stage}
            ).fetchone()
        return int(row[0])

    @on_database_thread
    def last_change(self) -> tuple[datetime, str] | None:
        """The position of the newest write."""
        with self.database.translate_errors():
            row = self.database.connection.execute(_Q["last_change"]).fetchone()
        return None if row is None else (from_micros(row[0]), row[1])

    @on_database_thread
    def stats(self, *, stuck_before: datetime) -> StoreStats:
        """Totals across the store, for metrics."""
        conn = self.database.connection
        with self.database.translate_errors():
            jobs = conn.execute(_Q["stats_jobs"]).fetchall()
            items = conn.execute(_Q["stats_items"]).fetchall()
            events = conn.execute(_Q["stats_events"]).fetchall()
            stuck = conn.execute(_Q["stats_stuck"], {"before": to_micros(stuck_before)}).fetchone()
            waiting = conn.execute(_Q["stats_waiting"]).fetchone()
        return StoreStats.from_rows(
            jobs, items, events, stuck[0] if stuck else 0, waiting[0] if waiting else 0
        )

    @on_database_thread
    def find_stuck(
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
            "before": to_micros(updated_before),
            **_position(after),
            "limit": limit,
        }
        with self.database.translate_errors():
            rows = self.database.connection.execute(_Q["find_stuck"], params).fetchall()
        return self._with_stages(rows)

    @on_database_thread
    def set_counts(
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
        with self.database.write() as conn:
            _check_unmoved(conn, job_id, if_updated_at)
            changed = [
                set_counts(self._read_stage(conn, job_id, name), now, truth)
                for name, truth in counts.items()
            ]
            active = conn.execute(_Q["get_job_status"], {"job_id": job_id}).fetchone()
            for name, stage_keys in (keys or {}).items():
                self._read_stage(conn, job_id, name)
                conn.execute(_Q["forget_stage_keys"], (job_id, name))
                if active is not None and not JobStatus(active[0]).terminal:
                    # Before the counts: a job they end forgets its keys (trigger).
                    conn.execute(_Q["claim_keys"], (job_id, name, json.dumps(list(stage_keys))))
            for stage in changed:
                self._write_stage(conn, job_id, stage, now)
        return self._get_job(job_id)

    @on_database_thread
    def claim_stuck(self, job_id: str, updated_at: datetime) -> datetime | None:
        """Touch an active job still at ``updated_at``; its new ``updated_at``, or None."""
        now = self._clock()
        params = {"job_id": job_id, "expected": to_micros(updated_at), "now": to_micros(now)}
        with self.database.write() as conn:
            claimed = conn.execute(_Q["claim_stuck"], params).rowcount == 1
        return now if claimed else None

    @on_database_thread
    def add_event(
        self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        """Append an entry to the job's history."""
        message = check_event(kind, message)
        now = self._clock()
        payload = dict(data or {})
        with self.database.write() as conn:
            if conn.execute(_Q["get_job_status"], {"job_id": job_id}).fetchone() is None:
                raise JobNotFound(job_id)
            row = conn.execute(
                _Q["add_event"],
                {
                    "job_id": job_id,
                    "at": to_micros(now),
                    "kind": kind,
                    "message": message,
                    "data": json.dumps(payload),
                },
            ).fetchone()
        return JobEvent(job_id, now, kind, message, payload, row[0])

    @on_database_thread
    def list_events(self, job_id: str, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The job's last ``limit`` events, oldest first."""
        self._get_job(job_id)
        with self.database.translate_errors():
            rows = self.database.connection.execute(
                _Q["list_events"], {"job_id": job_id, "limit": max(limit, 0)}
            ).fetchall()
        return [
            JobEvent(row[1], from_micros(row[2]), row[3], row[4], json.loads(row[5]), row[0])
            for row in rows
        ]

    @on_database_thread
    def recent_events(self, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The last ``limit`` events of every job, newest first."""
        with self.database.translate_errors():
            rows = self.database.connection.execute(
                _Q["recent_events"], {"limit": max(limit, 0)}
            ).fetchall()
        return [
            JobEvent(row[1], from_micros(row[2]), row[3], row[4], json.loads(row[5]), row[0])
            for row in rows
        ]

    async def aclose(self) -> None:
        """Close the database connection."""
        await self.database.aclose()

    def _change(self, job_id: str, stage: str, change: Callable[[Stage, datetime], Stage]) -> Stage:
        now = self._clock()
        with self.database.write() as conn:
            changed = change(self._read_stage(conn, job_id, stage), now)
            self._write_stage(conn, job_id, changed, now)
        return changed

    def _read_stage(self, conn: sqlite3.Connection, job_id: str, stage: str) -> Stage:
        row = conn.execute(_Q["get_stage"], {"job_id": job_id, "stage": stage}).fetchone()
        if row is None:
            self._raise_missing(job_id, stage)
        return _stage(row)

    def _write_stage(
        self, conn: sqlite3.Connection, job_id: str, stage: Stage, now: datetime
    ) -> None:
        conn.execute(
            _Q["put_stage"],
            {
                "job_id": job_id,
                "name": stage.name,
                "status": stage.status.value,
                "total_items": stage.total_items,
                "completed_items": stage.completed_items,
                "failed_items": stage.failed_items,
                "total_final": int(stage.total_final),
                "message": stage.message,
                "started_at": _micros_or_none(stage.started_at),
                "completed_at": _micros_or_none(stage.completed_at),
                "now": to_micros(now),
            },
        )

    def _increment_result(self, job_id: str, stage: str, row: Any) -> Increment:
        if row is None:
            with self.database.translate_errors():
                return self._not_counted(job_id, stage)
        counted = _stage(row)
        if counted.status.terminal:
            # The triggers have re-derived the job's status; read what they wrote.
            return Increment(counted=True, stage=counted, job_status=self._job_status(job_id))
        return Increment(counted=True, stage=counted)

    def _not_counted(self, job_id: str, stage: str) -> Increment:
        current = self._read_stage(self.database.connection, job_id, stage)
        return Increment(counted=False, stage=current)

    def _job_status(self, job_id: str) -> JobStatus:
        row = self.database.connection.execute(_Q["get_job_status"], {"job_id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobStatus(row[0])

    def _raise_missing(self, job_id: str, stage: str) -> None:
        raise self._missing(job_id, stage)

    def _missing(self, job_id: str, stage: str) -> NotFound:
        row = self.database.connection.execute(_Q["get_job_status"], {"job_id": job_id})
        if row.fetchone() is None:
            return JobNotFound(job_id)
        return StageNotFound(job_id, stage)

    def _with_stages(self, rows: list[Any]) -> list[Job]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        marks = ",".join("?" * len(ids))
        with self.database.translate_errors():
            stage_rows = self.database.connection.execute(
                f"SELECT job_id, name, status, total_items, completed_items, failed_items,"
                f" total_final, message, started_at, completed_at"
                f" FROM stages WHERE job_id IN ({marks}) ORDER BY job_id, position",
                ids,
            ).fetchall()
        by_job: dict[str, list[Stage]] = {job_id: [] for job_id in ids}
        for stage_row in stage_rows:
            by_job[stage_row[0]].append(_stage(stage_row[1:]))
        return [_job(row, by_job[row[0]]) for row in rows]


def _micros_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _check_unmoved(conn: sqlite3.Connection, job_id: str, if_updated_at: datetime | None) -> None:
    """Raise :class:`Conflict` if the job was written (or ended) since
    ``if_updated_at``."""
    if if_updated_at is None:
        return
    row = conn.execute(_Q["get_job_updated_at"], {"job_id": job_id}).fetchone()
    if row is not None:
        check_unmoved(job_id, from_micros(row[0]), if_updated_at)


def _position(after: tuple[datetime, str] | None) -> dict[str, Any]:
    """A keyset position ``(updated_at, id)`` as query parameters; None:
    before every job."""
    return {"after": to_micros(after[0]) if after else -1, "after_id": after[1] if after else ""}


def _datetime_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _stage(row: Sequence[Any]) -> Stage:
    return Stage(
        name=row[0],
        status=_STAGE_STATUS[row[1]],
        total_items=row[2],
        completed_items=row[3],
        failed_items=row[4],
        total_final=bool(row[5]),
        message=row[6],
        started_at=_datetime_or_none(row[7]),
        completed_at=_datetime_or_none(row[8]),
    )


def _job(row: Sequence[Any], stages: list[Stage]) -> Job:
    return Job(
        id=row[0],
        job_type=row[1],
        status=JobStatus(row[2]),
        attributes=json.loads(row[3]),
        message=row[4],
        created_at=from_micros(row[5]),
        updated_at=from_micros(row[6]),
        completed_at=_datetime_or_none(row[7]),
        stages={stage.name: stage for stage in stages},
    )
