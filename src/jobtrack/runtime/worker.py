"""A worker process: consumes stage queues from a shared broker.

``jobtrack worker`` runs one. It makes renditions in a process pool of
``concurrency`` processes, reports each item to the tracker and acks the
message only once the item's progress is durable in the store, so a worker
killed at any moment loses nothing: what it had not acked is delivered
again, and what it had already counted is not counted twice (items are
counted once per job and stage).

A graceful stop (``stop`` set, on SIGTERM or Ctrl-C) stops taking messages,
gives those in flight ``shutdown_grace`` seconds to finish (then hands them
back to the broker), writes the pending progress and exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from jobtrack.broker import Broker, Subscription
from jobtrack.errors import BrokerError, InvalidRequest
from jobtrack.pipeline.consumer import RenditionConsumer
from jobtrack.pipeline.gate import JobGate
from jobtrack.pipeline.pool import RenderPool, process_pool
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, RenditionSpec, queue_for
from jobtrack.runtime.app import App
from jobtrack.runtime.settings import Settings

__all__ = ["Worker"]

logger = logging.getLogger(__name__)


class Worker:
    """Consumes the queues of ``stages`` until told to stop.

    :param concurrency: images rendered at once (worker processes).
    :param prefetch: messages each stage's queue hands this worker before
        it has acked earlier ones (default: twice ``concurrency``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        stages: Sequence[str] = (),
        concurrency: int = 1,
        prefetch: int | None = None,
        shutdown_grace: float = 30.0,
        renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS,
    ) -> None:
        known = {spec.stage: spec for spec in renditions}
        unknown = [stage for stage in stages if stage not in known]
        if unknown:
            raise InvalidRequest(f"unknown stage {unknown[0]!r}: the stages are {', '.join(known)}")
        if settings.broker_url == "memory://":
            raise InvalidRequest(
                "a worker needs a broker that scans reach too (amqp://…), not memory://"
            )
        if settings.store_url == "memory://":
            raise InvalidRequest("a worker needs a shared store (postgresql://… or sqlite:///…)")
        if concurrency < 1 or (prefetch is not None and prefetch < 1):
            raise InvalidRequest("concurrency and prefetch must be at least 1")
        self.settings = settings
        self.renditions = renditions
        self.specs = tuple(known[stage] for stage in stages) if stages else renditions
        self.concurrency = concurrency
        self.prefetch = prefetch or 2 * concurrency
        self.shutdown_grace = shutdown_grace

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set, then shut down gracefully.

        :raises BrokerError: the broker failed for good (a queue refused,
            its connection stopped on a configuration error or a bug): the
            worker stops as gracefully as it can, then raises why, so that
            a process supervisor sees it exit and can restart it.
        """
        async with App(self.settings, renditions=self.renditions, flush_wait=10.0) as app:
            broker = app.broker  # built first: a bad URL is refused before anything opens
            app.ensure_data_dir()
            pool = RenderPool(process_pool(self.concurrency))
            try:
                await self._consume(app, broker, pool, stop, ready)
            finally:
                pool.shutdown()

    async def _consume(
        self,
        app: App,
        broker: Broker,
        pool: RenderPool,
        stop: asyncio.Event,
        ready: asyncio.Event | None,
    ) -> None:
        """Consume with ``app``'s parts until ``stop`` is set or the broker fails."""
        settings, catalog, tracker = app.settings, app.catalog, app.tracker
        subscriptions: list[Subscription] = []
        gate = JobGate(app.store)
        for spec in self.specs:
            consumer = RenditionConsumer(
                spec=spec,
                catalog=catalog,
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
        logger.info(
            "worker consuming %s (concurrency %d, prefetch %d, progress %s)",
            ", ".join(queue_for(spec.stage) for spec in self.specs),
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
        if failure is not None:
            raise failure


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
