"""Producing a job: create it, add its items (ledger, totals, messages),
seal what the producer feeds.

::

    async with app:
        async with app.start_job("csv-import", attributes={"file": path}) as producer:
            await producer.add("parse", [(f"part-{n}", {"offset": n}) for n in range(10)])
        # leaving the block without an error sealed the producer's stages

Each batch of at most :data:`PRODUCER_BATCH` items is first written to the
job's ledger, raising the stage's total by the items that are new
(:meth:`~jobtrack.store.base.JobStore.add_items`), and only then published,
one :class:`~jobtrack.jobs.messages.ItemMessage` per item to the stage's
queue: an item is never worked on before the job knows of it. The whole
batch is published, new items or not, so adding a batch again after a crash
between the write and the publish loses nothing (a worker counts each key
once). A stage whose items come from handlers (a *discovered* stage) cannot
be added to by the producer; it seals itself once its feeders complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeAlias

from jobtrack.broker import Broker
from jobtrack.broker.base import clip
from jobtrack.errors import Conflict, InvalidRequest
from jobtrack.jobs.sealing import seal_ready
from jobtrack.jobs.types import JobType
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore
from jobtrack.store.ledger import LedgerItem

__all__ = ["DEFAULT_HEARTBEAT", "PRODUCER_BATCH", "ItemSpec", "JobProducer", "as_ledger_item"]

logger = logging.getLogger(__name__)

PRODUCER_BATCH = 1_000
#: Seconds between a producer's heartbeats, by default.
DEFAULT_HEARTBEAT = 30.0
"""The most items one ledger write (and one publish) of :meth:`JobProducer.add` holds."""

#: What :meth:`JobProducer.add` takes for an item: a :class:`LedgerItem`, a
#: ``(key, payload)`` pair, or a plain key (no payload).
ItemSpec: TypeAlias = LedgerItem | tuple[str, Any] | str


def as_ledger_item(item: ItemSpec) -> LedgerItem:
    """``item`` as a :class:`LedgerItem`.

    :raises InvalidRequest: neither a ledger item, a (key, payload) pair nor a key.
    """
    if isinstance(item, LedgerItem):
        return item
    if isinstance(item, str):
        return LedgerItem(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return LedgerItem(item[0], item[1])
    raise InvalidRequest(
        f"an item is a LedgerItem, a (key, payload) pair or a key, not {clip(repr(item), 100)}"
    )


class JobProducer:
    """Creates a job of ``job_type`` and feeds it: an async context manager.

    On enter the job is created; :meth:`add` records and publishes items;
    leaving the block without an error seals the stages the producer feeds
    (:meth:`seal`); an error in the block cancels the job, with the error
    as its message, and propagates.

    While the producer is open and not sealed it writes a heartbeat every
    ``heartbeat`` seconds (the first stage it feeds is marked started, with
    how many items were added so far), so that a producer that pauses
    between batches is not taken for a dead one by the monitor; the
    heartbeat also reads the job, and once the job has ended (cancelled,
    or failed by the monitor) :meth:`add` and :meth:`seal` raise
    :class:`~jobtrack.errors.Conflict` instead of feeding it.

    :param attributes: the job's attributes (JSON).
    :param batch_size: items per ledger write and publish, at most
        :data:`PRODUCER_BATCH`.
    :param heartbeat: seconds between heartbeats (keep it well under the
        monitor's ``stuck_after``).
    :param beat_message: what each heartbeat sets as the stage's message
        (called at each beat; default: how many items were added so far);
        also settable later as :attr:`beat_message`.
    :raises InvalidRequest: a batch size or heartbeat out of range.
    """

    def __init__(
        self,
        store: JobStore,
        broker: Broker,
        job_type: JobType,
        *,
        attributes: dict[str, Any] | None = None,
        batch_size: int = PRODUCER_BATCH,
        heartbeat: float = DEFAULT_HEARTBEAT,
        beat_message: Callable[[], str] | None = None,
    ) -> None:
        if not 1 <= batch_size <= PRODUCER_BATCH:
            raise InvalidRequest(f"batch_size must be 1 to {PRODUCER_BATCH}, not {batch_size}")
        if heartbeat <= 0:
            raise InvalidRequest(f"heartbeat must be positive, not {heartbeat}")
        self._heartbeat = heartbeat
        self.beat_message = beat_message or (lambda: f"adding items: {self.added} so far")
        """What each heartbeat writes as the first fed stage's message."""
        self._beating: asyncio.Task[None] | None = None
        self._ended: JobStatus | None = None
        self._store = store
        self._broker = broker
        self.job_type = job_type
        """The type of the job this producer feeds."""
        self._attributes = dict(attributes or {})
        self._batch_size = batch_size
        self._job: Job | None = None
        self._sealed = False
        self.added = 0
        """Items new to the ledger so far (each raised its stage's total)."""
        self.published = 0
        """Item messages published so far."""

    @property
    def job(self) -> Job:
        """The job, as created (or as the last :meth:`seal` left it).

        :raises InvalidRequest: the producer has not been entered yet.
        """
        if self._job is None:
            raise InvalidRequest("the job is created on entering the producer: use `async with`")
        return self._job

    @property
    def ended(self) -> JobStatus | None:
        """How the job ended under the producer (cancelled, failed by the
        monitor...), once a heartbeat or the seal has noticed; else None."""
        return self._ended

    @property
    def sealed(self) -> bool:
        """Whether the producer's stages are sealed (nothing more can be added)."""
        return self._sealed

    async def start(self) -> Job:
        """Create the job (what entering the producer does); returns it.

        :raises InvalidRequest: the job was created already; attributes the
            store refuses.
        :raises StoreUnavailable: the store cannot be reached.
        """
        if self._job is not None:
            raise InvalidRequest("this producer has created its job already")
        self.job_type.check_complete()
        self._job = await self._store.create_job(
            self.job_type.name, self.job_type.stages, attributes=self._attributes
        )
        logger.info(
            "job %s of %s created",
            self._job.id,
            self.job_type.name,
            extra={"action": "job_created", "job_id": self._job.id},
        )
        self._beating = asyncio.create_task(self._beat(self._job), name="producer-heartbeat")
        return self._job

    async def _beat(self, job: Job) -> None:
        """Touch the job every ``heartbeat`` seconds until sealed, and notice
        when it has ended; never raises (a lost beat is logged)."""
        fed = [stage for stage in self.job_type.stages if not self.job_type.discovered(stage)]
        while not self._sealed:
            await asyncio.sleep(self._heartbeat)
            try:
                current = await self._store.get_job(job.id)
                if current.status.terminal:
                    self._ended = current.status
                    return
                await self._store.start_stage(job.id, fed[0], message=self.beat_message())
            except Exception as exc:  # the heartbeat must outlive any error
                logger.warning(
                    "producer heartbeat of job %s not written: %s",
                    job.id,
                    clip(f"{type(exc).__name__}: {exc}"),
                    extra={"action": "producer_heartbeat_unwritten", "job_id": job.id},
                )

    def _check_open(self, job: Job) -> None:
        if self._ended is not None:
            raise Conflict(
                f"job {job.id} has ended ({self._ended.value}) while its producer was "
                "adding items: nothing more is added"
            )
        if self._sealed:
            raise InvalidRequest(f"job {job.id} is sealed: nothing more can be added")

    def _stop_beating(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            self._beating = None

    async def add(self, stage: str, items: Iterable[ItemSpec]) -> int:
        """Add items to ``stage``: each batch written to the ledger (the
        stage's total raised by its new items), then published. A key twice
        in one batch is added once (its first payload). Returns how many
        items were new to the ledger.

        :raises InvalidRequest: an unknown stage, a discovered stage (its
            items come from handlers), the producer sealed or not entered,
            an item key or payload the ledger refuses (that batch and the
            rest are not written; earlier batches are).
        :raises Conflict: the job has ended meanwhile (cancelled, or failed
            by the monitor).
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused a publish.
        """
        job = self.job
        self._check_open(job)
        if self.job_type.discovered(stage):  # also refuses an unknown stage
            feeders = ", ".join(self.job_type.fed_by(stage))
            raise InvalidRequest(
                f"stage {stage!r} of {self.job_type.name!r} is fed by the handlers of "
                f"{feeders}, not by the producer"
            )
        return await self.add_to_stage(stage, items)

    async def add_to_stage(self, stage: str, items: Iterable[ItemSpec]) -> int:
        """Add items to any stage, a discovered one included, as :meth:`add`
        does (a retry re-does a discovered stage's failed items itself; it
        seals the stages it chooses with :meth:`seal_stages`).

        :raises InvalidRequest: as :meth:`add`, but for a discovered stage.
        :raises Conflict: the job has ended meanwhile.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused a publish.
        """
        job = self.job
        self._check_open(job)
        self.job_type.queue(stage)  # refuses an unknown stage
        new = 0
        # Each batch is written to the ledger, then published; the next
        # batch's ledger write and publishes overlap the confirms of the one
        # before (the broker's confirm window is shared), so the window does
        # not drain at every batch. At most two batches are being published.
        publishing: asyncio.Task[None] | None = None
        try:
            for batch in self._batches(items):
                new += await self._record(job, stage, batch)
                started = asyncio.create_task(self._publish(job, stage, batch))
                previous, publishing = publishing, started
                if previous is not None:
                    await previous
            if publishing is not None:
                await publishing
        except Exception:
            if publishing is not None:  # what was written goes out before the error
                with contextlib.suppress(Exception):  # else the monitor re-drives it
                    await publishing
            raise
        finally:
            if publishing is not None and not publishing.done():
                publishing.cancel()
                with contextlib.suppress(BaseException):
                    await publishing
        return new

    def _batches(self, items: Iterable[ItemSpec]) -> Iterator[list[LedgerItem]]:
        """The items as ledger items, a batch at a time, each key once a batch."""
        batch: dict[str, LedgerItem] = {}
        for spec in items:
            item = as_ledger_item(spec)
            batch.setdefault(item.key, item)
            if len(batch) >= self._batch_size:
                yield list(batch.values())
                batch = {}
        if batch:
            yield list(batch.values())

    async def _record(self, job: Job, stage: str, batch: list[LedgerItem]) -> int:
        new = await self._store.add_items(job.id, stage, batch)
        self.added += new
        return new

    async def _publish(self, job: Job, stage: str, batch: list[LedgerItem]) -> None:
        await self.job_type.send_items(self._broker, job, stage, batch)
        self.published += len(batch)

    async def seal(self) -> Job:
        """Seal the total of every stage the producer feeds (every stage that
        is not discovered), then the discovered stages that are ready
        (:func:`~jobtrack.jobs.sealing.seal_ready`: one fed by stages that
        got no items seals at once). Sealing again does nothing more.
        Returns the job as it is then.

        :raises InvalidRequest: the producer has not been entered.
        :raises Conflict: the job ended before it was sealed (cancelled, or
            failed by the monitor).
        :raises StoreUnavailable: the store cannot be reached.
        """
        job = self.job
        if not self._sealed:
            await self._check_active(job)
            for stage in self.job_type.stages:
                if not self.job_type.discovered(stage):
                    await self._store.seal_total(job.id, stage)
            self._sealed = True
            self._stop_beating()
        self._job = await seal_ready(self._store, self.job_type, job.id)
        return self._job

    async def _check_active(self, job: Job) -> None:
        current = await self._store.get_job(job.id)
        if current.status.terminal:
            self._ended = current.status
        self._check_open(job)

    async def seal_stages(self, stages: Iterable[str]) -> Job:
        """Seal these stages' totals, then the discovered stages that are
        ready; nothing more can be added afterwards. Returns the job then.

        :raises InvalidRequest: the producer has not been entered; an unknown stage.
        :raises StoreUnavailable: the store cannot be reached.
        """
        job = self.job
        await self._check_active(job)
        for stage in stages:
            await self._store.seal_total(job.id, stage)
        self._sealed = True
        self._stop_beating()
        self._job = await seal_ready(self._store, self.job_type, job.id)
        return self._job

    async def cancel(self, reason: str) -> None:
        """Cancel the job (unless it has ended already), with ``reason`` as its message.

        :raises StoreUnavailable: the store cannot be reached.
        """
        job = self.job
        self._sealed = True  # nothing more is added to a cancelled job
        self._stop_beating()
        ended = await self._store.end_job_if_active(job.id, JobStatus.CANCELLED, message=reason)
        self._job = ended.job

    async def __aenter__(self) -> JobProducer:
        """Create the job (:meth:`start`)."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Seal after a body that ended normally; cancel the job after one
        that raised (the error propagates; a failure to cancel is logged)."""
        if self._job is None:
            return
        if exc is None:
            try:
                await self.seal()
            finally:
                self._stop_beating()
            return
        reason = clip(f"the producer failed: {exc!r}")
        try:
            await self.cancel(reason)
        except Exception as failure:  # the body's error is the one to see
            logger.error(
                "job %s could not be cancelled after its producer failed: %r",
                self._job.id,
                failure,
                extra={"action": "cancel_failed", "job_id": self._job.id},
            )
