"""The scan runtime: store, broker, scanner and, on the in-process broker,
the consumers of the collection scan's handlers, in one process.

``EmbeddedRuntime.scan`` runs a collection scan to its end. On the default
in-process broker (``memory://``) the walk feeds the built-in app's
consumers here (:class:`~jobtrack.jobs.consumer.ItemConsumer`, the
renditions made in a process pool), and the job's counts are followed until the job
ends; when all the work is settled and the job still has not ended (a
progress write lost, a message dead-lettered), the counts are reconciled
against the catalog and what is still missing fails the job with the
reason, so a scan always ends. On a shared broker (``amqp://``) the walk
publishes, ``jobtrack worker`` processes anywhere do the work, and the scan
follows the job (``enqueue`` only publishes). A runtime whose consumers
work here writes a worker's heartbeat while it is open
(:class:`~jobtrack.jobs.heartbeat.Heartbeat`), and a last one with
``stopped_at`` when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from jobtrack.broker import Broker, Subscription
from jobtrack.errors import InvalidRequest
from jobtrack.jobs.consumer import ItemConsumer
from jobtrack.jobs.executors import HandlerRunner
from jobtrack.jobs.gate import JobGate
from jobtrack.jobs.heartbeat import Heartbeat, ItemCounter
from jobtrack.model import Job, JobStatus, utc_now
from jobtrack.monitor import describe_changes
from jobtrack.pipeline.catalog import Catalog
from jobtrack.pipeline.scanner import Scanner, ScanReport, ScanStart
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, JOB_TYPE, RenditionSpec, queue_for
from jobtrack.pipeline.walk import ResolvedRoot
from jobtrack.runtime.builtin import builtin_app, close_rendition_work
from jobtrack.runtime.settings import Settings
from jobtrack.store import JobStore

__all__ = ["EmbeddedRuntime", "ScanOutcome"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Job], None]


def _runner() -> dict[str, Any]:
    """Who runs a scan, recorded on its job so that another process can tell
    whether the job's runner is still alive."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """How a scan ended."""

    job: Job
    created: bool
    report: ScanReport | None
    reconciled: bool


class EmbeddedRuntime:
    """Everything a scan needs, in one process; use as ``async with``.

    :param broker: an in-process broker to run the scan's work on instead of
        a new one (an HTTP server's, so that its queues and dead letters are
        the server's to show); it is not closed with the runtime.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS,
        poll_interval: float = 0.1,
        pending_grace: float = 10.0,
        broker: Broker | None = None,
    ) -> None:
        self.settings = settings
        self.renditions = renditions
        self._poll_interval = poll_interval
        self._pending_grace = pending_grace
        self._idle_since: float | None = None
        self._exit = AsyncExitStack()
        self._subscriptions: list[Subscription] = []
        self.app = builtin_app(settings, renditions=renditions, flush_wait=5.0, broker=broker)
        """The built-in app, whose parts this runtime uses (store, catalog,
        broker, tracker) and whose collection scan it runs."""
        self.current_job_id: str | None = None  # the job this runtime started
        self.cancelled = False  # whether an interruption cancelled it
        self.idle_hint = 30.0  # seconds without progress before a hint that no worker runs
        self.heartbeat: Heartbeat | None = None
        """The heartbeat of the consumers here (None with a shared broker)."""
        self._beating: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EmbeddedRuntime:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()  # release what was opened before the failure
            raise
        return self

    async def _start(self) -> None:
        settings, app = self.settings, self.app
        if not self.local_work and settings.store_url == "memory://":
            raise InvalidRequest(
                "with a shared broker the workers need a shared store (postgresql://…), "
                "not memory://"
            )
        await self._exit.enter_async_context(app)
        self.broker: Broker = app.broker  # refuses a bad URL first
        app.ensure_data_dir()
        self.store: JobStore = app.store
        self.catalog: Catalog = app.catalog
        self.tracker = app.tracker
        self.scanner = Scanner(
            store=self.store,
            catalog=self.catalog,
            broker=self.broker,
            job_type=app.get_type(JOB_TYPE),
            renditions=self.renditions,
            exclude=[settings.data_dir],
            data_dir=settings.data_dir,
        )
        self.reconciler = app.reconciler
        self.monitor = app.monitor()
        if not self.local_work:
            # With a shared broker the fallback monitor runs beside the scan, as it
            # would on its own. With the in-process broker it must not: another
            # process's work is invisible here, and its items would be re-driven
            # into this process (a local job is reconciled when its work is done).
            stop = asyncio.Event()
            watcher = asyncio.create_task(
                self.monitor.run(stop, interval=settings.monitor_interval), name="monitor"
            )

            async def stop_monitor() -> None:
                stop.set()
                watcher.cancel()
                await asyncio.wait([watcher])

            self._exit.push_async_callback(stop_monitor)
        if not self.local_work:
            return
        runner = HandlerRunner(settings.workers)
        self._exit.callback(runner.shutdown)
        self._exit.callback(close_rendition_work, app)
        gate = JobGate(self.store)
        job_type = app.get_type(JOB_TYPE)
        counter = ItemCounter()
        prefetch = settings.workers + 1
        self.heartbeat = Heartbeat(
            self.store,
            counter,
            stages=[f"{job_type.name}/{stage}" for stage in job_type.handlers],
            concurrency=settings.workers,
            prefetch=prefetch,
            interval=settings.heartbeat_interval,
        )
        for stage in job_type.handlers:
            # The scan waits for its job, not for each ack: an item is acked
            # without waiting for its count to be durable (durable_within 0).
            consumer = ItemConsumer(
                job_type,
                stage,
                store=self.store,
                broker=self.broker,
                tracker=self.tracker,
                runner=runner,
                gate=gate,
                durable_within=0.0,
                app=app,
                counter=counter,
            )
            self._subscriptions.append(
                await self.broker.consume(consumer.queue, consumer.handle, prefetch=prefetch)
            )
        self._beating = self.heartbeat.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        if self.heartbeat is not None:
            await self.heartbeat.stop(self._beating)
        await self._exit.aclose()

    @property
    def local_work(self) -> bool:
        """Whether the work happens in this process (the in-process broker)."""
        return self.settings.broker_url == "memory://"

    def output_dir(self, collection_id: str, spec: RenditionSpec) -> Path:
        """The folder a stage writes a collection's artifacts to.

        Raises:
            PathRefused: the collection id is not a plain name.
        """
        return spec.output_path(self.settings.data_dir, collection_id, "x").parent

    async def scan(
        self, path: str | Path | ResolvedRoot, *, on_progress: ProgressCallback | None = None
    ) -> ScanOutcome:
        """Scan the collection at ``path`` and wait for its job to end.

        If the collection's job is already running in another process, follow
        it instead. With the in-process broker a job can only progress in the
        process that started it, so a followed job that stops moving for
        ``stuck_after`` seconds is taken over, and an interrupted scan
        cancels its own job.
        """
        while True:
            start = await self.scanner.start(
                path, abandoned=self._abandoned, attributes={"runner": _runner()}
            )
            if start.created:
                return await self._run(start, on_progress)
            job = await self._follow(start.job.id, on_progress)
            if job is not None:
                return ScanOutcome(job=job, created=False, report=None, reconciled=False)

    async def enqueue(self, path: str | Path | ResolvedRoot) -> tuple[Job, bool]:
        """Walk the collection and publish its work, without waiting for it:
        (the job, whether it is new). A collection whose job is running
        already gets no second one."""
        if self.local_work:
            raise InvalidRequest(
                "enqueueing alone needs a broker that workers reach (amqp://…); "
                "with memory:// the work happens in the scanning process"
            )
        start = await self.scanner.start(path, attributes={"runner": _runner()})
        if not start.created:
            return start.job, False
        self.current_job_id = start.job.id
        try:
            await self.scanner.run(start.job, start.collection)
        except asyncio.CancelledError:
            await self._cancel_unpublished(start.job.id)
            raise
        except Exception as exc:
            await self._walk_failed(start.job, exc)
            raise
        return await self.store.get_job(start.job.id), True

    async def _cancel_unpublished(self, job_id: str) -> None:
        self.cancelled = True
        await self.store.end_job(
            job_id, JobStatus.CANCELLED, message="interrupted before all its work was published"
        )

    def _abandoned(self, job: Job) -> str | None:
        """Why a running job can no longer progress, or None if it may.

        Only with the in-process broker: there a job's work lives in the
        process that started it, so the job is abandoned once that process is
        gone, or once it has not moved for ``stuck_after`` seconds.
        """
        if not self.local_work:
            return None
        runner, me = job.attributes.get("runner"), _runner()
        if isinstance(runner, dict) and runner.get("host") == me["host"]:
            pid = runner.get("pid")
            if isinstance(pid, int) and pid != me["pid"] and not _alive(pid):
                return f"abandoned: the scan that ran it (process {pid}) is gone"
        quiet = utc_now() - job.updated_at
        if quiet > timedelta(seconds=self.settings.stuck_after):
            return f"abandoned: no progress for over {self.settings.stuck_after:g} s"
        return None

    async def _follow(self, job_id: str, on_progress: ProgressCallback | None) -> Job | None:
        """Follow another process's job to its end; None if it was abandoned."""
        while True:
            job = await self.store.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status.terminal:
                return job
            if self._abandoned(job) is not None:
                return None
            await asyncio.sleep(self._poll_interval)

    async def _run(self, start: ScanStart, on_progress: ProgressCallback | None) -> ScanOutcome:
        """Run our own job: walk, render, follow, settle."""
        self.current_job_id = start.job.id
        walk = asyncio.create_task(self.scanner.run(start.job, start.collection))
        try:
            job, reconciled = await self._watch(start.job.id, walk, on_progress)
        except asyncio.CancelledError:
            walked = walk.done()
            walk.cancel()
            await asyncio.wait([walk])
            if self.local_work:
                self.cancelled = True
                await self.store.end_job(
                    start.job.id, JobStatus.CANCELLED, message="interrupted before the end"
                )
            elif not walked:
                await self._cancel_unpublished(start.job.id)
            raise
        await asyncio.wait([walk])
        report = walk.result() if walk.exception() is None else None
        return ScanOutcome(job=job, created=True, report=report, reconciled=reconciled)

    async def _watch(
        self, job_id: str, walk: asyncio.Task[ScanReport], on_progress: ProgressCallback | None
    ) -> tuple[Job, bool]:
        hinted = False
        while True:
            job = await self.store.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status.terminal:
                return job, False
            if not hinted and walk.done() and self._idle(job):
                hinted = True
                logger.warning(
                    "job %s has not moved for %g s: is a `jobtrack worker` running "
                    "on this broker and store?",
                    job_id,
                    self.idle_hint,
                    extra={"action": "no_progress", "job_id": job_id},
                )
            if walk.done() and walk.exception() is not None:
                return await self._walk_failed(job, walk.exception()), False
            if walk.done() and self.local_work and await self._settled():
                # The last writes may have ended the job just now.
                job = await self.store.get_job(job_id)
                reconcile = not job.status.terminal
                if reconcile:
                    job = await self._settle(job)
                if on_progress is not None:
                    on_progress(job)
                return job, reconcile
            await asyncio.sleep(self._poll_interval)

    def _idle(self, job: Job) -> bool:
        """Whether a job whose work is elsewhere has not moved for ``idle_hint`` s."""
        quiet = utc_now() - job.updated_at
        return not self.local_work and quiet > timedelta(seconds=self.idle_hint)

    async def _walk_failed(self, job: Job, error: BaseException | None) -> Job:
        logger.error("scan of job %s failed: %s", job.id, error, extra={"action": "scan_failed"})
        failed = await self.store.end_job(job.id, JobStatus.FAILED, message=f"scan failed: {error}")
        return failed.job

    async def wait_settled(self, *, poll: float = 0.005) -> None:
        """Wait until no message is queued or in flight and no progress write is pending."""
        while True:
            if await self._settled():
                return
            await asyncio.sleep(poll)

    async def _settled(self) -> bool:
        """No message queued or in flight, and no progress write pending.

        Progress writes still pending once the work is idle are given
        ``pending_grace`` seconds; after that, reconciliation counts the
        items instead, so an unreachable store cannot hold a scan forever.
        """
        for spec in self.renditions:
            if await self.broker.in_flight(queue_for(spec.stage)):
                self._idle_since = None
                return False
        if not self.tracker.pending or not await self.tracker.flush_if_due():
            return True
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= self._pending_grace

    async def _settle(self, job: Job) -> Job:
        """Reconcile a job whose work is all settled but which has not ended."""
        truth = await self.reconciler.truth(job)
        changes, data = describe_changes(job, truth)
        job = await self.store.set_counts(job.id, truth.counts, keys=truth.done)
        # Expected when consumers report nothing (the rollback switch); a
        # sign of lost progress writes otherwise.
        logger.log(
            logging.WARNING if self.settings.consumer_progress else logging.INFO,
            "job %s reconciled against the catalog: %s",
            job.id,
            changes or "no change",
            extra={"action": "reconciled", "job_id": job.id},
        )
        if changes:
            await self.store.add_event(job.id, "reconciled", f"{changes} reconciled", data)
        if not job.status.terminal:
            lost = ", ".join(f"{stage} {len(ids)}" for stage, ids in truth.missing.items() if ids)
            reason = f"items missing after reconciliation: {lost}"
            job, changed = await self.store.end_job(job.id, JobStatus.FAILED, message=reason)
            if changed:  # not ended meanwhile (cancelled, say): then the reason is not its end
                await self.store.add_event(job.id, "failed", reason)
        return job
