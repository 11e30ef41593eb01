"""The built-in app: jobtrack with the collection scan registered.

What the commands and the HTTP API use when no ``--app`` (or
``JOBTRACK_APP``) names a user's app. The collection scan is a job type
like any other to them: its failed items come from its catalog
(:meth:`~jobtrack.jobs.types.JobType.item_failures`), its retry is a new
scan of its collection, its details say where its renditions are. Its
``thumbnail`` and ``cache`` stages have handlers on the queues
``jobtrack.thumbnail`` and ``jobtrack.cache``
(:class:`~jobtrack.pipeline.renditions.RenditionWork`, one per app, reached
through :attr:`Item.app <jobtrack.jobs.types.Item.app>`), so any worker of
the app consumes them; the ``scan`` stage is counted by the scanner, the
job's producer.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from jobtrack.errors import Conflict, InvalidRequest, PathRefused
from jobtrack.jobs.types import Item, JobType
from jobtrack.model import Job
from jobtrack.monitor.base import Reconciler
from jobtrack.pipeline.failures import job_collection, job_failures
from jobtrack.pipeline.pool import RenderPool, process_pool
from jobtrack.pipeline.renditions import MAX_ATTEMPTS, RenditionWork
from jobtrack.pipeline.stages import CACHE, JOB_TYPE, SCAN, STAGES, THUMBNAIL, queue_for
from jobtrack.runtime.app import App
from jobtrack.runtime.settings import Settings
from jobtrack.store.ledger import ItemFailure

__all__ = [
    "ScanStarter",
    "builtin_app",
    "close_rendition_work",
    "collection_scan_type",
    "rendition_work",
]

#: Starts a scan of a folder in the background; returns its job as soon as
#: it exists (the HTTP API's :class:`~jobtrack.api.scans.ScanLauncher`).
ScanStarter = Callable[[str], Awaitable[Job]]

#: Each app's rendition work, built on its first item (its pool's processes
#: stopped when the app is dropped, or by :func:`close_rendition_work`).
_WORK: weakref.WeakKeyDictionary[App, RenditionWork] = weakref.WeakKeyDictionary()


def rendition_work(
    app: App,
    *,
    processes: Callable[[], Executor] | None = None,
    retry_delay: float = 0.2,
) -> RenditionWork:
    """``app``'s rendition work: its catalog and data folder (made if
    missing), its renditions, a pool of ``settings.workers`` processes;
    built on first use, then the same (the options only count then).

    :param processes: makes the pool's executor (default: that many
        forkserver processes).
    :param retry_delay: the first wait while the store is unreachable.
    :raises StoreError: the store (and so the catalog) cannot be opened.
    """
    work = _WORK.get(app)
    if work is None:
        app.ensure_data_dir()
        pool = RenderPool(processes or process_pool(app.settings.workers))
        work = RenditionWork(
            catalog=app.catalog,
            data_dir=app.settings.data_dir,
            specs=app.renditions,
            pool=pool,
            retry_delay=retry_delay,
        )
        _WORK[app] = work
        weakref.finalize(app, pool.shutdown)
    return work


def close_rendition_work(app: App) -> None:
    """Stop ``app``'s rendition processes, if it has any (the next item
    builds them again). Raises nothing of its own."""
    work = _WORK.pop(app, None)
    if work is not None:
        work.pool.shutdown()


async def make_rendition(item: Item) -> None:
    """The ``thumbnail`` and ``cache`` handler: the item's rendition
    (:meth:`RenditionWork.make`, whose errors it raises).

    :raises InvalidRequest: the item came without its app (a handler run
        in a worker process).
    """
    if item.app is None:
        raise InvalidRequest("a rendition is made on the worker's loop, with its app")
    await rendition_work(item.app).make(item)


def collection_scan_type(*, scans: ScanStarter | None = None) -> JobType:
    """The collection scan as a :class:`JobType`: stages scan, thumbnail
    and cache, the renditions made by :func:`make_rendition` (tried
    :data:`~jobtrack.pipeline.renditions.MAX_ATTEMPTS` times, backoff from
    0.2 s doubled up to 10 s); its truth the app's catalog (the app's
    :attr:`~jobtrack.runtime.app.App.reconciler`).

    :param scans: how a retry starts a new scan of the job's collection;
        without it a retry is refused (``jobtrack scan PATH`` does it).
    """

    def truth(app: Any, _: JobType) -> Reconciler:
        reconciler: Reconciler = app.reconciler
        return reconciler

    async def failures(app: App, job: Job, limit: int) -> list[ItemFailure]:
        return await job_failures(app.catalog, job, limit)

    async def retry(app: App, job: Job) -> Job:
        collection = job_collection(job)
        if collection is None:
            raise Conflict(f"job {job.id} has no collection to scan again: nothing to retry")
        if scans is None:
            raise Conflict(
                f"job {job.id} is retried by scanning its collection again:"
                f" jobtrack scan {collection.path}"
            )
        return await scans(collection.path)

    def details(app: App, job: Job) -> list[str]:
        collection = job_collection(job)
        if collection is None:
            return []
        lines = [f"  collection: {collection.path}"]
        for spec in app.renditions:
            try:
                folder = str(spec.output_path(app.settings.data_dir, collection.id, "x").parent)
            except PathRefused as exc:  # a catalog row no scan would write
                folder = f"none ({exc})"
            lines.append(f"{spec.stage:>10} renditions: {folder}")
        return lines

    scan_type = JobType(
        JOB_TYPE,
        STAGES,
        max_attempts=MAX_ATTEMPTS,
        backoff=0.2,
        max_backoff=10.0,
        truth=truth,
        failures=failures,
        retry=retry,
        details=details,
        counted_by_producer=[SCAN],
        searchable=["collection.path"],
    )
    for stage in (THUMBNAIL, CACHE):
        scan_type.handler(stage, queue=queue_for(stage))(make_rendition)
    return scan_type


def builtin_app(
    settings: Settings | None = None, *, scans: ScanStarter | None = None, **options: Any
) -> App:
    """The built-in app of ``settings`` (None: from the environment), with
    the collection scan registered; ``options`` as :class:`App`'s
    (``create_store``, ``flush_wait``, ``renditions``).

    :param scans: how a retry of a collection scan starts its new scan (see
        :func:`collection_scan_type`).
    :raises InvalidRequest: bad settings in the environment.
    """
    return App(settings, job_types=[collection_scan_type(scans=scans)], **options)
