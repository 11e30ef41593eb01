"""The scanner: registers a collection's images and feeds the stages.

The scanner is the producer of a collection-scan job
(:class:`~jobtrack.jobs.producer.JobProducer`): batch by batch it adds each
image that needs a rendition to the stage's ledger (which raises the
stage's total) and publishes it as an item, keyed by the image's id, while
the handlers are already at work; it seals the totals only when the walk is
over (rule 2 of the design: no stage completes on a total still being
counted). The ``scan`` stage is the scanner's own count. An image whose
artifacts are up to date is counted as done on the spot, without rework.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobtrack.broker import Broker
from jobtrack.errors import InvalidRequest
from jobtrack.jobs.messages import brief
from jobtrack.jobs.producer import JobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import ArtifactStatus, Catalog, Collection, ScannedFile
from jobtrack.pipeline.stages import (
    DEFAULT_RENDITIONS,
    SCAN,
    RenditionSpec,
    inside_renditions,
)
from jobtrack.pipeline.walk import (
    Refused,
    ResolvedRoot,
    Skipped,
    WalkEntry,
    resolve_root,
    walk_images,
)
from jobtrack.store import JobStore
from jobtrack.store.ledger import LedgerItem

__all__ = ["ScanReport", "ScanStart", "Scanner"]

logger = logging.getLogger(__name__)

#: The longest error text a log line of the walk's status helper carries.
_MAX_ERROR_TEXT = 500


@dataclass(frozen=True, slots=True)
class ScanStart:
    """The job a scan request got: a new one, or the one already running."""

    job: Job
    collection: Collection
    created: bool


@dataclass(slots=True)
class ScanReport:
    """What one walk found."""

    images: int = 0
    up_to_date: int = 0
    published: int = 0
    skipped: int = 0
    refused: list[Refused] = field(default_factory=list)
    removed: int = 0
    ended: JobStatus | None = None  # the job ended while walking: the walk stopped there

    def summary(self) -> str:
        """One line for the scan stage's message."""
        parts = [
            f"{_plural(self.images, 'image')} ({self.up_to_date} up to date)",
            f"{_plural(self.skipped, 'other entry', 'other entries')} skipped",
            f"{_plural(len(self.refused), 'path')} refused",
        ]
        if self.removed:
            parts.append(f"{_plural(self.removed, 'rendition')} of removed images deleted")
        return ", ".join(parts)


class Scanner:
    """Starts collection-scan jobs and walks their folders.

    :param job_type: the collection scan's type (its stages and queues).
    """

    def __init__(
        self,
        *,
        store: JobStore,
        catalog: Catalog,
        broker: Broker,
        job_type: JobType,
        renditions: Sequence[RenditionSpec] = DEFAULT_RENDITIONS,
        batch_size: int = 64,
        exclude: Sequence[Path] = (),
        heartbeat: float = 30.0,
        data_dir: Path | None = None,
        status_interval: float = 0.25,
    ) -> None:
        # Renditions of removed images are deleted only inside data_dir's
        # renditions folder (none without it), whatever paths the catalog holds.
        self._data_dir = data_dir
        self._heartbeat = heartbeat
        self._status_interval = status_interval
        self._store = store
        self._catalog = catalog
        self._broker = broker
        self._renditions = tuple(renditions)
        self._batch_size = batch_size
        self._exclude = tuple(exclude)
        self._job_type = job_type
        self._producers: dict[str, JobProducer] = {}  # job id -> its producer, until run

    async def start(
        self,
        path: str | Path | ResolvedRoot,
        *,
        abandoned: Callable[[Job], str | None] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> ScanStart:
        """The collection's running job, or a new job for it.

        One job per collection at a time: the current job is swapped in with
        a compare-and-set, so two scans racing for one collection agree. A
        running job for which ``abandoned`` gives a reason (its process died
        with the work it held) is failed with that reason, and a new job
        takes over, re-doing only what is missing. ``attributes`` are added
        to a new job's own. A ``ResolvedRoot`` is taken as it is, never
        resolved again (what was checked is what is scanned).
        """
        root = path.path if isinstance(path, ResolvedRoot) else resolve_root(path)
        collection = await self._catalog.ensure_collection(str(root))
        while True:
            current = await self._current_job(collection)
            reason = None if current is None or abandoned is None else abandoned(current)
            if current is not None and reason is None:
                return ScanStart(current, collection, created=False)
            if current is not None and reason is not None:
                await self._store.end_job(current.id, JobStatus.FAILED, message=reason)
            producer = JobProducer(
                self._store,
                self._broker,
                self._job_type,
                attributes={
                    **(attributes or {}),
                    "collection": {"id": collection.id, "path": collection.root},
                },
                heartbeat=self._heartbeat,
            )
            job = await producer.start()
            if await self._catalog.swap_job(
                collection.id, expected=collection.job_id, job_id=job.id
            ):
                logger.info(
                    "job %s started for %s",
                    job.id,
                    root,
                    extra={"action": "job_started", "job_id": job.id},
                )
                self._producers[job.id] = producer
                return ScanStart(job, collection, created=True)
            await producer.cancel("another scan won")
            collection = await self._catalog.get_collection(collection.id)

    async def run(self, job: Job, collection: Collection) -> ScanReport:
        """Walk the collection, register its images, publish the work, seal the totals.

        A job that ends meanwhile (cancelled, or failed by a monitor) stops
        the walk within ``status_interval`` seconds: the report's ``ended``
        says so, and nothing more is registered, retired or sealed (images
        the walk did not reach are not gone).

        :raises InvalidRequest: ``job`` was not created by this scanner's
            :meth:`start`, or has been run already.
        """
        producer = self._producers.pop(job.id, None)
        if producer is None:
            raise InvalidRequest(f"job {job.id} was not started by this scanner, or has run")
        root = Path(collection.root)
        ResolvedRoot(root).check_unchanged()
        await self._store.start_stage(job.id, SCAN, message=f"walking {root}")
        report = ScanReport()
        stop = threading.Event()
        entries = walk_images(root, exclude=self._exclude, stop=stop)
        # A long stretch without images writes nothing: the producer's heartbeat
        # keeps the job from looking stuck (a walk that stopped stops beating).
        producer.beat_message = lambda: f"walking {root}: {report.images} images so far"
        helpers = [
            asyncio.create_task(self._until_ended(job, report, stop), name="scan-status"),
        ]
        try:
            while batch := await asyncio.to_thread(_next_batch, entries, self._batch_size, report):
                if stop.is_set():
                    break
                await self._register(producer, collection, batch, report)
        finally:
            stop.set()  # the walk thread ends at its next entry, whatever happened here
            for helper in helpers:
                helper.cancel()
            await asyncio.wait(helpers)
        if report.ended is not None:
            logger.info(
                "job %s %s: its walk stopped after %d images",
                job.id,
                report.ended.value,
                report.images,
                extra={"action": "walk_stopped", "job_id": job.id},
            )
            return report
        gone = await self._catalog.retire_unseen(collection.id, job.id)
        report.removed = await asyncio.to_thread(_remove_files, gone, self._data_dir)
        await self._store.start_stage(job.id, SCAN, message=report.summary())
        await producer.seal()
        for refused in report.refused:
            logger.warning(
                "refused %s: %s", refused.relpath, refused.reason, extra={"action": "path_refused"}
            )
        return report

    async def _until_ended(self, job: Job, report: ScanReport, stop: threading.Event) -> None:
        """Read the job's status every ``status_interval`` s; once it has
        ended, record how and stop the walk."""
        last_error = ""
        while True:
            await asyncio.sleep(self._status_interval)
            try:
                status = (await self._store.get_job(job.id)).status
            except Exception as exc:  # any error: this helper must outlive it
                # Unreachable, the job not found, a bug: the walk goes on and
                # the next read may stop it. One line per run of one error.
                error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_TEXT]
                if error != last_error:
                    logger.warning(
                        "scan status of job %s not read: %s",
                        job.id,
                        error,
                        extra={"action": "scan_status_unread", "job_id": job.id},
                    )
                last_error = error
                continue
            last_error = ""
            if status.terminal:
                report.ended = status
                stop.set()
                return

    async def _current_job(self, collection: Collection) -> Job | None:
        if collection.job_id is None:
            return None
        job = await self._store.get_job(collection.job_id)
        return None if job.status.terminal else job

    async def _register(
        self,
        producer: JobProducer,
        collection: Collection,
        batch: list[ScannedFile],
        report: ScanReport,
    ) -> None:
        job = producer.job
        states = await self._catalog.register_images(collection.id, job.id, batch)
        count = len(states)
        report.images += count
        await self._store.raise_total(job.id, SCAN, by=count)
        # An item is up to date when its rendition is current and on disk; a
        # failed item is tried again (the failure may have been passing).
        up_to_date = {state.image.id for state in states}
        for spec in self._renditions:
            done, work = 0, []
            for state in states:
                artifact = state.finished(spec.stage, spec.variant)
                if artifact is not None and artifact.status is ArtifactStatus.OK:
                    done += 1
                else:
                    up_to_date.discard(state.image.id)
                    work.append(LedgerItem(state.image.id))
            if work:  # the ledger raises the stage's total by the new items
                await producer.add(spec.stage, work)
                report.published += len(work)
            if done:
                await self._store.raise_total(job.id, spec.stage, by=done)
                await self._store.increment(job.id, spec.stage, completed=done)
        report.up_to_date += len(up_to_date)
        await self._store.increment(job.id, SCAN, completed=count)


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def _remove_files(paths: list[str], data_dir: Path | None) -> int:
    removed = 0
    for path in paths:
        if data_dir is None or not inside_renditions(path, data_dir):
            logger.warning(
                "not removing %s: not in the renditions folder",
                brief(path),
                extra={"action": "cleanup_refused"},
            )
            continue
        try:
            Path(path).unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("cannot remove %s: %s", path, exc, extra={"action": "cleanup_failed"})
            continue
        removed += 1
    return removed


def _next_batch(entries: Iterator[WalkEntry], size: int, report: ScanReport) -> list[ScannedFile]:
    batch: list[ScannedFile] = []
    for entry in entries:
        if isinstance(entry, Refused):
            report.refused.append(entry)
        elif isinstance(entry, Skipped):
            report.skipped += 1
        else:
            batch.append(entry)
            if len(batch) == size:
                break
    return batch
