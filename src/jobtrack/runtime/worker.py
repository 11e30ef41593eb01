"""A worker process: consumes stage queues from a shared broker.

``jobtrack worker`` runs one. For each job type of its app with handlers
it consumes the queue of each handled stage
(:class:`~jobtrack.jobs.consumer.ItemConsumer`, handlers run on the loop, in
``concurrency`` threads or as many processes); for the built-in app (no job
types, or a type named ``collection-scan``) it also makes renditions in a
process pool of ``concurrency`` processes. Each item is reported to the
tracker and its message acked only once the item's progress is durable in
the store, so a worker killed at any moment loses nothing: what it had not
acked is delivered again, and what it had already counted is not counted
twice (items are counted once per job and stage).

A graceful stop (``stop`` set, on SIGTERM or Ctrl-C) stops taking messages,
gives those in flight ``shutdown_grace`` seconds to finish (then hands them
back to the broker), makes the sealing checks still due, writes the pending
progress and exits.
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
from jobtrack.jobs.sealer import Sealer
from jobtrack.jobs.types import JobType
from jobtrack.pipeline.consumer import RenditionConsumer
from jobtrack.pipeline.pool import RenderPool, process_pool
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, RenditionSpec, queue_for
from jobtrack.runtime.app import App
from jobtrack.runtime.settings import Settings

__all__ = ["BUILT_IN_TYPE", "Worker"]

logger = logging.getLogger(__name__)

BUILT_IN_TYPE = "collection-scan"
"""The job type whose stages are the renditions (the built-in app's)."""

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
    :param stages: what to work on (default: everything): a rendition stage,
        ``type.stage``, or a stage of a job type when no other has one of
        that name.
    :param concurrency: images rendered at once (worker processes); threads,
        or processes, of the handlers that run in them.
    :param prefetch: messages each stage's queue hands this worker before
        it has acked earlier ones (default: twice ``concurrency``).
    :raises InvalidRequest: an unknown or ambiguous stage, an in-process
        broker or store, a concurrency or prefetch below 1.
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
    ) -> None:
        if app is not None:
            settings, renditions = app.settings, app.renditions
        elif settings is None:
            raise InvalidRequest("a worker needs settings or an app")
        types = dict(app.job_types) if app is not None else {}
        builds_renditions = not types or BUILT_IN_TYPE in types
        handled = [
            _TypeStage(job_type, stage)
            for job_type in types.values()
            for stage in job_type.stages
            if stage in job_type.handlers
        ]
        specs, self.items = _chosen(stages, renditions if builds_renditions else (), handled)
        if settings.broker_url == "memory://":
            raise InvalidRequest(
                "a worker needs a broker that scans reach too (amqp://…), not memory://"
            )
        if settings.store_url == "memory://":
            raise InvalidRequest("a worker needs a shared store (postgresql://… or sqlite:///…)")
        if concurrency < 1 or (prefetch is not None and prefetch < 1):
            raise InvalidRequest("concurrency and prefetch must be at least 1")
        if not specs and not self.items:
            raise InvalidRequest("the app has no job type with a handler: nothing to work on")
        self.settings = settings
        self.app = app
        self.renditions = renditions
        self.specs = specs
        self.concurrency = concurrency
        self.prefetch = prefetch or 2 * concurrency
        self.shutdown_grace = shutdown_grace

    @property
    def queues(self) -> list[str]:
        """The queues this worker consumes, renditions first."""
        return [queue_for(spec.stage) for spec in self.specs] + [
            chosen.job_type.queue(chosen.stage) for chosen in self.items
        ]

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set, then shut down gracefully.

        :raises BrokerError: the broker failed for good (a queue refused,
            its connection stopped on a configuration error or a bug): the
            worker stops as gracefully as it can, then raises why, so that
            a process supervisor sees it exit and can restart it.
        """
        app = self.app or App(self.settings, renditions=self.renditions, flush_wait=10.0)
        async with app:
            broker = app.broker  # built first: a bad URL is refused before anything opens
            pool = None
            if self.specs:
                app.ensure_data_dir()
                pool = RenderPool(process_pool(self.concurrency))
            runner = HandlerRunner(self.concurrency)
            try:
                await self._consume(app, broker, stop, ready, pool=pool, runner=runner)
            finally:
                runner.shutdown()
                if pool is not None:
                    pool.shutdown()

    async def _consume(
        self,
        app: App,
        broker: Broker,
        stop: asyncio.Event,
        ready: asyncio.Event | None,
        *,
        pool: RenderPool | None,
        runner: HandlerRunner,
    ) -> None:
        """Consume with ``app``'s parts until ``stop`` is set or the broker fails."""
        settings, tracker = app.settings, app.tracker
        subscriptions: list[Subscription] = []
        gate = JobGate(app.store)
        for spec in self.specs:
            assert pool is not None
            consumer = RenditionConsumer(
                spec=spec,
                catalog=app.catalog,
                tracker=tracker,
                data_dir=settings.data_dir,
                pool=pool,
                ack_when_durable=True,
                durable_within=None,
                gate=gate,
            )
            subscriptions.append(
                await broker.consume(queue_for(spec.stage), consumer.handle, prefetch=self.prefetch)
            )
        sealer = Sealer(app.store)
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
        if ready is not None:
            ready.set()
        try:
            failure = await _until_stopped_or_failed(stop, broker)
        except asyncio.CancelledError:  # no graceful stop: give the messages back now,
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
        if failure is not None:
            raise failure


def _chosen(
    names: Sequence[str],
    renditions: tuple[RenditionSpec, ...],
    handled: list[_TypeStage],
) -> tuple[tuple[RenditionSpec, ...], list[_TypeStage]]:
    """The rendition specs and the job types' stages ``names`` choose
    (everything when there are no names).

    Raises:
        InvalidRequest: a name that is no stage, or a plain stage name that
            more than one job type (or a rendition) has.
    """
    if not names:
        return renditions, handled
    specs: list[RenditionSpec] = []
    items: list[_TypeStage] = []
    for name in names:
        by_spec = [spec for spec in renditions if spec.stage == name]
        type_name, dot, stage = name.partition(".")
        by_type = [
            chosen
            for chosen in handled
            if (dot and (chosen.job_type.name, chosen.stage) == (type_name, stage))
            or (not dot and chosen.stage == name)
        ]
        if len(by_spec) + len(by_type) > 1:
            raise InvalidRequest(
                f"stage {name!r} is ambiguous: name it as "
                + ", ".join(
                    [repr(spec.stage) for spec in by_spec]
                    + [repr(f"{c.job_type.name}.{c.stage}") for c in by_type]
                )
            )
        if not by_spec and not by_type:
            known = [spec.stage for spec in renditions] + [
                f"{c.job_type.name}.{c.stage}" for c in handled
            ]
            raise InvalidRequest(f"unknown stage {name!r}: the stages are {', '.join(known)}")
        specs.extend(spec for spec in by_spec if spec not in specs)
        items.extend(chosen for chosen in by_type if chosen not in items)
    return tuple(specs), items


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
