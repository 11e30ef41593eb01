"""An in-memory store: for unit tests, and for users' own tests.

It applies :mod:`jobtrack.model.rules` directly, under one lock, so it is the
reference the contract suite holds every other backend to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from jobtrack.errors import InvalidRequest, JobNotFound, NotFound, StageNotFound
from jobtrack.model import (
    ACTIVE_JOB_STATUSES,
    Clock,
    Job,
    JobEvent,
    JobStatus,
    Stage,
    StageCounts,
    apply_increment,
    derive_job_status,
    new_id,
    raise_total,
    seal_total,
    set_counts,
    utc_now,
)
from jobtrack.store.base import (
    CHANGES_LIMIT,
    EVENTS_LIMIT,
    MAX_EVENT_MESSAGE,
    STUCK_QUERY_LIMIT,
    ChangeCursor,
    Changes,
    Ended,
    Increment,
    JobQuery,
    ProgressResult,
    StageProgress,
    StageWrites,
    StoreStats,
    check_end_status,
    check_event,
    check_unmoved,
    increment_progress,
    key_problem,
    merge_screened,
    screen_progress,
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
    MONITOR_ACTIONS,
    SearchField,
    TypeCounts,
    Watched,
    WatchQuery,
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

__all__ = ["InMemoryJobStore"]


class InMemoryJobStore(StageWrites):
    """A :class:`~jobtrack.store.base.JobStore` held in a dict; every job
    write takes the next value of a counter (the job's ``seq``) under the
    store's lock."""

    backend: ClassVar[str] = "memory"

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._seq = 0
        self._jobs: dict[str, Job] = {}
        self._item_keys: dict[str, set[tuple[str, str]]] = {}
        self._events: dict[str, list[JobEvent]] = {}
        self._event_ids = 0
        self._ledger: dict[str, dict[str, dict[str, Any]]] = {}  # job -> stage -> key -> payload
        self._failures: dict[str, dict[tuple[str, str], _Failure]] = {}
        # job -> (stage, key) -> "done" or "failed", as recorded by record_outcomes
        self._outcomes: dict[str, dict[tuple[str, str], str]] = {}
        self._workers: dict[str, WorkerBeat] = {}
        # (bucket, worker, job type, stage) -> (done, failed)
        self._throughput: dict[tuple[datetime, str, str, str], tuple[int, int]] = {}
        self._lock = asyncio.Lock()

    async def create_job(
        self,
        job_type: str,
        stages: Sequence[str],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a pending job with these stages, in this order."""
        validate_new_job(job_type, stages, attributes)
        now = self._clock()
        job = Job(
            id=new_id(),
            job_type=job_type,
            status=JobStatus.PENDING,
            created_at=now,
            updated_at=now,
            stages={name: Stage(name=name) for name in stages},
            attributes=dict(attributes or {}),
        )
        async with self._lock:
            return self._put(job, now)

    def _put(self, job: Job, now: datetime, **changes: Any) -> Job:
        """Write ``job`` (with ``changes``) as of ``now``: the next seq."""
        self._seq += 1
        job = replace(job, updated_at=now, seq=self._seq, **changes)
        self._jobs[job.id] = job
        if job.status.terminal:
            self._item_keys.pop(job.id, None)  # an ended job counts nothing more
        return job

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    async def list_jobs(self, query: JobQuery | None = None) -> list[Job]:
        """Jobs matching the query, newest first."""
        query = query or JobQuery()
        jobs = [
            job
            for job in self._jobs.values()
            if (query.status is None or job.status is query.status)
            and (query.job_type is None or job.job_type == query.job_type)
            and (query.updated_since is None or job.updated_at >= query.updated_since)
            and (query.search is None or _found(job, query.search, query.search_fields))
            and (not query.active or job.status in ACTIVE_JOB_STATUSES)
        ]
        jobs.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        return jobs[query.offset : query.offset + query.limit]

    async def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        """Count finished items, at most once per item key."""
        progress = increment_progress(job_id, stage, completed, failed, item_key)
        async with self._lock:
            return self._add(progress, self._clock()).as_increment()

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """Apply many stages' progress at once, under one lock; an entry no
        backend can store is refused alone."""
        screened = screen_progress(batch)
        async with self._lock:
            now = self._clock()
            written = [self._add(p, now) for p, r in zip(batch, screened, strict=True) if r is None]
        return merge_screened(screened, written)

    def _add(self, progress: StageProgress, now: datetime) -> ProgressResult:
        try:
            job, current = self._stage(progress.job_id, progress.stage)
        except NotFound as exc:
            return ProgressResult(progress, 0, None, missing=exc)
        if job.status.terminal or current.status.terminal:
            return ProgressResult(progress, 0, current)
        keys = self._item_keys.setdefault(job.id, set())
        completed = progress.completed + _claim(keys, progress.stage, progress.completed_keys)
        failed = progress.failed + _claim(keys, progress.stage, progress.failed_keys)
        if completed + failed == 0:
            return ProgressResult(progress, 0, current)
        counted = apply_increment(current, now, completed=completed, failed=failed)
        assert counted is not None  # the stage is not terminal
        job = self._put_stages(job, [counted], now)
        ended = job.status if counted.status.terminal else None
        return ProgressResult(progress, completed + failed, counted, ended)

    async def end_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        message: str = "",
        if_seq: int | None = None,
    ) -> Ended:
        """Complete, fail or cancel a job; a job already ended stays as it
        is. Raises ``Conflict`` when ``if_seq`` is given and the job was
        written since, ``InvalidRequest`` for a status that is no end,
        ``JobNotFound``."""
        check_end_status(status)
        async with self._lock:
            job = await self.get_job(job_id)
            check_unmoved(job_id, job.seq, if_seq)
            if job.status.terminal:
                return Ended(job, False)
            now = self._clock()
            return Ended(
                self._put(job, now, status=status, message=message, completed_at=now), True
            )

    async def list_changed(
        self, *, after: ChangeCursor | None = None, limit: int = CHANGES_LIMIT
    ) -> Changes:
        """Jobs written after the cursor, in ``seq`` order, and the next cursor."""
        seq = 0 if after is None else after.seq
        changed = sorted((job for job in self._jobs.values() if job.seq > seq), key=_by_seq)
        changed = changed[:limit]
        return Changes(changed, ChangeCursor(changed[-1].seq if changed else seq))

    async def count_items(self, job_type: str, stage: str) -> int:
        """Items of ``stage`` counted over every job of ``job_type``."""
        return sum(
            job.stages[stage].completed_items + job.stages[stage].failed_items
            for job in self._jobs.values()
            if job.job_type == job_type and stage in job.stages
        )

    async def last_change(self) -> ChangeCursor:
        """The cursor after the newest write."""
        return ChangeCursor(max((job.seq for job in self._jobs.values()), default=0))

    async def stats(self, *, stuck_before: datetime) -> StoreStats:
        """Totals across the store, for metrics."""
        jobs: dict[str, int] = {}
        items: dict[str, tuple[int, int]] = {}
        stuck = 0
        for job in self._jobs.values():
            jobs[job.status.value] = jobs.get(job.status.value, 0) + 1
            stuck += job.status in ACTIVE_JOB_STATUSES and job.updated_at < stuck_before
            for name, stage in job.stages.items():
                done, failed = items.get(name, (0, 0))
                items[name] = (done + stage.completed_items, failed + stage.failed_items)
        events: dict[str, int] = {}
        waiting = 0
        for job_id, history in self._events.items():
            for event in history:
                events[event.kind] = events.get(event.kind, 0) + 1
            verdicts = [e.kind for e in history if e.kind in ("waiting", "redriven")]
            owner = self._jobs.get(job_id)
            active = owner is not None and owner.status in ACTIVE_JOB_STATUSES
            waiting += active and verdicts[-1:] == ["waiting"]
        return StoreStats(jobs=jobs, items=items, events=events, stuck=stuck, waiting=waiting)

    async def find_stuck(
        self,
        job_type: str,
        *,
        updated_before: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = STUCK_QUERY_LIMIT,
    ) -> list[Job]:
        """Active jobs of this type not updated since ``updated_before``, oldest first."""
        stuck = [
            job
            for job in self._jobs.values()
            if job.job_type == job_type
            and job.status in ACTIVE_JOB_STATUSES
            and job.updated_at < updated_before
            and (after is None or (job.updated_at, job.id) > after)
        ]
        stuck.sort(key=lambda job: (job.updated_at, job.id))
        return stuck[:limit]

    async def set_counts(
        self,
        job_id: str,
        counts: Mapping[str, StageCounts],
        *,
        keys: Mapping[str, Collection[str]] | None = None,
        if_seq: int | None = None,
    ) -> Job:
        """Set stage counts to the ground truth, up or down (and, with ``keys``,
        each named stage's counted keys to exactly those); the job is written.
        Raises ``Conflict`` when ``if_seq`` is given and the job was written
        since, ``NotFound`` for unknown names."""
        async with self._lock:
            job = await self.get_job(job_id)
            check_unmoved(job_id, job.seq, if_seq)
            now = self._clock()
            # All or nothing: every stage is checked before any is written.
            changed = [set_counts(self._stage(job_id, n)[1], now, c) for n, c in counts.items()]
            for name in keys or {}:
                self._stage(job_id, name)
            if not job.status.terminal:
                claimed = self._item_keys.setdefault(job_id, set())
                for name, stage_keys in (keys or {}).items():
                    claimed.difference_update({k for k in claimed if k[0] == name})
                    claimed.update((name, key) for key in stage_keys)
            return self._put_stages(job, changed, now)

    async def claim_stuck(self, job_id: str, seq: int) -> int | None:
        """Touch an active job still at ``seq``; its new ``seq``, or None."""
        async with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in ACTIVE_JOB_STATUSES or job.seq != seq:
                return None
            return self._put(job, self._clock()).seq

    async def add_event(
        self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        """Append an entry to the job's history."""
        message = check_event(kind, message)
        async with self._lock:
            await self.get_job(job_id)
            self._event_ids += 1
            event = JobEvent(
                job_id, self._clock(), kind, message, dict(data or {}), self._event_ids
            )
            self._events.setdefault(job_id, []).append(event)
            return event

    async def list_events(self, job_id: str, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The job's last ``limit`` events, oldest first."""
        await self.get_job(job_id)
        return self._events.get(job_id, [])[-limit:] if limit > 0 else []

    async def recent_events(self, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The last ``limit`` events of every job, newest first."""
        every = [event for history in self._events.values() for event in history]
        every.sort(key=lambda event: event.id, reverse=True)
        return every[: max(limit, 0)]

    async def add_items(
        self, job_id: str, stage: str, items: Sequence[LedgerItem], *, seal: bool = False
    ) -> int:
        """Record items in the ledger and raise the stage's total by the new
        ones; raises as :meth:`JobStore.add_items`."""
        payloads = check_items(items)
        async with self._lock:
            job, current = self._stage(job_id, stage)
            ledger = self._ledger.get(job_id, {}).get(stage, {})
            new = [
                (i.key, json.loads(p))
                for i, p in zip(items, payloads, strict=True)
                if i.key not in ledger
            ]
            now = self._clock()
            changed = current
            if new:
                changed = raise_total(changed, now, by=len(new))
            if seal:
                changed = seal_total(changed, now)
            if new:  # a stage with no items has no ledger, even after a refusal
                self._ledger.setdefault(job_id, {}).setdefault(stage, {}).update(new)
            if changed is not current:
                self._put_stages(job, [changed], now)
            return len(new)

    async def tally_ledger(self, job_id: str) -> dict[str, LedgerTally]:
        """Per stage, the ledger's items against the counted keys."""
        job = await self.get_job(job_id)
        keys = self._item_keys.get(job.id, set())
        failures = self._failures.get(job.id, {})
        outcomes = self._outcomes.get(job.id, {})
        tallies = {}
        for stage, ledger in self._ledger.get(job.id, {}).items():
            counted = [key for key in ledger if (stage, key) in keys]
            recorded = [
                key for key in ledger if (stage, key) not in keys and (stage, key) in outcomes
            ]
            failed = sum((stage, key) in failures for key in counted) + sum(
                outcomes[stage, key] == "failed" for key in recorded
            )
            tallies[stage] = LedgerTally(
                len(ledger), len(counted) + len(recorded), failed, len(recorded)
            )
        return tallies

    async def missing_items(
        self, job_id: str, stage: str, *, after: str | None = None, limit: int = 1000
    ) -> list[LedgerItem]:
        """The stage's ledger items not counted, in key order, after ``after``."""
        job, _ = self._stage(job_id, stage)
        keys = self._item_keys.get(job.id, set())
        outcomes = self._outcomes.get(job.id, {})
        ledger = self._ledger.get(job.id, {}).get(stage, {})
        missing = sorted(
            key
            for key in ledger
            if (stage, key) not in keys
            and (stage, key) not in outcomes
            and (after is None or key > after)
        )
        return [LedgerItem(key, ledger[key]) for key in missing[: max(limit, 0)]]

    async def settled_items(
        self, job_id: str, stage: str, *, after: str | None = None, limit: int = 1000
    ) -> list[str]:
        """The stage's ledger keys counted or with an outcome, in key order,
        after ``after``."""
        job, _ = self._stage(job_id, stage)
        keys = self._item_keys.get(job.id, set())
        outcomes = self._outcomes.get(job.id, {})
        settled = sorted(
            key
            for key in self._ledger.get(job.id, {}).get(stage, {})
            if ((stage, key) in keys or (stage, key) in outcomes) and (after is None or key > after)
        )
        return settled[: max(limit, 0)]

    async def ledger_items(
        self, job_id: str, stage: str, keys: Collection[str]
    ) -> list[LedgerItem]:
        """The stage's ledger items with these keys, in key order."""
        job = await self.get_job(job_id)
        ledger = self._ledger.get(job.id, {}).get(stage, {})
        return [LedgerItem(key, ledger[key]) for key in sorted(set(keys)) if key in ledger]

    async def record_outcomes(
        self,
        job_id: str,
        stage: str,
        done_keys: Collection[str],
        failed_keys: Collection[str] = (),
    ) -> int:
        """Record the items' outcomes in the ledger; raises as
        :meth:`JobStore.record_outcomes`."""
        keys = check_outcomes(done_keys, failed_keys)
        failed = set(failed_keys)
        async with self._lock:
            self._stage(job_id, stage)
            ledger = self._ledger.get(job_id, {}).get(stage, {})
            known = [key for key in keys if key in ledger]
            if known:
                outcomes = self._outcomes.setdefault(job_id, {})
                for key in known:
                    outcomes[stage, key] = "failed" if key in failed else "done"
            return len(known)

    async def record_failure(
        self, job_id: str, stage: str, key: str, error: str, *, attempts: int = 1
    ) -> None:
        """Keep why an item failed; a later failure replaces it."""
        problem = key_problem(key)
        if problem is not None:
            raise InvalidRequest(problem)
        async with self._lock:
            self._stage(job_id, stage)
            error = storable_error(error, MAX_EVENT_MESSAGE)
            failure = _Failure(error, attempts, self._clock())
            self._failures.setdefault(job_id, {})[(stage, key)] = failure

    async def list_failures(
        self,
        job_id: str,
        *,
        stage: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[ItemFailure]:
        """The job's failed items, in (stage, key) order, after ``after``."""
        job = await self.get_job(job_id)
        ledger = self._ledger.get(job.id, {})
        chosen = sorted(
            (name, key)
            for name, key in self._failures.get(job.id, {})
            if (stage is None or name == stage) and (after is None or (name, key) > after)
        )[: max(limit, 0)]
        failures = self._failures[job.id] if chosen else {}
        return [
            ItemFailure(
                name,
                key,
                failures[name, key].error,
                failures[name, key].attempts,
                failures[name, key].failed_at,
                ledger.get(name, {}).get(key),
            )
            for name, key in chosen
        ]

    async def purge_ledger(self, *, ended_before: datetime, limit: int = 10_000) -> int:
        """Drop the ledgers and failures of jobs ended before ``ended_before``."""
        async with self._lock:
            old = [
                job_id
                for job_id in {*self._ledger, *self._failures, *self._outcomes}
                if (job := self._jobs.get(job_id)) is None
                or (job.completed_at is not None and job.completed_at < ended_before)
            ][: max(limit, 0)]
            for job_id in old:
                self._ledger.pop(job_id, None)
                self._failures.pop(job_id, None)
                self._outcomes.pop(job_id, None)
            return len(old)

    # Worker heartbeats and throughput (store/workers.py).

    async def beat_worker(self, beat: WorkerBeat, counts: Sequence[StageCount] = ()) -> None:
        """Keep the worker's heartbeat, stamped by the store's clock, and add
        ``counts`` to its row of the beat's bucket, unless the beat's number
        says it was written already. Raises ``InvalidRequest`` for a beat
        :func:`~jobtrack.store.workers.check_beat` refuses."""
        beat = check_beat(beat, counts, self._clock())
        bucket = bucket_start(beat.beat_at)
        async with self._lock:
            was = self._workers.get(beat.worker_id)
            if beat.seq and was is not None and was.seq >= beat.seq:
                return  # written already: its counts were added then
            if was is not None and was.seq > beat.seq:
                beat = replace(beat, seq=was.seq)
            self._workers[beat.worker_id] = beat
            for count in counts:
                if count.done or count.failed:
                    row = (bucket, beat.worker_id, count.job_type, count.stage)
                    done, failed = self._throughput.get(row, (0, 0))
                    self._throughput[row] = (done + count.done, failed + count.failed)

    async def list_workers(self, *, limit: int = 1000) -> list[WorkerInfo]:
        """The workers, live first, each with its state by the store's clock."""
        async with self._lock:
            beats = sorted(
                self._workers.values(), key=lambda b: (-b.beat_at.timestamp(), b.worker_id)
            )
            return sorted_workers(beats[: max(limit, 0)], self._clock())

    async def throughput(self, *, since: datetime) -> list[ThroughputPoint]:
        """Items counted per bucket, job type and stage, summed over the
        workers, from the bucket ``since`` falls in on."""
        first = bucket_start(since)
        sums: dict[tuple[datetime, str, str], tuple[int, int]] = {}
        async with self._lock:
            for (bucket, _, job_type, stage), (done, failed) in self._throughput.items():
                if bucket >= first:
                    was = sums.get((bucket, job_type, stage), (0, 0))
                    sums[bucket, job_type, stage] = (was[0] + done, was[1] + failed)
        return [ThroughputPoint(*key, *sums[key]) for key in sorted(sums)]

    async def purge_workers(self, *, before: datetime) -> int:
        """Drop the workers last heard of before ``before``, and older buckets."""
        async with self._lock:
            old = [wid for wid, beat in self._workers.items() if beat.beat_at < before]
            for worker_id in old:
                del self._workers[worker_id]
            for row in [row for row in self._throughput if row[0] < before]:
                del self._throughput[row]
            return len(old)

    async def aclose(self) -> None:
        """Nothing to release."""

    def _stage(self, job_id: str, stage: str) -> tuple[Job, Stage]:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        current = job.stages.get(stage)
        if current is None:
            raise StageNotFound(job_id, stage)
        return job, current

    def _put_stages(self, job: Job, stages: Sequence[Stage], now: datetime) -> Job:
        changed = {**job.stages, **{stage.name: stage for stage in stages}}
        status = derive_job_status(job.status, (s.status for s in changed.values()))
        completed_at = job.completed_at or (now if status.terminal else None)
        return self._put(job, now, stages=changed, status=status, completed_at=completed_at)

    async def _change(
        self, job_id: str, stage: str, change: Callable[[Stage, datetime], Stage]
    ) -> Stage:
        async with self._lock:
            job, current = self._stage(job_id, stage)
            now = self._clock()
            changed = change(current, now)
            self._put_stages(job, [changed], now)
            return changed

    # The operator's overview (store.overview).

    async def count_by_type(self, *, stuck_before: datetime) -> list[TypeCounts]:
        """Per job type, in name order, its jobs per status and its active
        jobs stuck, waiting and being re-driven."""
        counts: dict[str, dict[str, int]] = {}
        for job in self._jobs.values():
            row = counts.setdefault(job.job_type, {})
            row[job.status.value] = row.get(job.status.value, 0) + 1
            watched = self._watched(job, stuck_before)
            for state in [] if watched is None else watched.states:
                row[state.value] = row.get(state.value, 0) + 1
        return [TypeCounts(job_type, **row) for job_type, row in sorted(counts.items())]

    async def list_watched(self, query: WatchQuery) -> list[Watched]:
        """Active jobs stuck, waiting or being re-driven, newest first."""
        found = []
        for job in sorted(self._jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True):
            if query.job_type is not None and job.job_type != query.job_type:
                continue
            watched = self._watched(job, query.stuck_before)
            if watched is not None and (query.state is None or query.state in watched.states):
                found.append(watched)
        return found[query.offset : query.offset + query.limit]

    def _watched(self, job: Job, stuck_before: datetime) -> Watched | None:
        """The job as the watch list shows it; None when it is not on it."""
        if job.status not in ACTIVE_JOB_STATUSES:
            return None
        history = self._events.get(job.id, [])
        actions = [event for event in history if event.kind in MONITOR_ACTIONS]
        verdicts = [event.kind for event in actions if event.kind != "reconciled"]
        stuck = job.updated_at < stuck_before
        waiting = verdicts[-1:] == ["waiting"]
        redriving = verdicts[-1:] == ["redriven"] or (not verdicts and bool(actions))
        if not (stuck or waiting or redriving):
            return None
        return Watched(
            job.id,
            job.job_type,
            job.status,
            job.message,
            job.created_at,
            job.updated_at,
            stuck,
            waiting,
            redriving,
            actions[-1] if actions else None,
        )


def _found(job: Job, term: str, fields: Sequence[SearchField]) -> bool:
    """Whether the job's id starts with ``term``, or one of its type's
    fields holds a string that contains it, case-insensitively."""
    if job.id.startswith(term.lower()):  # ids are lowercase hex
        return True
    for search in fields:
        if search.job_type != job.job_type:
            continue
        value: Any = job.attributes
        for part in search.parts:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str) and term.lower() in value.lower():
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Failure:
    error: str
    attempts: int
    failed_at: datetime


def _claim(keys: set[tuple[str, str]], stage: str, new: Sequence[str]) -> int:
    """Add the keys not seen yet; return how many were new."""
    before = len(keys)
    keys.update((stage, key) for key in new)
    return len(keys) - before


def _by_seq(job: Job) -> int:
    return job.seq
