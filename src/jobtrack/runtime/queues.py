"""The operator's queues: which queues an app has, their numbers, and its
dead letters, listed, sent back or dropped.

One module for the HTTP API and the command line (``jobtrack queues``,
``jobtrack dead``): the queues are every stage queue of the app's job types
(``<prefix>.<type>.<stage>``, or a handler's own queue) that has work on the
broker, each with its dead-letter queue; a dead letter is shown with the
job, stage and key its body decodes to (when it does) and a clipped
preview. Sending back or dropping records an event on each message's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from jobtrack.broker.base import DeadMessage, QueueStats, clip, dead_letter_queue
from jobtrack.errors import JobtrackError, MalformedMessage, NotFound, PartlySettled
from jobtrack.jobs.messages import decode_item
from jobtrack.runtime.app import App

__all__ = [
    "PREVIEW",
    "SETTLE_AT_ONCE",
    "AppQueue",
    "DeadLetterView",
    "QueueRow",
    "app_queue",
    "app_queues",
    "drop_dead",
    "list_dead",
    "queue_rows",
    "requeue_dead",
]

logger = logging.getLogger(__name__)

PREVIEW = 200
"""At most this many characters of a dead letter's body are shown."""

SETTLE_AT_ONCE = 1000
"""At most this many dead letters are sent back or dropped by one request
for all of them; the rest wait for the next (the caller reports how many
remain)."""


@dataclass(frozen=True, slots=True)
class AppQueue:
    """A stage queue of the app: the job type and stage whose items it holds."""

    job_type: str
    stage: str
    queue: str

    @property
    def dead_queue(self) -> str:
        """Where its rejected messages go."""
        return dead_letter_queue(self.queue)


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One stage queue's numbers: its own and its dead-letter queue's count."""

    queue: AppQueue
    stats: QueueStats
    dead_letters: int

    def to_dict(self) -> dict[str, Any]:
        """As JSON: the queue, its job type and stage, depth, consumers,
        unacked and oldest age (null where the broker does not tell), the
        dead-letter queue and its count."""
        return {
            "queue": self.queue.queue,
            "job_type": self.queue.job_type,
            "stage": self.queue.stage,
            "messages": self.stats.messages,
            "consumers": self.stats.consumers,
            "unacked": self.stats.unacked,
            "oldest_seconds": self.stats.oldest_seconds,
            "dead_queue": self.queue.dead_queue,
            "dead_letters": self.dead_letters,
        }


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    """A dead letter as an operator sees it: its id, reason, delivery count
    and death, the job, stage and key its body decodes to (None when it does
    not decode to an item message), and the body's first :data:`PREVIEW`
    characters."""

    id: str
    reason: str
    delivery_count: int | None
    died_at: str | None
    job_id: str | None
    job_type: str | None
    stage: str | None
    key: str | None
    preview: str

    @classmethod
    def of(cls, message: DeadMessage) -> DeadLetterView:
        """The view of a listed dead letter; never raises."""
        try:
            item = decode_item(message.body)
        except MalformedMessage:
            job_id = job_type = stage = key = None
        else:
            job_id, job_type, stage, key = item.job_id, item.job_type, item.stage, item.key
        died = None if message.died_at is None else message.died_at.isoformat()
        return cls(
            message.id,
            message.reason,
            message.delivery_count,
            died,
            job_id,
            job_type,
            stage,
            key,
            clip(message.body.decode("utf-8", "replace"), PREVIEW),
        )

    def to_dict(self) -> dict[str, Any]:
        """As JSON."""
        return {
            "id": self.id,
            "reason": self.reason,
            "delivery_count": self.delivery_count,
            "died_at": self.died_at,
            "job_id": self.job_id,
            "job_type": self.job_type,
            "stage": self.stage,
            "key": self.key,
            "preview": self.preview,
        }


def app_queues(app: App) -> list[AppQueue]:
    """The stage queues of ``app``'s job types, in the order the types and
    their stages are declared: every stage with work on the broker (a stage
    its producer counts has none, nor a type that sends its items to
    another framework)."""
    found: list[AppQueue] = []
    for job_type in app.job_types.values():
        if job_type.sender is not None:
            continue
        for stage in job_type.stages:
            if stage not in job_type.counted_by_producer:
                found.append(AppQueue(job_type.name, stage, job_type.queue(stage)))
    return found


def app_queue(app: App, queue: str) -> AppQueue:
    """The stage queue of ``app`` called ``queue``.

    :raises NotFound: no stage queue of the app has that name (the known
        ones are listed).
    """
    queues = app_queues(app)
    for known in queues:
        if known.queue == queue:
            return known
    names = ", ".join(known.queue for known in queues) or "none"
    raise NotFound(f"no queue {clip(queue, 100)!r} in this app (its queues: {names})")


async def queue_rows(app: App) -> list[QueueRow]:
    """Every stage queue of ``app`` with its numbers, asked of the broker
    at once.

    :raises BrokerUnavailable: the broker cannot be reached.
    """
    queues = app_queues(app)
    broker = app.broker
    stats = await asyncio.gather(*(broker.queue_stats(q.queue) for q in queues))
    dead = await asyncio.gather(*(broker.queue_stats(q.dead_queue) for q in queues))
    return [
        QueueRow(q, own, letters.messages)
        for q, own, letters in zip(queues, stats, dead, strict=True)
    ]


async def list_dead(app: App, queue: str, *, limit: int) -> list[DeadLetterView]:
    """The first ``limit`` dead letters of the stage queue ``queue``, oldest
    first, all left in place.

    :raises NotFound: ``queue`` is not one of the app's stage queues.
    :raises BrokerUnavailable: the broker cannot be reached.
    """
    chosen = app_queue(app, queue)
    listed = await app.broker.dead_messages(chosen.queue, limit=limit)
    return [DeadLetterView.of(message) for message in listed]


async def requeue_dead(
    app: App, queue: str, ids: Collection[str] | None, *, by: str
) -> list[DeadLetterView]:
    """Send the dead letters ``ids`` (None: all, at most
    :data:`SETTLE_AT_ONCE`) of ``queue`` back to it, and record a
    ``requeued`` event on the job of each (``by`` says who).

    :raises NotFound: ``queue`` is not one of the app's stage queues, or an
        id is not among its dead letters (named; nothing is sent back).
    :raises TooManyDeadLetters: the dead-letter queue holds more than the
        broker takes at once.
    :raises PartlySettled: the broker was lost part way: the views of those
        sent back (their events recorded) and the ids not sent back.
    :raises BrokerUnavailable: the broker cannot be reached.
    """
    return await _settle(app, queue, ids, requeue=True, by=by)


async def drop_dead(
    app: App, queue: str, ids: Collection[str] | None, *, by: str
) -> list[DeadLetterView]:
    """Drop the dead letters ``ids`` (None: all, at most
    :data:`SETTLE_AT_ONCE`) of ``queue``, and record a ``dropped`` event
    on the job of each (``by`` says who).

    :raises NotFound: ``queue`` is not one of the app's stage queues, or an
        id is not among its dead letters (named; nothing is dropped).
    :raises TooManyDeadLetters: the dead-letter queue holds more than the
        broker takes at once.
    :raises PartlySettled: the broker was lost part way: the views of those
        dropped (their events recorded) and the ids not dropped.
    :raises BrokerUnavailable: the broker cannot be reached.
    """
    return await _settle(app, queue, ids, requeue=False, by=by)


async def _settle(
    app: App, queue: str, ids: Collection[str] | None, *, requeue: bool, by: str
) -> list[DeadLetterView]:
    chosen = app_queue(app, queue)
    if ids is not None and not ids:
        return []
    most = SETTLE_AT_ONCE if ids is None else None
    try:
        taken = await app.broker.settle_dead(chosen.queue, ids, requeue=requeue, most=most)
    except PartlySettled as exc:
        done = [
            DeadLetterView.of(message) for message in exc.taken if isinstance(message, DeadMessage)
        ]
        await _record(app, chosen, done, requeue=requeue, by=by)
        raise PartlySettled(str(exc), taken=done, not_taken=exc.not_taken) from exc
    views = [DeadLetterView.of(message) for message in taken]
    await _record(app, chosen, views, requeue=requeue, by=by)
    return views


async def _record(
    app: App, chosen: AppQueue, views: list[DeadLetterView], *, requeue: bool, by: str
) -> None:
    """A ``requeued`` (or ``dropped``) event on the job of each of ``views``;
    one that cannot be recorded is logged (the message is settled)."""
    kind = "requeued" if requeue else "dropped"
    done = f"sent back to {chosen.queue}" if requeue else f"dropped from {chosen.dead_queue}"
    for view in views:
        if view.job_id is None:
            continue  # not an item message: no job to tell
        message = (
            f"dead letter {view.id} ({view.stage}, item {clip(view.key or '', 100)}) {done}"
            f" by {by}; it had died for: {clip(view.reason, 200)}"
        )
        data = {"queue": chosen.queue, "dead_letter": view.id, "stage": view.stage, "by": by}
        try:
            await app.store.add_event(view.job_id, kind, message, data)
        except JobtrackError as exc:  # an unknown job, or the store away: the message is settled
            logger.warning(
                "could not record the %s event of dead letter %s on job %s: %s",
                kind,
                view.id,
                view.job_id,
                exc,
                extra={"action": "dead_letter_event_lost", "queue": chosen.queue},
            )
