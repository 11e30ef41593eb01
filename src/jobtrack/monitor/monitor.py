"""The monitor's cycle: the seed's safety net, made safe to run anywhere.

Every ``interval`` the monitor asks the store for active jobs whose
``updated_at`` is older than ``stuck_after`` (the seed's query, on its
index, 100 at a time, paging until none are left). For each one:

1. **Claim it**: ``JobStore.claim_stuck`` touches the job only if it has not
   moved since it was read. Of several monitors, one wins; the touch also
   keeps the job out of the stuck set for another ``stuck_after``, so a job
   is handled at most once per window and a second cycle changes nothing.
2. **Reconcile**: the job type's reconciler reads the ground truth; the
   counts and the counted item keys are set to it in one transaction,
   guarded by the claim's ``seq``: if an increment arrived meanwhile
   the job is moving, and nothing is overwritten. What changed is recorded
   as a ``reconciled`` event.
3. **Slow or stuck**: with items missing, a job whose stages still have work
   queued or in flight, in a backlog that is being consumed (within
   ``stuck_after`` it shrank, or items of its stage were counted for some
   job of the type: :mod:`jobtrack.monitor.backlog`), is slow and left
   alone, visibly: a ``waiting`` event when it is first left alone (or
   again after a re-drive), then at most once every ``waiting_every`` (an
   hour) while it stays so. A backlog that has neither shrunk nor been
   consumed for ``stuck_after`` (its workers are gone), with the job not
   moving either, does not hold the job: it is stuck. Then its missing items
   are published again (``redriven`` event); a job with items still missing
   after ``max_redrives`` rounds is failed with the reason (``failed``
   event). A round publishes every missing item once, and an item missing
   now was missing in every earlier round (a job's totals are sealed), so
   no item is published more than ``max_redrives`` times.
   A job whose totals were never sealed (its scan stopped before the end)
   is failed at once.

A job type whose items are kept in a ledger (:mod:`jobtrack.jobs.reconciler`)
goes through the same cycle, with two more steps its reconciler provides
(:class:`~jobtrack.monitor.base.ItemHooks`): before the claim, its
discovered stages that are ready are sealed (a stage waiting for its
feeders is no reason to fail the job); when the job is failed for its
missing items (after ``max_redrives``, or with no broker to publish them
to), each of them is recorded as a failed item, so that a retry of the job
does it again. Its truth never lowers the counts, nor sets counted keys,
unless the workers recorded outcomes in the ledger with their progress off:
then it raises the counts to them and sets the keys to what the ledger
counts, and the stages those raised counts complete are sealed and
reconciled in the same claim.

With ``ledger_retention``, a cycle also deletes the ledgers and failures of
jobs that ended longer ago than that (``JobStore.purge_ledger``): on the
first cycle, then at most once every ``purge_every`` (an hour). As often,
it deletes the heartbeats of workers stopped or dead, and the throughput
buckets, older than a day (``JobStore.purge_workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jobtrack.errors import Conflict, InvalidRequest, JobtrackError, NotFound, StoreError
from jobtrack.model import Clock, Job, JobEvent, JobStatus, utc_now
from jobtrack.monitor.backlog import BacklogWatch
from jobtrack.monitor.base import ItemHooks, Reconciler, Truth
from jobtrack.store.base import STUCK_QUERY_LIMIT, JobStore
from jobtrack.store.workers import WORKER_RETENTION

__all__ = ["CycleReport", "Monitor", "describe_changes"]

#: Ended jobs whose ledgers one purge call deletes, and calls a cycle makes at most.
_PURGE_BATCH = 1_000
_PURGE_ROUNDS = 50

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class CycleReport:
    """What one cycle found and did."""

    stuck: int = 0  # jobs found by the stuck query
    claimed_elsewhere: int = 0  # moved or taken by another monitor meanwhile
    moving: int = 0  # an increment arrived during the reconciliation
    reconciled: int = 0  # jobs whose counts changed
    completed: int = 0  # jobs the reconciliation completed
    slow: int = 0  # missing items, but queued behind a backlog being consumed: left alone
    stalled: int = 0  # missing items behind a backlog neither shrinking nor consumed: stuck
    redriven: int = 0  # jobs whose missing items were published again
    items_redriven: int = 0
    failed: int = 0  # jobs failed with the reason
    items_failed: int = 0  # missing items recorded as failed when their job was failed
    purged: int = 0  # ended jobs whose ledgers were deleted
    errors: int = 0  # jobs the cycle could not handle (logged)
    queries: int = 0  # stuck queries run
    jobs: list[str] = field(default_factory=list)  # ids of the jobs acted on

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {name: getattr(self, name) for name in self.__slots__}

    def merge(self, other: CycleReport) -> None:
        """Add ``other``'s counts to this report, and its jobs after these."""
        for name in self.__slots__:
            if name != "jobs":
                setattr(self, name, getattr(self, name) + getattr(other, name))
        self.jobs.extend(other.jobs)


def _last(events: Sequence[JobEvent], *kinds: str) -> JobEvent | None:
    """The latest of ``events`` of one of these kinds."""
    return next((event for event in reversed(events) if event.kind in kinds), None)


def _rounds(events: Sequence[JobEvent]) -> int:
    """Re-drive rounds so far: the last ``redriven`` event's round."""
    last = _last(events, "redriven")
    return 0 if last is None else int(last.data.get("round", 0))


def describe_changes(job: Job, truth: Truth) -> tuple[str, dict[str, Any]]:
    """What setting ``job`` to ``truth`` changes: "thumbnail 95 → 100, …" (empty
    when nothing), and per stage the (completed, failed, total) before and after."""
    parts, data = [], {}
    for name, counts in truth.counts.items():
        stage = job.stages[name]
        before = (stage.completed_items, stage.failed_items, stage.total_items)
        after = (counts.completed_items, counts.failed_items, counts.total_items)
        if before != after:
            parts.append(f"{name} {before[0] + before[1]} → {after[0] + after[1]}")
            data[name] = {"before": list(before), "after": list(after)}
    return ", ".join(parts), data


class Monitor:
    """Finds stuck jobs of the reconcilers' types and brings them to the truth.

    :param stuck_after: seconds without an update before a job is stuck.
    :param max_redrives: times an item is published again, at most, before
        its job fails.
    :param waiting_every: seconds between two ``waiting`` events of a job
        left alone behind a backlog, at least.
    :param mode: ``hybrid`` (the default: consumers count, the monitor
        handles stuck jobs) or ``centralized``, the seed's old service and
        its rollback plan: every cycle recounts every active job from the
        truth, whatever the consumers report; it records no events and
        re-drives nothing, as that service did.
    :param ledger_retention: how long the ledger and failures of an ended
        job are kept (None: kept, never purged by this monitor).
    :param purge_every: seconds between two purges of old ledgers, at least.
    :param concurrency: stuck jobs of one page handled at once, at most (each
        job's own steps stay in order; 1: one job after another).
    :raises InvalidRequest: an unknown mode, a negative retention, a
        concurrency below 1.
    """

    def __init__(
        self,
        store: JobStore,
        reconcilers: Sequence[Reconciler],
        *,
        stuck_after: float = 300.0,
        max_redrives: int = 3,
        clock: Clock = utc_now,
        page_size: int = STUCK_QUERY_LIMIT,
        mode: str = "hybrid",
        waiting_every: float = 3600.0,
        ledger_retention: timedelta | None = None,
        purge_every: float = 3600.0,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise InvalidRequest(f"concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        if mode not in ("hybrid", "centralized"):
            raise InvalidRequest(f"mode must be hybrid or centralized, not {mode!r}")
        if ledger_retention is not None and ledger_retention < timedelta(0):
            raise InvalidRequest(f"ledger_retention cannot be negative ({ledger_retention})")
        self.ledger_retention = ledger_retention
        self.purge_every = purge_every
        self._purged_at: datetime | None = None
        self._workers_purged_at: datetime | None = None
        self.mode = mode
        self._store = store
        self._reconcilers = {r.job_type: r for r in reconcilers}
        self.stuck_after = stuck_after
        self.max_redrives = max_redrives
        self._clock = clock
        self._page_size = page_size
        self.waiting_every = waiting_every
        self._backlogs = BacklogWatch(stuck_after)

    async def cycle(self) -> CycleReport:
        """One pass over every stuck job; never raises for one job's sake."""
        report = CycleReport()
        centralized = self.mode == "centralized"
        now = self._clock()
        # Centralized: every active job, updated before now.
        threshold = now if centralized else now - timedelta(seconds=self.stuck_after)
        backlogs: dict[str, Mapping[str, int]] = {}
        await self._purge(now, report)
        if not centralized:
            # Before anything is re-driven: this cycle's own messages are no backlog.
            for job_type, reconciler in self._reconcilers.items():
                backlogs[job_type] = await reconciler.backlog()
                self._backlogs.observe(job_type, backlogs[job_type], now)
            await self._backlogs.read_counts(self._store, self._reconcilers.keys(), now)
        for job_type, reconciler in self._reconcilers.items():
            backlog = backlogs.get(job_type, {})
            after: tuple[datetime, str] | None = None
            while True:
                page = await self._store.find_stuck(
                    job_type, updated_before=threshold, after=after, limit=self._page_size
                )
                report.queries += 1
                if not page:
                    break
                await self._page(page, reconciler, backlog, report)
                after = (page[-1].updated_at, page[-1].id)
        if report.stuck:
            logger.info(
                "monitor cycle: %s",
                ", ".join(f"{k} {v}" for k, v in report.to_dict().items() if v and k != "jobs"),
                extra={"action": "monitor_cycle"},
            )
        # After the cycle's own work: a store that is away fails the cycle first.
        await self._purge_workers(now)
        return report

    async def _page(
        self,
        page: Sequence[Job],
        reconciler: Reconciler,
        backlog: Mapping[str, int],
        report: CycleReport,
    ) -> None:
        """Handle a page of stuck jobs, up to ``concurrency`` at a time; what
        each did is added to ``report`` in the page's order."""
        if self.concurrency == 1:
            for job in page:
                await self._one(job, reconciler, backlog, report)
            return
        limit = asyncio.Semaphore(self.concurrency)

        async def one(job: Job) -> CycleReport:
            own = CycleReport()
            async with limit:
                await self._one(job, reconciler, backlog, own)
            return own

        for own in await asyncio.gather(*(one(job) for job in page)):
            report.merge(own)

    async def _one(
        self, job: Job, reconciler: Reconciler, backlog: Mapping[str, int], report: CycleReport
    ) -> None:
        """Handle one stuck job; its trouble is logged and counted, never raised."""
        report.stuck += 1
        try:
            if self.mode == "centralized":
                await self._recount(job, reconciler, report)
            else:
                await self._handle(job, reconciler, backlog, report)
        except (NotFound, StoreError, Conflict) as exc:
            report.errors += 1
            logger.warning("job %s not handled: %s", job.id, exc)
        except Exception:  # one job's trouble never stops the others
            report.errors += 1
            logger.exception("job %s not handled", job.id)

    async def _purge(self, now: datetime, report: CycleReport) -> None:
        """Delete the ledgers of jobs ended before the retention, when due:
        on the first cycle, then once every ``purge_every``. A purge that
        fails is logged and tried again on the next cycle: housekeeping
        never stops the cycle's own work."""
        if self.ledger_retention is None:
            return
        due = timedelta(seconds=self.purge_every)
        if self._purged_at is not None and now - self._purged_at < due:
            return
        try:
            for _ in range(_PURGE_ROUNDS):  # a backlog of ended jobs is worked off, in bounds
                purged = await self._store.purge_ledger(
                    ended_before=now - self.ledger_retention, limit=_PURGE_BATCH
                )
                report.purged += purged
                if purged < _PURGE_BATCH:
                    break
        except JobtrackError as exc:
            logger.warning("ledger purge failed: %s", exc, extra={"action": "purge_failed"})
            return
        except Exception:
            logger.exception("ledger purge failed", extra={"action": "purge_failed"})
            return
        self._purged_at = now
        if report.purged:
            logger.info(
                "ledgers of %d ended jobs purged", report.purged, extra={"action": "ledger_purged"}
            )

    async def _purge_workers(self, now: datetime) -> None:
        """Delete the heartbeats and throughput older than a day, when due
        (as often as the ledgers, at the end of a cycle); a failure is logged
        and tried again next cycle."""
        due = timedelta(seconds=self.purge_every)
        if self._workers_purged_at is not None and now - self._workers_purged_at < due:
            return
        try:
            purged = await self._store.purge_workers(before=now - WORKER_RETENTION)
        except Exception as exc:  # housekeeping never stops the cycle
            logger.warning("worker purge failed: %s", exc, extra={"action": "purge_failed"})
            return
        self._workers_purged_at = now
        if purged:
            logger.info(
                "heartbeats of %d old workers purged", purged, extra={"action": "workers_purged"}
            )

    async def run(self, stop: asyncio.Event, *, interval: float = 60.0) -> None:
        """Run a cycle every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.cycle()
            except JobtrackError as exc:  # the store is down: try again next time
                logger.warning("monitor cycle failed: %s", exc, extra={"action": "monitor_error"})
            except Exception:
                logger.exception("monitor cycle failed", extra={"action": "monitor_error"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _handle(
        self,
        job: Job,
        reconciler: Reconciler,
        backlog: Mapping[str, int],
        report: CycleReport,
    ) -> None:
        hooks = reconciler if isinstance(reconciler, ItemHooks) else None
        if hooks is not None:
            job = await hooks.prepare(job)  # sealing what is ready writes the job
            if job.status.terminal:
                report.jobs.append(job.id)
                report.completed += job.status is JobStatus.COMPLETED
                return
        claimed = await self._store.claim_stuck(job.id, job.seq)
        if claimed is None:
            report.claimed_elsewhere += 1
            return
        reconciled = await self._reconcile(job, reconciler, hooks, claimed)
        if reconciled is None:
            report.moving += 1
            return
        job, truth, changed = reconciled
        report.jobs.append(job.id)
        self._backlogs.remember(job)
        report.reconciled += changed
        if job.status.terminal:
            report.completed += job.status is JobStatus.COMPLETED
            return
        unsealed = [
            name
            for name, stage in job.stages.items()
            if not stage.total_final and name not in truth.waiting_to_seal
        ]
        if unsealed:
            failed = await self._fail(
                job,
                f"stopped before its end: the totals of {', '.join(unsealed)} never sealed",
                report,
            )
            missing = {stage: keys for stage, keys in truth.missing.items() if keys}
            if failed and hooks is not None and missing:
                # What the ledger holds of it is kept as failed, so a retry does it.
                await hooks.give_up(job, missing, "not done: its job stopped before its end")
                report.items_failed += sum(len(keys) for keys in missing.values())
            return
        missing = {stage: keys for stage, keys in truth.missing.items() if keys}
        if missing:
            await self._missing(
                job,
                reconciler=reconciler,
                hooks=hooks,
                missing=missing,
                backlog=backlog,
                report=report,
            )

    async def _reconcile(
        self, job: Job, reconciler: Reconciler, hooks: ItemHooks | None, claimed: int
    ) -> tuple[Job, Truth, bool] | None:
        """Set the claimed job's counts to the truth (a ``reconciled`` event
        when they changed); with item hooks, then seal the discovered stages
        the new counts completed and reconcile again, until none is sealed.
        The job, its last truth and whether anything changed; None when an
        increment arrived meanwhile (the job is moving)."""
        changed = False
        for _ in range(len(job.stages) + 1):  # each pass seals one stage at least
            truth = await reconciler.truth(job)
            text, data = describe_changes(job, truth)
            try:
                job = await self._store.set_counts(
                    job.id, truth.counts, keys=truth.done or None, if_seq=claimed
                )
            except Conflict:
                return None
            if text:
                changed = True
                await self._event(job, "reconciled", f"{text} reconciled", data)
            if hooks is None or job.status.terminal:
                break
            # Counts raised from the ledger may complete the stages feeding a
            # discovered one: seal it now, and reconcile it in turn.
            sealed = await hooks.prepare(job)
            if sealed is job or sealed.status.terminal:
                job = sealed
                break
            job, claimed = sealed, sealed.seq
        return job, truth, changed

    async def _missing(
        self,
        job: Job,
        *,
        reconciler: Reconciler,
        hooks: ItemHooks | None,
        missing: Mapping[str, Sequence[str]],
        backlog: Mapping[str, int],
        report: CycleReport,
    ) -> None:
        """Items are missing: slow (left alone), or re-driven, or the job failed."""
        queued = {stage: backlog[stage] for stage in missing if backlog.get(stage, 0)}
        events = await self._store.list_events(job.id)
        if queued and await self._waiting(job, reconciler.job_type, queued, events, report):
            return
        rounds = _rounds(events)
        lost = ", ".join(f"{stage} {len(keys)}" for stage, keys in missing.items())
        items = sum(len(keys) for keys in missing.values())
        if rounds >= self.max_redrives:
            reason = f"items still missing after {rounds} re-drives: {lost}"
            if await self._fail(job, reason, report) and hooks is not None:
                await hooks.give_up(job, missing, f"not done after {rounds} re-drives")
                report.items_failed += items
            return
        if not reconciler.can_redrive:
            reason = f"items missing and no broker to publish them again: {lost}"
            if await self._fail(job, reason, report) and hooks is not None:
                await hooks.give_up(job, missing, "missing, and no broker to publish it again")
                report.items_failed += items
            return
        # The round is recorded first: a round that is not recorded could repeat forever.
        done = sum(stage.completed_items + stage.failed_items for stage in job.stages.values())
        await self._event(
            job,
            "redriven",
            f"{items} missing items published again ({lost}), round {rounds + 1}"
            f" of {self.max_redrives}",
            {"round": rounds + 1, "done": done, "items": items}
            | ({"stalled": queued} if queued else {}),
        )
        report.items_redriven += await reconciler.redrive(job, missing)
        report.redriven += 1

    async def _recount(self, job: Job, reconciler: Reconciler, report: CycleReport) -> None:
        """The old service's pass: set the counts to the truth, nothing more
        (unless an increment arrived meanwhile)."""
        if not all(stage.total_final for stage in job.stages.values()):
            return  # still walking: its producer counts as it goes
        truth = await reconciler.truth(job)
        text, _ = describe_changes(job, truth)
        if not text:
            return
        try:
            job = await self._store.set_counts(
                job.id, truth.counts, keys=truth.done or None, if_seq=job.seq
            )
        except Conflict:
            report.moving += 1
            return
        report.reconciled += 1
        report.jobs.append(job.id)
        report.completed += job.status is JobStatus.COMPLETED

    async def _waiting(
        self,
        job: Job,
        job_type: str,
        queued: Mapping[str, int],
        events: Sequence[JobEvent],
        report: CycleReport,
    ) -> bool:
        """Whether the job waits behind a backlog that is being consumed
        (slow: left alone, and said so at most once every ``waiting_every``);
        False when every backlog it waits behind has neither shrunk nor been
        consumed for ``stuck_after`` (stalled: the job is stuck)."""
        now = self._clock()
        last = _last(events, "waiting")
        recorded = None if last is None else last.data
        since: dict[str, datetime] = {}
        for stage in queued:
            counted = None
            if self._backlogs.needs_count(job_type, stage, recorded):
                counted = await self._backlogs.counted(self._store, job_type, stage)
            at = self._backlogs.idle_since(job_type, stage, recorded, counted)
            since[stage] = now if at is None else at
        window = timedelta(seconds=self.stuck_after)
        if all(now - at >= window for at in since.values()):
            report.stalled += 1
            return False
        report.slow += 1
        verdict = _last(events, "waiting", "redriven")
        due = timedelta(seconds=self.waiting_every)
        if verdict is None or verdict.kind != "waiting" or now - verdict.at >= due:
            text = ", ".join(f"{stage} {size}" for stage, size in queued.items())
            await self._event(
                job,
                "waiting",
                f"left alone, waiting behind a backlog being consumed: {text} queued or in flight",
                BacklogWatch.snapshot(
                    queued,
                    since,
                    {s: await self._backlogs.counted(self._store, job_type, s) for s in queued},
                ),
            )
        return True

    async def _fail(self, job: Job, reason: str, report: CycleReport) -> bool:
        """Fail the job, unless an increment arrived since ``job`` was read:
        then it is moving, and not failed. Whether this call failed it."""
        try:
            ended = await self._store.end_job(
                job.id, JobStatus.FAILED, message=reason, if_seq=job.seq
            )
        except Conflict:
            report.moving += 1
            return False
        if not ended.changed:  # it had ended already, as what the job says
            return False
        report.failed += 1
        await self._event(job, "failed", reason, {})
        return True

    async def _event(self, job: Job, kind: str, message: str, data: dict[str, Any]) -> JobEvent:
        logger.warning(
            "job %s %s: %s", job.id, kind, message, extra={"action": kind, "job_id": job.id}
        )
        return await self._store.add_event(job.id, kind, message, data)
