"""The built-in app: jobtrack with the collection scan registered.

What the commands and the HTTP API use when no ``--app`` (or
``JOBTRACK_APP``) names a user's app. The collection scan is a job type
like any other to them: its failed items come from its catalog
(:meth:`~jobtrack.jobs.types.JobType.item_failures`), its retry is a new
scan of its collection, its details say where its renditions are. Its
items are still handled by the rendition consumers of the embedded runtime
and ``jobtrack worker``, so the type carries no handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jobtrack.errors import Conflict, PathRefused
from jobtrack.jobs.types import JobType
from jobtrack.model import Job
from jobtrack.monitor.base import Reconciler
from jobtrack.pipeline.failures import job_collection, job_failures
from jobtrack.pipeline.stages import JOB_TYPE, STAGES
from jobtrack.runtime.app import App
from jobtrack.runtime.settings import Settings
from jobtrack.store.ledger import ItemFailure

__all__ = ["ScanStarter", "builtin_app", "collection_scan_type"]

#: Starts a scan of a folder in the background; returns its job as soon as
#: it exists (the HTTP API's :class:`~jobtrack.api.scans.ScanLauncher`).
ScanStarter = Callable[[str], Awaitable[Job]]


def collection_scan_type(*, scans: ScanStarter | None = None) -> JobType:
    """The collection scan as a :class:`JobType`: stages scan, thumbnail
    and cache; its truth the app's catalog (the app's
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

    return JobType(JOB_TYPE, STAGES, truth=truth, failures=failures, retry=retry, details=details)


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
