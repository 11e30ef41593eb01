"""The embedded runtime: store, broker, consumers and scanner in one process.

``EmbeddedRuntime.scan`` runs a collection scan to its end: the walk feeds
the in-process broker, the consumers render in a process pool, and the job's
counts are followed until the job ends. When all the work is settled and the
job still has not ended (a progress write lost, a message dead-lettered),
the counts are reconciled against the catalog; what is still missing then
fails the job with the reason, so a scan always ends.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from jobtrack.broker import Broker, Subscription, open_broker
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import Catalog, catalog_for
from jobtrack.pipeline.consumer import RenditionConsumer
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.pipeline.scanner import Scanner, ScanReport
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, RenditionSpec, queue_for
from jobtrack.runtime.settings import Settings
from jobtrack.store import JobStore, open_store
from jobtrack.tracking import ProgressTracker

__all__ = ["EmbeddedRuntime", "ScanOutcome"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Job], None]


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """How a scan ended."""

    job: Job
    created: bool
    report: ScanReport | None
    reconciled: bool


class EmbeddedRuntime:
    """Everything a scan needs, in one process; use as ``async with``."""

    def __init__(
        self,
        settings: Settings,
        *,
        renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS,
        poll_interval: float = 0.1,
    ) -> None:
        self.settings = settings
        self.renditions = renditions
        self._poll_interval = poll_interval
        self._exit = AsyncExitStack()
        self._subscriptions: list[Subscription] = []

    async def __aenter__(self) -> EmbeddedRuntime:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: JobStore = open_store(settings.store_url)
        self._exit.push_async_callback(self.store.aclose)
        self.catalog: Catalog = catalog_for(self.store)
        self.broker: Broker = open_broker(settings.broker_url)
        self._exit.push_async_callback(self.broker.aclose)
        self.tracker = ProgressTracker(self.store, enabled=settings.consumer_progress)
        self._exit.push_async_callback(self.tracker.flush, max_wait=5.0)
        self._executor = ProcessPoolExecutor(
            max_workers=settings.workers, mp_context=multiprocessing.get_context("forkserver")
        )
        self._exit.callback(self._executor.shutdown, wait=True, cancel_futures=True)
        self.scanner = Scanner(
            store=self.store, catalog=self.catalog, broker=self.broker, renditions=self.renditions
        )
        self.reconciler = CollectionScanReconciler(catalog=self.catalog, renditions=self.renditions)
        for spec in self.renditions:
            consumer = RenditionConsumer(
                spec=spec,
                catalog=self.catalog,
                tracker=self.tracker,
                data_dir=settings.data_dir,
                executor=self._executor,
            )
            self._subscriptions.append(
                await self.broker.consume(
                    queue_for(spec.stage), consumer.handle, prefetch=settings.workers + 1
                )
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        await self._exit.aclose()

    def output_dir(self, collection_id: str, spec: RenditionSpec) -> Path:
        """The folder a stage writes a collection's artifacts to."""
        return spec.output_path(self.settings.data_dir, collection_id, "x").parent

    async def scan(
        self, path: str | Path, *, on_progress: ProgressCallback | None = None
    ) -> ScanOutcome:
        """Scan the collection at ``path`` and wait for its job to end."""
        start = await self.scanner.start(path)
        walk: asyncio.Task[ScanReport] | None = None
        if start.created:
            walk = asyncio.create_task(self.scanner.run(start.job, start.collection))
        reconciled = False
        while True:
            job = await self.store.get_job(start.job.id)
            if on_progress is not None:
                on_progress(job)
            if job.status.terminal:
                break
            if walk is not None and walk.done() and walk.exception() is not None:
                job = await self._walk_failed(job, walk.exception())
                break
            if walk is not None and walk.done() and await self._settled():
                job = await self._settle(job)
                reconciled = True
                if on_progress is not None:
                    on_progress(job)
                break
            await asyncio.sleep(self._poll_interval)
        report = None
        if walk is not None:
            await asyncio.wait([walk])
            report = walk.result() if walk.exception() is None else None
        return ScanOutcome(job=job, created=start.created, report=report, reconciled=reconciled)

    async def _walk_failed(self, job: Job, error: BaseException | None) -> Job:
        logger.error("scan of job %s failed: %s", job.id, error, extra={"action": "scan_failed"})
        return await self.store.end_job(job.id, JobStatus.FAILED, message=f"scan failed: {error}")

    async def wait_settled(self, *, poll: float = 0.005) -> None:
        """Wait until no message is queued or in flight and no progress write is pending."""
        while True:
            if await self._settled():
                return
            await asyncio.sleep(poll)

    async def _settled(self) -> bool:
        """No message queued or in flight, and no progress write pending."""
        for spec in self.renditions:
            if await self.broker.in_flight(queue_for(spec.stage)):
                return False
        if self.tracker.pending:
            await self.tracker.retry_pending()
            return False
        return True

    async def _settle(self, job: Job) -> Job:
        """Reconcile a job whose work is all settled but which has not ended."""
        job = await self.store.get_job(job.id)
        if job.status.terminal:
            return job
        counts, missing = await self.reconciler.inspect(job)
        job = await self.store.set_counts(job.id, counts)
        logger.warning(
            "job %s reconciled against the catalog: %s",
            job.id,
            ", ".join(
                f"{name} {c.completed_items}+{c.failed_items}/{c.total_items}"
                for name, c in counts.items()
            ),
            extra={"action": "reconciled", "job_id": job.id},
        )
        if not job.status.terminal:
            lost = {stage: len(ids) for stage, ids in missing.items() if ids}
            job = await self.store.end_job(
                job.id, JobStatus.FAILED, message=f"items missing after reconciliation: {lost}"
            )
        return job
