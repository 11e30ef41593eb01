"""A worker process: consumes stage queues from a shared broker.

``jobtrack worker`` runs one. For each job type of its app with handlers
it consumes the queue of each handled stage
(:class:`~jobtrack.jobs.consumer.ItemConsumer`, handlers run on the loop, in
``concurrency`` threads or as many processes); without an app, the
built-in app's (:func:`~jobtrack.runtime.builtin.builtin_app`: the
collection scan's renditions). Each item is reported to the
tracker and its message acked only once the item's progress is durable in
the store, so a worker killed at any moment loses nothing: what it had not
acked is delivered again, and what it had already counted is not counted
twice (items are counted once per job and stage).

A graceful stop (``stop`` set, on SIGTERM or Ctrl-C) stops taking messages,
gives those in flight ``shutdown_grace`` seconds to finish (then hands them
back to the broker), makes the sealing checks still due, writes the pending
progress and exits.

While it consumes, the worker writes a heartbeat every
``heartbeat_interval`` seconds (:class:`~jobtrack.jobs.heartbeat.Heartbeat`:
its host, pid, stages, concurrency, the items it counted and its last
error), and a last one with ``stopped_at`` on a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from jobtrack.broker import Broker, Subscription
from jobtrack.errors import BrokerError, InvalidRequest
from jobtrack.jobs.consumer import ItemConsumer
from jobtrack.jobs.executors import HandlerRunner
from jobtrack.jobs.gate import JobGate
from jobtrack.jobs.heartbeat import Heartbeat, ItemCounter
from jobtrack.jobs.sealer import Sealer
from jobtrack.jobs.types import JobType
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, RenditionSpec
from jobtrack.runtime.app import App
from jobtrack.runtime.builtin import builtin_app, close_rendition_work
from jobtrack.runtime.settings import Settings

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

SEAL_WAIT = 10.0
"""Seconds a stopping worker gives its sealing checks still due."""


@dataclass(frozen=True, slots=True)
class _TypeStage:
    job_type: JobType
    stage: str


class Worker:
    """Consumes the queues of ``stages`` until told to stop.

    :param settings: where the store and broker are (with ``app``: None, the
        app's settings are used).
    :param app: the app whose job types to serve, its settings the worker's
        (``App.with_settings`` makes one from a command's flags); None: the
        built-in app, made from ``settings``.
    :param stages: what to work on (default: everything): ``type.stage``,
        or a stage of a job type when no other has one of that name.
    :param concurrency: threads, or processes, of the handlers that run in
        them.
    :param renditions: the built-in app's renditions (without ``app``).
    :param prefetch: messages each stage's queue hands this worker before
        it has acked earlier ones (default: twice ``concurrency``).
    :param in_process: the worker runs on ``app``'s own parts, in the
        process that produces the jobs (:meth:`run_open`), so an in-process
        broker and store are allowed.
    :raises InvalidRequest: an unknown or ambiguous stage, an in-process
        broker or store (unless ``in_process``), ``in_process`` without an
        app, a concurrency or prefetch below 1.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        app: App | None = None,
        stages: Sequence[str] = (),
        concurrency: int = 1,
        prefetch: int | None = None,
        shutdown_grace: float = 30.0,
        renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS,
        in_process: bool = False,
    ) -> None:
        if in_process and app is None:
            raise InvalidRequest("a worker in process runs on an app's parts: give it the app")
        if app is not None:
            settings = app.settings
        elif settings is None:
            raise InvalidRequest("a worker needs settings or an app")
        else:
            app = builtin_app(settings, renditions=renditions, flush_wait=10.0)
        handled = [
            _TypeStage(job_type, stage)
            for job_type in app.job_types.values()
            for stage in job_type.stages
            if stage in job_type.handlers
        ]
        self.items = _chosen(stages, handled)
        if settings.broker_url == "memory://" and not in_process:
            raise InvalidRequest(
                "a worker needs a broker that scans reach too (amqp://…), not memory://"
            )
        if settings.store_url == "memory://" and not in_process:
            raise InvalidRequest("a worker needs a shared store (postgresql://… or sqlite:///…)")
        if concurrency < 1 or (prefetch is not None and prefetch < 1):
            raise InvalidRequest("concurrency and prefetch must be at least 1")
        if not self.items:
            raise InvalidRequest("the app has no job type with a handler: nothing to work on")
        self.settings = settings
        self.app = app
        self.concurrency = concurrency
        self.prefetch = prefetch or 2 * concurrency
        self.shutdown_grace = shutdown_grace
        self.heartbeat: Heartbeat | None = None
        """The heartbeat of the current run (None before the first)."""

    @property
    def queues(self) -> list[str]:
        """The queues this worker consumes."""
        return [chosen.job_type.queue(chosen.stage) for chosen in self.items]

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set, then shut down gracefully.

        :raises BrokerError: the broker failed for good (a queue refused,
            its connection stopped on a configuration error or a bug): the
            worker stops as gracefully as it can, then raises why, so that
            a process supervisor sees it exit and can restart it.
        """
        app = self.app
        async with app:
            await self._work(app, stop, ready)

    async def run_open(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """:meth:`run` on the worker's app as it is: the app must be open
        already, and is left open (``App.working`` runs an app's handlers
        this way, in the process that produces its jobs).

        :raises InvalidRequest: the worker has no app, or its app is not open.
        :raises BrokerError: as :meth:`run`.
        """
        if self.app is None or self.app.running_loop is None:
            raise InvalidRequest("run_open needs the worker's app open: `async with app:`")
        await self._work(self.app, stop, ready)

    async def _work(self, app: App, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        """Consume with the open ``app`` until ``stop``, then shut the pools down."""
        broker = app.broker  # built first: a bad URL is refused before anything opens
        runner = HandlerRunner(self.concurrency)
        try:
            await self._consume(app, broker, stop, ready, runner=runner)
        finally:
            runner.shutdown()
            close_rendition_work(app)

    async def _consume(
        self,
        app: App,
        broker: Broker,
        stop: asyncio.Event,
        ready: asyncio.Event | None,
        *,
        runner: HandlerRunner,
    ) -> None:
        """Consume with ``app``'s parts until ``stop`` is set or the broker fails."""
        settings, tracker = app.settings, app.tracker
        # Each item's ack waits for its count to be durable, so a queue holds
        # at most its prefetch in the tracker: a flush starts once half of
        # that waits, not only when the interval is up with the window full.
        tracker.max_batch = min(tracker.max_batch, max(1, self.prefetch // 2))
        subscriptions: list[Subscription] = []
        gate = JobGate(app.store)
        sealer = Sealer(app.store)
        counter = ItemCounter()
        self.heartbeat = heartbeat = Heartbeat(
            app.store,
            counter,
            stages=[f"{c.job_type.name}/{c.stage}" for c in self.items],
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            interval=settings.heartbeat_interval,
        )
        for chosen in self.items:
            item_consumer = ItemConsumer(
                chosen.job_type,
                chosen.stage,
                store=app.store,
                broker=broker,
                tracker=tracker,
                runner=runner,
                gate=gate,
                sealer=sealer,
                durable_within=None,
                app=app,
                counter=counter,
            )
            subscriptions.append(
                await broker.consume(
                    item_consumer.queue, item_consumer.handle, prefetch=self.prefetch
                )
            )
        logger.info(
            "worker consuming %s (concurrency %d, prefetch %d, progress %s)",
            ", ".join(self.queues),
            self.concurrency,
            self.prefetch,
            "on" if settings.consumer_progress else "off",
            extra={"action": "worker_ready"},
        )
        beating = heartbeat.start()
        if ready is not None:
            ready.set()
        try:
            failure = await _until_stopped_or_failed(stop, broker)
        except asyncio.CancelledError:  # no graceful stop: give the messages back now,
            beating.cancel()
            await asyncio.gather(  # so that no consumer counts into a closing tracker
                *(subscription.cancel() for subscription in subscriptions),
                return_exceptions=True,
            )
            await sealer.aclose()
            raise
        logger.log(
            logging.INFO if failure is None else logging.ERROR,
            "worker stopping%s: finishing the messages in flight (up to %g s)",
            "" if failure is None else f" because the broker failed ({failure})",
            self.shutdown_grace,
            extra={"action": "worker_stopping"},
        )
        await asyncio.gather(
            *(subscription.cancel(grace=self.shutdown_grace) for subscription in subscriptions)
        )
        if not await sealer.drain(within=SEAL_WAIT):
            logger.warning(
                "worker stopping: sealing checks left undone after %g s",
                SEAL_WAIT,
                extra={"action": "seal_abandoned"},
            )
        await sealer.aclose()
        await heartbeat.stop(beating)
        if failure is not None:
            raise failure


def _chosen(names: Sequence[str], handled: list[_TypeStage]) -> list[_TypeStage]:
    """The job types' stages ``names`` choose (everything when there are no names).

    Raises:
        InvalidRequest: a name that is no stage, or a plain stage name that
            more than one job type has.
    """
    if not names:
        return handled
    items: list[_TypeStage] = []
    for name in names:
        type_name, dot, stage = name.partition(".")
        by_type = [
            chosen
            for chosen in handled
            if (dot and (chosen.job_type.name, chosen.stage) == (type_name, stage))
            or (not dot and chosen.stage == name)
        ]
        if len(by_type) > 1:
            raise InvalidRequest(
                f"stage {name!r} is ambiguous: name it as "
                + ", ".join(repr(f"{c.job_type.name}.{c.stage}") for c in by_type)
            )
        if not by_type:
            known = [f"{c.job_type.name}.{c.stage}" for c in handled]
            raise InvalidRequest(f"unknown stage {name!r}: the stages are {', '.join(known)}")
        items.extend(chosen for chosen in by_type if chosen not in items)
    return items


async def _until_stopped_or_failed(stop: asyncio.Event, broker: Broker) -> BrokerError | None:
    """Wait for ``stop``, or for the broker to fail for good; returns the failure."""
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(broker.failed())
    try:
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        failed.cancel()
    if failed.done() and not failed.cancelled():
        return failed.result()
    return None
