"""The composition root: one object that builds jobtrack's parts from settings.

Every way of running jobtrack (a scan with its embedded runtime, a worker, a
monitor, the HTTP API) gets its store, catalog, broker and progress tracker
from an :class:`App`, built the same way from the same :class:`Settings`::

    async with App(settings) as app:
        job = await app.store.get_job(job_id)

Each part is built on first use, so a command that needs no tracker opens
none. Closing writes the pending progress and closes the tracker, then the
broker, then the catalog, then the store, each whatever happened to the
others; closing twice closes once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from jobtrack.broker import Broker, open_broker
from jobtrack.errors import BrokerUnavailable, Conflict, InvalidRequest, StoreError
from jobtrack.jobs.producer import DEFAULT_HEARTBEAT, JobProducer
from jobtrack.jobs.reconciler import LedgerReconciler
from jobtrack.jobs.retry import retry_job
from jobtrack.jobs.sync import SyncJobProducer
from jobtrack.jobs.types import JobType, failure_json, registry
from jobtrack.model import Job, JobStatus
from jobtrack.monitor import Monitor, Reconciler
from jobtrack.pipeline.catalog import Catalog, catalog_for
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, JOB_TYPE, RenditionSpec
from jobtrack.runtime.settings import Settings
from jobtrack.store import JobStore, open_store
from jobtrack.tracking import ProgressTracker

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["App"]

logger = logging.getLogger(__name__)


class App:
    """jobtrack's parts, built from one :class:`Settings`: the job store, the
    catalog kept beside it, the broker and the progress tracker. Use as
    ``async with App(settings) as app:``; each part is built on first use.

    :param renditions: the stages of the reference application's scans.
    :param flush_wait: seconds closing gives the tracker to write the
        progress still pending.
    :param create_store: create the store if there is none (a SQLite file);
        when False, using :attr:`store` raises ``StoreMissing`` instead.
    :param broker: a broker to use instead of opening the one the settings
        name (an HTTP server's in-process broker, shared with the scans it
        runs); the app does not close it.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS,
        flush_wait: float = 5.0,
        create_store: bool = True,
        job_types: Iterable[JobType] = (),
        broker: Broker | None = None,
    ) -> None:
        self._job_types: dict[str, JobType] = dict(registry(job_types))
        self.settings_given = settings is not None
        """Whether the settings were given in code (else read from the environment)."""
        self.settings = Settings.from_env() if settings is None else settings
        """Where the state lives and how jobtrack runs (store and broker URLs,
        data folder, progress writes, monitor timings)."""
        self.renditions = renditions
        """The renditions a collection scan makes, one stage each."""
        self.flush_wait = flush_wait
        """Seconds :meth:`aclose` gives the tracker to write pending progress."""
        self.create_store = create_store
        """Whether opening the store may create it (else only one that exists)."""
        self._store: JobStore | None = None
        self._catalog: Catalog | None = None
        self._broker: Broker | None = broker
        self._own_broker = broker is None
        self._tracker: ProgressTracker | None = None
        self._reconciler: CollectionScanReconciler | None = None
        self._closed = False
        self._entered = False
        self._closing: asyncio.Future[BaseException | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def job_types(self) -> Mapping[str, JobType]:
        """The job types registered with this app, by name."""
        return MappingProxyType(self._job_types)

    def register(self, job_type: JobType) -> JobType:
        """Register a job type; returns it.

        :raises InvalidRequest: a type of that name is registered already.
        """
        if job_type.name in self._job_types:
            raise InvalidRequest(f"job type {job_type.name!r} is registered already")
        self._job_types[job_type.name] = job_type
        return job_type

    def job_type(self, name: str, stages: Sequence[str], **options: Any) -> JobType:
        """Declare and register a job type (options as :class:`JobType`'s)."""
        return self.register(JobType(name, stages, **options))

    def get_type(self, name: str) -> JobType:
        """The registered job type ``name``.

        :raises InvalidRequest: no type of that name is registered.
        """
        try:
            return self._job_types[name]
        except KeyError:
            known = ", ".join(sorted(self._job_types)) or "none"
            raise InvalidRequest(f"unknown job type {name!r} (registered: {known})") from None

    def with_settings(self, settings: Settings, **options: Any) -> App:
        """A new, unopened app with this one's job types and renditions and
        ``settings`` (what a command's flags make of a user's app);
        ``options`` as the constructor's (``flush_wait``, ``create_store``)."""
        options.setdefault("renditions", self.renditions)
        options.setdefault("flush_wait", self.flush_wait)
        return App(settings, job_types=self._job_types.values(), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> App:
        """The app for ``settings``, with the default renditions."""
        return cls(settings)

    @property
    def shared_broker(self) -> bool:
        """Whether the broker is one that other processes reach (``amqp://``),
        rather than the in-process ``memory://`` one."""
        return self.settings.broker_url != "memory://"

    @property
    def broker(self) -> Broker:
        """The broker the settings name (it connects on first use).

        :raises InvalidRequest: an unsupported broker URL.
        :raises InvalidRequest: the app is closed.
        """
        if self._broker is None:
            self._check_open()
            self._broker = open_broker(
                self.settings.broker_url, management_url=self.settings.broker_management_url
            )
        return self._broker

    @property
    def store(self) -> JobStore:
        """The job store the settings name (created, unless ``create_store``
        is False, and migrated as needed).

        :raises InvalidRequest: the app is closed.
        :raises StoreMissing: ``create_store`` is False and there is none.
        :raises ConfigurationError: a store URL that can never work: an
            unsupported one, a SQLite file that cannot be made or opened, a
            PostgreSQL URL that can never connect.
        :raises StoreError: the SQLite file cannot be migrated, or its disk
            is full or failing.
        """
        if self._store is None:
            self._check_open()
            self._store = open_store(self.settings.store_url, create=self.create_store)
        return self._store

    @property
    def catalog(self) -> Catalog:
        """The catalog kept in the store's database, chosen by the store's
        ``backend``.

        :raises InvalidRequest: no catalog goes with the store's backend, or
            the app is closed.
        """
        if self._catalog is None:
            self._catalog = catalog_for(self.store)
        return self._catalog

    @property
    def tracker(self) -> ProgressTracker:
        """The progress tracker that counts finished items into the store,
        as the settings say (on or off, coalesced or per item, how often).

        :raises InvalidRequest: the app is closed.
        """
        if self._tracker is None:
            store = self.store
            self._tracker = ProgressTracker(
                store,
                enabled=self.settings.consumer_progress,
                coalesce=self.settings.coalesce,
                flush_interval=self.settings.flush_interval,
            )
        return self._tracker

    @property
    def reconciler(self) -> CollectionScanReconciler:
        """The collection scan's reconciler: true counts from the catalog;
        with a shared broker it also reads the backlog and publishes missing
        items again (the in-process broker of another process is out of reach).

        :raises InvalidRequest: the app is closed.
        """
        if self._reconciler is None:
            self._reconciler = CollectionScanReconciler(
                catalog=self.catalog,
                renditions=self.renditions,
                broker=self.broker if self.shared_broker else None,
            )
        return self._reconciler

    def reconcilers(self) -> list[Reconciler]:
        """The monitor's reconcilers: one per registered job type (the
        type's own ``truth`` if it has one, else a
        :class:`~jobtrack.jobs.reconciler.LedgerReconciler`, given the
        broker when it is shared), and the collection scan's when no job
        type is registered or one is named ``collection-scan`` without a
        ``truth`` of its own.

        :raises InvalidRequest: the app is closed.
        """
        broker = self.broker if self.shared_broker else None
        chosen: list[Reconciler] = []
        for job_type in self._job_types.values():
            if job_type.truth is not None:
                chosen.append(job_type.truth(self, job_type))
            elif job_type.name != JOB_TYPE:
                chosen.append(LedgerReconciler(job_type, self.store, broker))
        if not self._job_types or (
            JOB_TYPE in self._job_types and self._job_types[JOB_TYPE].truth is None
        ):
            chosen.append(self.reconciler)
        return chosen

    def monitor(
        self,
        *,
        stuck_after: float | None = None,
        max_redrives: int = 3,
        mode: str = "hybrid",
        concurrency: int = 1,
    ) -> Monitor:
        """A fallback monitor of the app's store, with a reconciler per job
        type (:meth:`reconcilers`); it purges the ledgers of jobs ended
        more than ``ledger_retention`` days ago.

        :param stuck_after: seconds without an update before a job is stuck
            (default: the settings').
        :param concurrency: stuck jobs of a page handled at once, at most.
        :raises InvalidRequest: ``mode`` is neither hybrid nor centralized;
            ``concurrency`` is below 1; the app is closed.
        """
        return Monitor(
            self.store,
            self.reconcilers(),
            stuck_after=self.settings.stuck_after if stuck_after is None else stuck_after,
            max_redrives=max_redrives,
            mode=mode,
            ledger_retention=timedelta(days=self.settings.ledger_retention),
            concurrency=concurrency,
        )

    def start_job(
        self, job_type: str | JobType, *, attributes: dict[str, Any] | None = None
    ) -> JobProducer:
        """A producer of a new job of ``job_type``, to use as
        ``async with app.start_job(...) as producer:`` (entering creates the
        job; see :class:`~jobtrack.jobs.producer.JobProducer`)::

            async with app.start_job("csv-import", attributes={"file": name}) as producer:
                await producer.add("parse", [(key, {"row": n}) for n, key in enumerate(keys)])
            print(producer.job.id, "sealed")

        Items go to the app's broker: the in-process one (``memory://``),
        which the app's own workers consume, or a shared one. The producer
        writes a heartbeat every quarter of ``stuck_after`` (at most every
        30 s), so a pause between batches is not taken for a dead producer.

        :raises InvalidRequest: a type name that is not registered; (on
            enter) a type with a stage that has no handler; the app is closed.
        """
        chosen = self.get_type(job_type) if isinstance(job_type, str) else job_type
        heartbeat = min(DEFAULT_HEARTBEAT, self.settings.stuck_after / 4)
        return JobProducer(
            self.store, self.broker, chosen, attributes=attributes, heartbeat=heartbeat
        )

    def start_job_sync(
        self, job_type: str | JobType, *, attributes: dict[str, Any] | None = None
    ) -> SyncJobProducer:
        """:meth:`start_job` for plain synchronous code: a context manager
        whose ``add`` and ``seal`` block (see :mod:`jobtrack.jobs.sync` for
        the event loop it runs on)::

            with app.start_job_sync("csv-import") as producer:
                producer.add("parse", ["a.csv", "b.csv"])

        :raises InvalidRequest: (on enter) a type that is not registered;
            called on the app's own event loop thread; an app not open whose
            store or broker is ``memory://``.
        """
        return SyncJobProducer(self, job_type, attributes=attributes)

    async def retry_job(self, job_id: str) -> Job:
        """Start a new job doing the failed items of the ended job
        ``job_id`` again; returns it (see :mod:`jobtrack.jobs.retry`).

        :raises JobNotFound: no job has that id.
        :raises Conflict: the job is still running, or has no failed items.
        :raises InvalidRequest: the job was cancelled, or its type is not registered.
        :raises StoreUnavailable: the store cannot be reached.
        """
        return await retry_job(self.store, self.broker, self._job_types, job_id)

    async def retry(self, job_id: str, *, limit: int = 10_000) -> tuple[Job, int]:
        """Do the failed items of the ended job ``job_id`` again, as its type
        retries: with the type's ``retry`` hook when it has one (the
        collection scan: a new scan of its collection; a ``retried`` event
        is recorded), else with :meth:`retry_job` (a new job of the failed
        items, from the ledger). Returns the job doing the work and how many
        failed items (keys) the old job had, of the first ``limit`` read.

        :raises JobNotFound: no job has that id.
        :raises Conflict: the job is still running; it completed with no
            failed items; its type is not registered with this app; a job
            retried from the ledger was cancelled or has no failed items;
            the type's hook refuses.
        :raises StoreUnavailable: the store cannot be reached.
        :raises BrokerError: the broker refused a publish.
        """
        job = await self.store.get_job(job_id)
        job_type = self._job_types.get(job.job_type)
        if not job.status.terminal:
            raise Conflict(f"job {job_id} is still running: retry it once it has ended")
        if job_type is None:
            known = ", ".join(sorted(self._job_types)) or "none"
            raise Conflict(
                f"job {job_id} is a {job.job_type} job, a type this app does not know"
                f" (registered: {known}): name the app that has it (--app)"
            )
        failed = len(failure_json(await job_type.item_failures(self, job, limit)))
        if job.status is JobStatus.COMPLETED and not failed:
            raise Conflict(f"job {job_id} completed with no failed items: nothing to retry")
        if job_type.retry is None:
            if job.status is JobStatus.CANCELLED:
                raise Conflict(f"job {job_id} was cancelled: start a new job instead")
            return await self.retry_job(job_id), failed
        again = await job_type.retry_job(self, job)
        message = f"{failed} failed items re-driven in job {again.id}"
        await self.store.add_event(job_id, "retried", message, {"job": again.id})
        return again, failed

    @asynccontextmanager
    async def working(
        self, *, concurrency: int = 2, stages: Sequence[str] = ()
    ) -> AsyncIterator[None]:
        """Run this app's handlers in this process, on its own open parts,
        for the body of the block: the in-process broker (``memory://``)
        reaches no other process, so the process that produces a job works
        it too::

            async with app, app.working(concurrency=4):
                async with app.start_job("csv-import") as producer:
                    await producer.add("parse", rows)
                ...  # follow the job until it ends

        Leaving the block stops the consumers gracefully: the items in
        flight finish, the sealing checks still due are made.

        :param concurrency: threads (or processes) the handlers run in.
        :param stages: as :class:`~jobtrack.runtime.worker.Worker`'s (default: all).
        :raises InvalidRequest: the app is not open; no job type has a
            handler; an unknown stage; a concurrency below 1.
        :raises BrokerError: the broker failed for good while working.
        """
        from jobtrack.runtime.worker import Worker  # noqa: PLC0415 (it imports App)

        if self.running_loop is None:
            raise InvalidRequest("working needs the app open: `async with app, app.working():`")
        worker = Worker(app=self, stages=stages, concurrency=concurrency, in_process=True)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(worker.run_open(stop, ready=ready))
        started = asyncio.create_task(ready.wait())
        try:
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if task.done():
            task.result()  # raises why it stopped before it was ready
            raise InvalidRequest("the app's workers stopped before they started")
        try:
            yield
        finally:
            stop.set()
            await task

    def asgi(self, *, token: str | None = None, reads_need_token: bool = False) -> FastAPI:
        """The HTTP API and the dashboard of this app's job types, as an
        ASGI application to serve with any ASGI server (``uvicorn
        myjobs:api`` with ``api = app.asgi(token=...)``); ``jobtrack serve
        --app`` serves the same. It opens its own parts from this app's
        settings when the server starts. Mutating calls need ``token``
        (None refuses them all); with ``reads_need_token``, every call does.

        :raises InvalidRequest: the ``api`` extra is not installed.
        """
        try:
            from jobtrack.api.app import create_app  # noqa: PLC0415 (the optional api extra)
            from jobtrack.api.config import ApiConfig  # noqa: PLC0415
        except ImportError as exc:
            raise InvalidRequest(
                f"the HTTP API needs the api extra (pip install 'jobtrack[api]'): {exc}"
            ) from None
        config = ApiConfig(
            token=token, reads_need_token=reads_need_token, stuck_after=self.settings.stuck_after
        )
        return create_app(self.settings, config, app=self.with_settings(self.settings))

    @property
    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the app is open on (``async with``), while it runs;
        None when the app is not open."""
        loop = self._loop
        if not self._entered or loop is None or loop.is_closed() or not loop.is_running():
            return None
        return loop

    def ensure_data_dir(self) -> Path:
        """The data folder (where renditions are written), made if missing.

        :raises StoreError: the folder cannot be made.
        """
        folder = self.settings.data_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {folder}: {exc.strerror}") from exc
        return folder

    async def preflight(self, *, broker: bool = True, within: float = 5.0) -> None:
        """Connect once to a PostgreSQL store and an AMQP broker the settings
        name, so that a setting that can never work fails now, in one error,
        rather than looking like an outage later. A server that is only away
        passes (what uses it waits for it). The connections are the check's
        own, closed before it returns: it may run in an event loop of its
        own, before the app's parts are used in another.

        :param broker: check the broker too.
        :raises ConfigurationError: a refused login, a missing database or
            virtual host, a URL that can never connect.
        :raises InvalidRequest: an unsupported store or broker URL.
        :raises JobtrackError: the broker's connection stopped on an error.
        """
        if self.settings.store_url.startswith(("postgresql://", "postgres://")):
            store = open_store(self.settings.store_url)
            try:
                await asyncio.wait_for(store.last_change(), within)
            except (StoreError, TimeoutError):
                pass  # away, not wrong: the command waits for it as it always did
            finally:
                await store.aclose()
        if broker and self.shared_broker:
            opened = open_broker(self.settings.broker_url)  # refuses an unknown scheme
            await opened.aclose()
            from jobtrack.broker.rabbitmq import RabbitMQBroker  # noqa: PLC0415 (aio-pika)

            amqp = RabbitMQBroker(self.settings.broker_url)
            try:
                await amqp.connect(within=within)
            except BrokerUnavailable:
                pass
            finally:
                await amqp.aclose()

    async def __aenter__(self) -> App:
        """Open the app (again, if it was closed); parts are built on use.

        :raises InvalidRequest: the app is already open in another ``async with``
            (the inner one's exit would close the parts the outer one uses).
        """
        if self._entered:
            raise InvalidRequest("the app is already open: enter it once, and share it")
        if self._closing is not None:
            await asyncio.shield(self._closing)  # a close under way ends first
        self._entered = True
        self._closed = False
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the app: see :meth:`aclose`. When the body raised, its exception
        is the one that propagates: close failures are then logged, unless a
        close was itself cancelled or interrupted, which always propagates."""
        failure = await self._close_once()
        if failure is None:
            return
        if exc is None or not isinstance(failure, Exception):
            raise failure
        logger.error(
            "closing the app failed after an error: %r", failure, extra={"action": "close_failed"}
        )

    async def aclose(self) -> None:
        """Close what was built, in order: the tracker (its pending progress
        written: ``flush_wait`` seconds for the writes in flight, and as long
        again for a per-item tracker's retries), the broker, the catalog,
        the store. A part that fails to close does not keep the others open;
        the first failure is raised once all are closed, the others logged.
        Closing a closed app does nothing; using it again needs ``async with``.
        A close called while another is under way waits for that one.
        """
        failure = await self._close_once()
        if failure is not None:
            raise failure

    async def _close_once(self) -> BaseException | None:
        """Run the close once, or wait for the one under way; its first failure."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        closing = self._closing
        try:
            return await asyncio.shield(closing)
        finally:
            if closing.done() and self._closing is closing:
                self._closing = None

    async def _close(self) -> BaseException | None:
        self._closed = True
        self._entered = False
        tracker, broker, catalog, store = self._tracker, self._broker, self._catalog, self._store
        self._tracker = self._broker = self._catalog = self._store = None
        self._reconciler = None
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if tracker is not None:
            steps.append(("tracker", lambda: tracker.flush(max_wait=self.flush_wait)))
        if broker is not None and self._own_broker:
            steps.append(("broker", broker.aclose))
        if catalog is not None:
            close_catalog = getattr(catalog, "aclose", None)  # catalogs share the store's
            if callable(close_catalog):  # database; one with a connection of its own closes it
                steps.append(("catalog", close_catalog))
        if store is not None:
            steps.append(("store", store.aclose))
        failure: BaseException | None = None
        for part, close in steps:
            try:
                await close()
            except BaseException as exc:  # the others close all the same
                if failure is None:
                    failure = exc
                else:
                    logger.error(
                        "closing the %s failed too: %r", part, exc, extra={"action": "close_failed"}
                    )
        return failure

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequest("the app is closed: use it again inside `async with app:`")
