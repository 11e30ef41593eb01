"""Whether a backlog is being consumed: when each stage's backlog last moved.

A stage's backlog (work queued or in flight) is being consumed when, within
``stuck_after``, it shrank, or items of that stage were counted for some job
of the type (its workers finish messages and report them). Its net size
alone does not tell: producers that publish as fast as the workers drain (or
faster) keep it flat (or growing) while it is consumed. Consumption is read
from the store's change feed (:meth:`JobStore.list_changed`, on its index):
once a cycle, the jobs written since the last reading, each stage's
completed and failed items compared with what this monitor last saw of that
job. A backlog that appears again after it was empty is new, and starts
afresh.

A job behind a backlog that moved within ``stuck_after`` is slow and left
alone; behind one that has neither shrunk nor been consumed for
``stuck_after`` (its workers are gone), with the job not moving either, it
is stuck.

This memory lives in the monitor's process, from cycle to cycle. So that a
monitor that restarts (or runs ``--once`` from a scheduler) does not start
every backlog afresh, the ``waiting`` event the monitor records when it
leaves a job alone carries, per stage, the backlog, since when it had not
moved, and the items of the stage counted over every job of the type
(:meth:`JobStore.count_items`; :meth:`BacklogWatch.snapshot`). A monitor that
has not itself seen a stage move (its first reading of the change feed
knows no job's earlier counts) takes that older time, as long as the
backlog is no smaller than the event recorded and no item of the stage was
counted since (:meth:`BacklogWatch.idle_since`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobtrack.model import Job
from jobtrack.store.base import CHANGES_LIMIT, ChangeCursor, JobQuery, JobStore

__all__ = ["BacklogWatch"]


@dataclass(slots=True)
class _Seen:
    size: int
    since: datetime  # when it last moved, or when this process first saw it
    moved: bool  # whether this process saw it shrink, be consumed, or appear


def _done(job: Job) -> dict[str, int]:
    return {name: s.completed_items + s.failed_items for name, s in job.stages.items()}


class BacklogWatch:
    """Per (job type, stage): the backlog's last size, and since when it has
    neither shrunk nor been consumed.

    :param stuck_after: seconds; the first reading of the change feed looks
        this far back.
    """

    def __init__(self, stuck_after: float) -> None:
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._window = timedelta(seconds=stuck_after)
        self._cursor: ChangeCursor | None = None
        self._last_read: datetime | None = None
        self._done: dict[str, dict[str, int]] = {}  # per active job seen: items counted
        self._counted: dict[tuple[str, str], int] = {}  # this cycle's count_items

    def observe(self, job_type: str, backlog: Mapping[str, int], now: datetime) -> None:
        """Record one reading of a job type's backlogs (once per cycle)."""
        for stage, size in backlog.items():
            seen = self._seen.get((job_type, stage))
            if seen is None:
                self._seen[(job_type, stage)] = _Seen(size, now, moved=False)
            elif size < seen.size or (seen.size == 0 and size > 0):  # shrank, or new
                seen.size, seen.since, seen.moved = size, now, True
            else:
                seen.size = size

    async def read_counts(self, store: JobStore, job_types: Collection[str], now: datetime) -> None:
        """Read the jobs written since the last reading (the first time:
        within ``stuck_after``) and note, per (job type, stage), when items
        were last counted. A reading stops at the newest write there was
        when it began: writers that write faster than the feed is read
        would otherwise keep it, and the cycle, going until they pause;
        what they wrote meanwhile is read next time. Raises what the store
        raises."""
        self._counted.clear()
        if self._cursor is None:  # the first reading: the feed from now on
            cursor = await store.last_change()
            start = now - self._window
            query = JobQuery(updated_since=start, limit=CHANGES_LIMIT)
            while page := await store.list_jobs(query):
                for job in page:
                    if job.job_type in job_types:
                        self._compare(job, start)
                query = JobQuery(
                    updated_since=start, limit=query.limit, offset=query.offset + len(page)
                )
            self._cursor, self._last_read = cursor, now
            return
        start = self._last_read or now
        head = await store.last_change()
        while True:
            jobs, self._cursor = await store.list_changed(after=self._cursor, limit=CHANGES_LIMIT)
            for job in jobs:
                if job.job_type in job_types:
                    self._compare(job, start)
            if len(jobs) < CHANGES_LIMIT:
                self._last_read = now
                return
            if self._cursor.seq >= head.seq:
                # Not caught up: jobs created since the last complete reading
                # still count from nothing when they are first read.
                return

    def _compare(self, job: Job, start: datetime) -> None:
        before = self._done.get(job.id)
        if before is None and job.created_at > start:
            before = {}  # created since the last reading: it counted from nothing
        done = _done(job)
        if before is not None:
            for stage, items in done.items():
                if items > before.get(stage, 0):
                    self._consumed(job.job_type, stage, job.updated_at)
        if job.status.terminal:
            self._done.pop(job.id, None)  # it counts nothing more
        else:
            self._done[job.id] = done

    def _consumed(self, job_type: str, stage: str, at: datetime) -> None:
        seen = self._seen.get((job_type, stage))
        if seen is not None and at > seen.since:
            seen.since, seen.moved = at, True

    def remember(self, job: Job) -> None:
        """Take ``job``'s counts as seen: the monitor's own reconciliation
        is no consumption."""
        if job.status.terminal:
            self._done.pop(job.id, None)
        else:
            self._done[job.id] = _done(job)

    async def counted(self, store: JobStore, job_type: str, stage: str) -> int:
        """The items of the stage counted over every job of the type (read
        once a cycle, when needed). Raises what the store raises."""
        key = (job_type, stage)
        if key not in self._counted:
            self._counted[key] = await store.count_items(job_type, stage)
        return self._counted[key]

    def needs_count(self, job_type: str, stage: str, recorded: Mapping[str, Any] | None) -> bool:
        """Whether :meth:`idle_since` would take ``recorded``'s time, and so
        needs the count of items to tell whether any was counted since."""
        seen = self._seen.get((job_type, stage))
        return (
            seen is not None
            and not seen.moved
            and recorded is not None
            and isinstance(recorded.get("counted", {}).get(stage), int)
        )

    def idle_since(
        self,
        job_type: str,
        stage: str,
        recorded: Mapping[str, Any] | None,
        counted: int | None = None,
    ) -> datetime | None:
        """Since when the stage's backlog has neither shrunk nor been
        consumed (None if never observed). ``recorded`` is the data of the
        job's last ``waiting`` event, written by this or another monitor:
        its older time counts when this process has not seen the backlog
        move, the backlog is no smaller now than it was then, and
        ``counted`` (:meth:`counted`, when the event recorded one) is no
        larger than it was then."""
        seen = self._seen.get((job_type, stage))
        if seen is None:
            return None
        if seen.moved or recorded is None:
            return seen.since
        size = recorded.get("backlog", {}).get(stage)
        since = recorded.get("since", {}).get(stage)
        if not isinstance(size, int) or not isinstance(since, str) or seen.size < size:
            return seen.since
        then_counted = recorded.get("counted", {}).get(stage)
        if isinstance(then_counted, int) and counted is not None and counted > then_counted:
            return seen.since  # items counted since the event: consumed
        try:
            then = datetime.fromisoformat(since)
        except ValueError:
            return seen.since
        return min(then, seen.since)

    @staticmethod
    def snapshot(
        backlog: Mapping[str, int], since: Mapping[str, datetime], counted: Mapping[str, int]
    ) -> dict[str, Any]:
        """The data a ``waiting`` event carries: per stage the backlog, since
        when it had not moved (ISO 8601), and the items counted over every
        job of the type."""
        return {
            "backlog": dict(backlog),
            "since": {stage: at.isoformat() for stage, at in since.items()},
            "counted": dict(counted),
        }
