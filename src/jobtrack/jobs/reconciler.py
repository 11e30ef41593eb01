"""The monitor's view of a job type whose truth is its item ledger.

Every item a job must do is in its ledger (:mod:`jobtrack.store.ledger`);
the keys counted by the workers say which are done. So the items missing
are the ledger's items whose key is not counted, and re-driving them means
publishing their ledger payloads again.

The counts need no correcting: the store claims an item's key and counts
it in one write, so the stage's counters and its counted keys agree. The
truth this reconciler gives is therefore the stored counts, never lowered:
a stage whose counted keys outnumber its counts (a write the counters
missed) is raised to them, and the total to the ledger's items, but the
counted keys are left as they are (:attr:`Truth.done` is empty), and a
count with no key behind it (an increment without an item key) is kept.

With the consumers' progress off (the rollback switch), no key is counted:
the workers record each item's outcome in the ledger instead
(``JobStore.record_outcomes``), and the ledger counts those items too. A
stage with outcomes recorded beyond its counted keys has its counts raised
to them, and its counted keys set to every item the ledger counts (counted
or recorded: :meth:`~jobtrack.store.base.JobStore.settled_items`), so that
an item recorded and then counted as well (progress switched back on, a
redelivery) counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from jobtrack.broker import Broker
from jobtrack.jobs.sealing import ready_to_seal, seal_ready
from jobtrack.jobs.types import JobType
from jobtrack.model import Job, StageCounts
from jobtrack.monitor.base import Truth
from jobtrack.store import JobStore
from jobtrack.store.ledger import LedgerItem, LedgerTally

__all__ = ["LedgerReconciler"]

logger = logging.getLogger(__name__)

#: Missing items read per ``missing_items`` call, and published per batch.
PAGE = 1_000

_NONE = LedgerTally(0, 0, 0)


class LedgerReconciler:
    """The :class:`~jobtrack.monitor.Reconciler` of a job type declared in
    Python: its truth the ledger against the counted keys; with a broker, it
    reads the stage queues' backlog and publishes missing items again.

    It also prepares a stuck job (its discovered stages that are ready are
    sealed first) and, when the monitor gives up on a job, records each
    item still missing as a failure, so that a retry does it again.
    """

    def __init__(self, job_type: JobType, store: JobStore, broker: Broker | None = None) -> None:
        self.type = job_type
        """The job type, as declared."""
        self._store = store
        self._broker = broker

    @property
    def job_type(self) -> str:
        """The name of the job type."""
        return self.type.name

    @property
    def can_redrive(self) -> bool:
        """Whether missing items can be sent again: the type has a sender,
        or there is a broker to publish them to."""
        return self.type.sender is not None or self._broker is not None

    async def prepare(self, job: Job) -> Job:
        """Seal the job's discovered stages that are ready
        (:func:`~jobtrack.jobs.sealing.seal_ready`); the job as it is then.

        A job with nothing ready is returned as it was read, unread again
        (so a job that moved since is not taken for stuck).

        :raises JobNotFound: the job is gone.
        :raises StoreUnavailable: the store cannot be reached.
        """
        if not ready_to_seal(self.type, job):
            return job
        return await seal_ready(self._store, self.type, job.id)

    async def truth(self, job: Job) -> Truth:
        """The stored counts, never lowered (see the module), raised to the
        outcomes recorded with their keys, and every missing item's key per
        stage, read in pages.

        :raises JobNotFound: the job is gone.
        :raises StoreUnavailable: the store cannot be reached.
        """
        tallies = await self._store.tally_ledger(job.id)
        counts: dict[str, StageCounts] = {}
        missing: dict[str, list[str]] = {}
        done: dict[str, list[str]] = {}
        for name, stage in job.stages.items():
            tally = tallies.get(name, _NONE)
            completed, failed = stage.completed_items, stage.failed_items
            if tally.counted > completed + failed:
                failed = max(failed, tally.failed)
                completed = max(completed, tally.counted - failed)
            counts[name] = StageCounts(
                max(stage.total_items, tally.items, completed + failed),
                completed,
                failed,
                total_final=stage.total_final,
            )
            if tally.recorded:
                done[name] = await self._settled(job.id, name)
            if tally.missing:
                missing[name] = [item.key for item in await self._missing(job.id, name)]
        waiting = frozenset(
            name
            for name, stage in job.stages.items()
            if not stage.total_final and self.type.discovered(name)
        )
        return Truth(counts, done, missing, waiting_to_seal=waiting)

    async def _settled(self, job_id: str, stage: str) -> list[str]:
        keys: list[str] = []
        after: str | None = None
        while True:
            page = await self._store.settled_items(job_id, stage, after=after, limit=PAGE)
            keys.extend(page)
            if len(page) < PAGE:
                return keys
            after = page[-1]

    async def _missing(self, job_id: str, stage: str) -> list[LedgerItem]:
        items: list[LedgerItem] = []
        after: str | None = None
        while True:
            page = await self._store.missing_items(job_id, stage, after=after, limit=PAGE)
            items.extend(page)
            if len(page) < PAGE:
                return items
            after = page[-1].key

    async def backlog(self) -> dict[str, int]:
        """Per stage, the messages its queue holds or has in flight (none
        without a broker); a type with a sender: what its sender tells, the
        stages it cannot tell left out."""
        sender = self.type.sender
        if sender is not None:
            told = {stage: await sender.backlog(stage) for stage in self.type.stages}
            return {stage: depth for stage, depth in told.items() if depth is not None}
        if self._broker is None:
            return {}
        return {
            stage: await self._broker.in_flight(self.type.queue(stage))
            for stage in self.type.stages
        }

    async def redrive(self, job: Job, missing: Mapping[str, Sequence[str]]) -> int:
        """Publish the given missing items again, with their ledger payloads
        (an item no longer in the ledger is left out), or send them through
        the type's sender; how many were published or sent.

        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused a publish.
        :raises JobtrackError: the type's sender could not send them.
        """
        if not self.can_redrive:
            return 0
        published = 0
        for stage, keys in missing.items():
            wanted = list(dict.fromkeys(keys))
            for start in range(0, len(wanted), PAGE):
                items = await self._store.ledger_items(job.id, stage, wanted[start : start + PAGE])
                await self.type.send_items(self._broker, job, stage, items)
                published += len(items)
        return published

    async def give_up(self, job: Job, missing: Mapping[str, Sequence[str]], reason: str) -> None:
        """Record each item still missing as failed with ``reason``, once the
        monitor has failed the job, so that a retry of the job does them.

        :raises StoreUnavailable: the store cannot be reached.
        """
        for stage, keys in missing.items():
            for key in keys:
                await self._store.record_failure(job.id, stage, key, reason)
