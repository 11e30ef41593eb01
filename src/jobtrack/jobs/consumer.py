"""The consumer of one stage of a user's job type.

For each :class:`~jobtrack.jobs.messages.ItemMessage`: run the stage's
handler on the item (:class:`~jobtrack.jobs.executors.HandlerRunner`), then,
in this order, write what it added for later stages to the job's ledger
and publish it, or, when it failed for good, record its error; count the
item (done or failed) with the tracker, and ack once the count is durable.
So an item acked has its count, its discovered work and its error stored,
and an item not acked is delivered again and counts once.

With the consumers' progress off (the rollback switch: the tracker is
disabled), nothing is counted; the item's outcome is recorded in the
ledger instead (``JobStore.record_outcomes``) before the ack, so that the
monitor alone brings the job to its counts from the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from jobtrack.broker import Broker, Delivery
from jobtrack.broker.base import clip
from jobtrack.errors import InvalidRequest, MalformedMessage, NotFound, StoreUnavailable
from jobtrack.jobs.executors import Attempt, HandlerRunner, describe
from jobtrack.jobs.gate import JobGate
from jobtrack.jobs.messages import ItemMessage, decode_item, encode_item, item_bodies
from jobtrack.jobs.sealer import Sealer
from jobtrack.jobs.types import Item, JobType
from jobtrack.store import JobStore
from jobtrack.store.ledger import MAX_LEDGER_BATCH, LedgerItem, check_items
from jobtrack.tracking import ProgressTracker

if TYPE_CHECKING:
    from jobtrack.jobs.heartbeat import ItemCounter
    from jobtrack.runtime.app import App

__all__ = ["ADD_BATCH", "CRASH_ALLOWANCE", "ItemConsumer", "OutcomeWriter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ADD_BATCH = 1_000
"""Discovered items written to the ledger (and published) per batch."""


class OutcomeWriter:
    """Records items' outcomes in their job's ledger
    (``JobStore.record_outcomes``), batched: the outcomes that come while a
    write is under way go together in the next one, one call per job and
    stage (at most :data:`~jobtrack.store.ledger.MAX_LEDGER_BATCH` keys); a
    key given twice meanwhile keeps its last outcome. While the store is
    unreachable the batch is held and written again with backoff, for as
    long as it takes.
    """

    def __init__(self, store: JobStore, *, retry_delay: float = 0.2) -> None:
        self._store = store
        self._retry_delay = retry_delay
        # (job, stage) -> key -> (failed, the callers waiting for it)
        self._pending: dict[tuple[str, str], dict[str, tuple[bool, list[asyncio.Future[None]]]]]
        self._pending = {}
        self._writing: asyncio.Task[None] | None = None

    async def record(self, job_id: str, stage: str, key: str, *, failed: bool) -> None:
        """Record the item's outcome; returns once it is written.

        :raises JobtrackError: the store refused the batch the outcome went
            in, for another reason than an outage (the caller may try again).
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = self._pending.setdefault((job_id, stage), {})
        _, waiters = keys.get(key, (failed, []))
        keys[key] = (failed, [*waiters, waiter])
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_all())
        await waiter

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            for (job_id, stage), keys in batch.items():
                chosen = list(keys.items())
                for start in range(0, len(chosen), MAX_LEDGER_BATCH):
                    await self._write(job_id, stage, chosen[start : start + MAX_LEDGER_BATCH])

    async def _write(
        self,
        job_id: str,
        stage: str,
        chosen: list[tuple[str, tuple[bool, list[asyncio.Future[None]]]]],
    ) -> None:
        done = [key for key, (failed, _) in chosen if not failed]
        lost = [key for key, (failed, _) in chosen if failed]
        waiters = [waiter for _, (_, every) in chosen for waiter in every]
        delay = self._retry_delay
        while True:
            try:
                await self._store.record_outcomes(job_id, stage, done, lost)
            except StoreUnavailable as exc:
                logger.warning(
                    "store unreachable to record %d outcomes of job %s (%s); again in %.1f s",
                    len(chosen),
                    job_id,
                    clip(str(exc)),
                    delay,
                    extra={"action": "store_unavailable", "job_id": job_id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except Exception as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                return
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return


class ItemConsumer:
    """Handles the messages of one stage of ``job_type``.

    A handler that returns has done its item; one that raises an error the
    type retries (:meth:`JobType.retryable`) has the message put back, its
    ``attempt`` raised, after :meth:`JobType.delay`, until
    ``max_attempts``; any other error, or the last attempt's, fails the item
    with its error recorded (``store.record_failure``). Items a handler
    added (:meth:`Item.add`) are written to the ledger, in batches of
    :data:`ADD_BATCH`, and published to their stage's queue before the item
    counts; only a handler that returned adds anything. An added item the
    ledger refuses (a bad key or payload, a stage sealed already) fails the
    item with the reason.

    A malformed message, or one of another type or stage, is dead-lettered
    with its reason, as is one whose job does not exist or whose count the
    store refuses. An item of a job that has ended is acked without work.
    While the store is unreachable the message is held and its writes tried
    again with backoff, for as long as it takes. The ack waits until the
    item's count is durable (``durable_within`` seconds at most; None: as
    long as it takes). After the count, when the stage feeds others, the
    ``sealer`` checks whether the job's discovered stages are ready to seal.
    With the tracker disabled, the item's outcome (done or failed) is
    recorded in the job's ledger instead of its count, before the ack
    (``outcomes``, batched; one of the consumer's own by default).
    Handlers on the loop or in threads get ``app`` as :attr:`Item.app`.
    Each item counted, done or failed, is also counted in ``counter`` (in
    memory, for the worker's heartbeat), when there is one.
    """

    def __init__(
        self,
        job_type: JobType,
        stage: str,
        *,
        store: JobStore,
        broker: Broker,
        tracker: ProgressTracker,
        runner: HandlerRunner,
        gate: JobGate | None = None,
        sealer: Sealer | None = None,
        durable_within: float | None = None,
        retry_delay: float = 0.2,
        outcomes: OutcomeWriter | None = None,
        app: App | None = None,
        counter: ItemCounter | None = None,
    ) -> None:
        handler = job_type.handlers.get(stage)
        if handler is None:
            raise InvalidRequest(f"job type {job_type.name!r} has no handler for {stage!r}")
        self.job_type = job_type
        self.stage = stage
        self.handler = handler
        self.queue = job_type.queue(stage)
        self._store = store
        self._broker = broker
        self._tracker = tracker
        self._runner = runner
        self._gate = gate or JobGate(store)
        self._sealer = sealer if handler.feeds else None
        self._durable_within = durable_within
        self._retry_delay = retry_delay
        self._outcomes = outcomes or OutcomeWriter(store, retry_delay=retry_delay)
        self._app = app
        self._counter = counter

    async def handle(self, delivery: Delivery) -> None:
        """Handle one delivery and settle it; never raises."""
        try:
            message = decode_item(delivery.body)
            if (message.job_type, message.stage) != (self.job_type.name, self.stage):
                raise MalformedMessage(
                    f"a {message.job_type!r} {message.stage!r} message on the queue of "
                    f"{self.job_type.name!r} {self.stage!r}"
                )
        except MalformedMessage as exc:
            await delivery.nack(requeue=False, reason=clip(str(exc)))
            return
        try:
            await self._handle(delivery, message)
        except NotFound as exc:  # the job or stage is gone: a redelivery fails again
            await delivery.nack(requeue=False, reason=clip(str(exc)))
        except Exception as exc:  # a write that is not the store's outage, a publish
            await self._retry_later(delivery, message, exc)

    async def _handle(self, delivery: Delivery, message: ItemMessage) -> None:
        job = await self._reachable(lambda: self._gate.read(message.job_id), message)
        if job.status.terminal:
            logger.info(
                "%s of item %s skipped: job %s has ended (%s)",
                message.stage,
                message.key,
                message.job_id,
                job.status,
                extra={"action": "skipped", "job_id": message.job_id},
            )
            await delivery.ack()
            return
        if delivery.delivery_count > 1:  # its worker died, or its channel closed, before the ack
            logger.info(
                "%s of item %s of job %s delivered again (delivery %d)",
                self.stage,
                message.key,
                message.job_id,
                delivery.delivery_count,
                extra={"action": "redelivered", "job_id": message.job_id},
            )
        attempt = _attempts(delivery, message, self.job_type.max_attempts)
        item = Item(
            message.key,
            message.payload,
            job,
            self.stage,
            attempt,
            feeds=self.handler.feeds,
            app=None if self.handler.executor == "process" else self._app,
        )
        outcome = await self._runner.run(self.job_type, self.handler, item)
        if outcome.error is None:
            outcome = await self._add_discovered(message, outcome)
        if outcome.error is not None:
            if outcome.retryable and attempt < self.job_type.max_attempts:
                await self._try_again(delivery, message, attempt, outcome)
                return
            await self._record_failure(message, attempt, outcome.error)
        if not self._tracker.enabled:
            await self._record_outcome(message, failed=outcome.error is not None)
            await delivery.ack()
            self._count(outcome.error)
            return
        receipt = self._tracker.add(
            message.job_id, self.stage, item_key=message.key, failed=outcome.error is not None
        )
        await receipt.wait(self._durable_within)
        if receipt.refused is not None:  # refused for good: a redelivery would be refused again
            await delivery.nack(
                requeue=False, reason=clip(f"progress refused by the store: {receipt.refused}")
            )
            return
        await delivery.ack()
        if self._counter is not None:  # as the store counts it: a key counted before is not
            self._counter.count_receipt(self.job_type.name, self.stage, receipt, outcome.error)
        if self._sealer is not None:
            self._sealer.poke(self.job_type, message.job_id)

    def _count(self, error: str | None) -> None:
        if self._counter is not None:
            self._counter.count(self.job_type.name, self.stage, error=error)

    async def _add_discovered(self, message: ItemMessage, outcome: Attempt) -> Attempt:
        """Write the items the handler added to the ledger and publish them,
        batch by batch; the outcome, failed if the ledger refuses them."""
        by_stage: dict[str, dict[str, LedgerItem]] = {}
        for stage, added in outcome.added:
            by_stage.setdefault(stage, {}).setdefault(added.key, added)  # first of a key wins
        try:
            for stage, items in by_stage.items():
                batches = [
                    list(items.values())[start : start + ADD_BATCH]
                    for start in range(0, len(items), ADD_BATCH)
                ]
                for batch in batches:
                    check_items(batch)  # all refusals known before anything is written
                for batch in batches:
                    await self._add_batch(message, stage, batch)
        except InvalidRequest as exc:
            return Attempt(error=f"adding to a later stage: {describe(exc)}")
        return outcome

    async def _add_batch(self, message: ItemMessage, stage: str, batch: list[LedgerItem]) -> None:
        job_id = message.job_id
        await self._reachable(lambda: self._store.add_items(job_id, stage, batch), message)
        await self._broker.publish_many(
            self.job_type.queue(stage),
            item_bodies(job_id, self.job_type.name, stage, batch),
        )

    async def _record_failure(self, message: ItemMessage, attempt: int, error: str) -> None:
        logger.info(
            "%s of item %s of job %s failed (attempt %d): %s",
            self.stage,
            message.key,
            message.job_id,
            attempt,
            clip(error),
            extra={"action": "item_failed", "job_id": message.job_id},
        )
        await self._reachable(
            lambda: self._store.record_failure(
                message.job_id, self.stage, message.key, error, attempts=attempt
            ),
            message,
        )

    async def _record_outcome(self, message: ItemMessage, *, failed: bool) -> None:
        """The item's outcome in the ledger: its truth while progress is off
        (written with the other outcomes of the moment, see :class:`OutcomeWriter`)."""
        await self._outcomes.record(message.job_id, self.stage, message.key, failed=failed)

    async def _try_again(
        self, delivery: Delivery, message: ItemMessage, attempt: int, outcome: Attempt
    ) -> None:
        logger.info(
            "%s of item %s of job %s: attempt %d of %d failed (%s); trying again in %.1f s",
            self.stage,
            message.key,
            message.job_id,
            attempt,
            self.job_type.max_attempts,
            clip(outcome.error or ""),
            outcome.delay,
            extra={"action": "item_retry", "job_id": message.job_id},
        )
        await asyncio.sleep(outcome.delay)
        await delivery.retry(encode_item(msgspec.structs.replace(message, attempt=attempt + 1)))

    async def _retry_later(self, delivery: Delivery, message: ItemMessage, exc: Exception) -> None:
        """An error that is not the item's (a publish that failed, a store
        error other than an outage): put the message back after a backoff,
        until ``max_attempts``, then dead-letter it."""
        attempt = _attempts(delivery, message, self.job_type.max_attempts)
        again = attempt < self.job_type.max_attempts
        logger.warning(
            "item %s of job %s not done (%s); %s",
            message.key,
            message.job_id,
            clip(describe(exc)),
            "will retry" if again else "dead-lettered",
            extra={"action": "item_error", "job_id": message.job_id},
        )
        try:
            if not again:
                await delivery.nack(requeue=False, reason=clip(describe(exc)))
                return
            await asyncio.sleep(min(self._retry_delay * 2 ** (attempt - 1), 10.0))
            await delivery.retry(encode_item(msgspec.structs.replace(message, attempt=attempt + 1)))
        except Exception:  # the broker is gone: the message is delivered again
            logger.exception("cannot settle item %s of job %s", message.key, message.job_id)

    async def _reachable(self, call: Callable[[], Awaitable[T]], message: ItemMessage) -> T:
        """``call()``, tried again for as long as the store is unreachable: an
        outage holds the message (and, at ``prefetch``, stops the intake)
        instead of spending its attempts."""
        delay = self._retry_delay
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                logger.warning(
                    "store unreachable for item %s of job %s (%s); trying again in %.1f s",
                    message.key,
                    message.job_id,
                    clip(str(exc)),
                    delay,
                    extra={"action": "store_unavailable", "job_id": message.job_id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


#: Deliveries of one message past its own attempt count after which it is
#: taken for a crash loop (a worker dying on the item every time).
CRASH_ALLOWANCE = 10


def _attempts(delivery: Delivery, message: ItemMessage, max_attempts: int) -> int:
    """Which try of the item this is: the message's own count (a retry
    republishes it with the count raised). The broker's count also grows
    each time a stopping worker hands back a message it had not started,
    so it counts only past :data:`CRASH_ALLOWANCE` more deliveries than
    attempts: then workers died on the item that often, and this try is
    its last."""
    if delivery.delivery_count > message.attempt + CRASH_ALLOWANCE:
        return max(message.attempt, max_attempts)
    return message.attempt
