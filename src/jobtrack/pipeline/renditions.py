"""The rendition work of the collection scan's ``thumbnail`` and ``cache``
handlers: one image's rendition of one stage, made in a worker process and
recorded in the catalog.

A corrupt or hostile image, an id that names no place to write, or an image
whose worker process died under it on every attempt is recorded as a failed
artifact and raised, so the item fails with its error. Any other failure
(the output folder not writable, a catalog write refused) is not the
image's: it is raised as :class:`~jobtrack.jobs.types.Retry`, so the item is
tried again with the type's backoff; on the last attempt the artifact is
recorded as failed first. While the store is unreachable the item waits and
tries again, for as long as it takes, spending no attempt.

Before writing into a folder, and again every ``stale_after`` seconds, the
temporary files killed writers left there are swept
(:func:`~jobtrack.pipeline.imaging.sweep_temporaries`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from jobtrack.errors import ImageError, InvalidRequest, PathRefused, StoreUnavailable, WorkerCrashed
from jobtrack.jobs.messages import brief
from jobtrack.jobs.types import Item, Retry
from jobtrack.model import Clock, utc_now
from jobtrack.pipeline.catalog import Artifact, ArtifactStatus, Catalog, ImageRecord
from jobtrack.pipeline.imaging import STALE_TEMPORARY_AGE, Rendition, render, sweep_temporaries
from jobtrack.pipeline.pool import RenderPool
from jobtrack.pipeline.stages import RenditionSpec
from jobtrack.pipeline.walk import open_inside

__all__ = ["MAX_ATTEMPTS", "RenditionWork", "render_inside"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
"""Tries of a rendition before an error that is not the image's fails it."""


class RenditionWork:
    """Makes renditions for one app: its catalog, data folder, rendition
    specs and a pool of worker processes (rebuilt when one dies).

    :param max_attempts: the job type's; an image whose worker died on
        each of them fails.
    :param retry_delay: first wait while the store is unreachable, doubled
        up to 10 s.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        data_dir: Path,
        specs: tuple[RenditionSpec, ...],
        pool: RenderPool,
        max_attempts: int = MAX_ATTEMPTS,
        retry_delay: float = 0.2,
        clock: Clock = utc_now,
        stale_after: float = STALE_TEMPORARY_AGE,
    ) -> None:
        self._catalog = catalog
        self._data_dir = data_dir
        self._specs = {spec.stage: spec for spec in specs}
        self.pool = pool
        """The worker processes the images are rendered in."""
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._clock = clock
        self._stale_after = stale_after
        self._swept: dict[Path, float] = {}  # folder -> when swept (monotonic)

    async def make(self, item: Item) -> None:
        """Make and record ``item``'s rendition (its key an image id, its
        stage a rendition's).

        :raises ImageError: the image cannot be rendered (recorded as failed).
        :raises PathRefused: its ids name no place to write, or its file
            lies outside its collection (recorded as failed).
        :raises NotFound: the catalog has no such image or collection.
        :raises InvalidRequest: a stage that makes no rendition.
        :raises Retry: a failure that is not the image's.
        """
        spec = self._specs.get(item.stage)
        if spec is None:
            raise InvalidRequest(f"stage {item.stage!r} makes no rendition")
        delay = self._retry_delay
        while True:
            try:
                return await self._make(spec, item)
            except StoreUnavailable as exc:
                logger.warning(
                    "store unreachable for item %s of job %s (%s); trying again in %.1f s",
                    item.key,
                    item.job.id,
                    brief(str(exc)),
                    delay,
                    extra={"action": "store_unavailable", "job_id": item.job.id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _make(self, spec: RenditionSpec, item: Item) -> None:
        image = await self._catalog.get_image(item.key)
        collection = await self._catalog.get_collection(image.collection_id)
        try:
            destination = spec.output_path(self._data_dir, collection.id, image.id)
        except PathRefused as exc:  # the catalog's ids name no place to write
            await self._failed(spec, item, image, None, str(exc))
            raise
        try:
            await self._sweep(destination.parent)
            rendition = await self.pool.run(
                render_inside,
                Path(collection.root),
                image.relpath,
                destination,
                spec.max_edge,
                spec.quality,
            )
            await self._record(
                spec, image, ArtifactStatus.OK, path=str(destination), rendition=rendition
            )
        except WorkerCrashed as exc:
            if item.attempt < self._max_attempts:
                raise  # retried by the runner
            error = f"{image.relpath}: the image worker died {item.attempt} times on it"
            await self._failed(spec, item, image, destination, error)
            raise ImageError(error) from exc
        except (ImageError, PathRefused) as exc:
            await self._failed(spec, item, image, destination, str(exc))
            raise
        except StoreUnavailable:
            raise
        except Exception as exc:  # not the image's fault: tried again
            reason = f"{type(exc).__name__}: {exc}"
            if item.attempt >= self._max_attempts:
                await self._failed(spec, item, image, destination, reason)
            raise Retry(brief(reason)) from exc

    async def _sweep(self, folder: Path) -> None:
        now = time.monotonic()
        swept = self._swept.get(folder)
        if swept is not None and now - swept < self._stale_after:
            return
        self._swept[folder] = now
        try:
            removed = await asyncio.to_thread(
                sweep_temporaries, folder, older_than=self._stale_after
            )
        except OSError as exc:
            logger.warning("cannot sweep %s: %s", folder, exc, extra={"action": "cleanup_failed"})
            return
        if removed:
            logger.info(
                "removed %d temporary files left by killed writers in %s",
                removed,
                folder,
                extra={"action": "temporaries_swept"},
            )

    async def _failed(
        self,
        spec: RenditionSpec,
        item: Item,
        image: ImageRecord,
        destination: Path | None,
        error: str,
    ) -> None:
        if destination is not None:
            await asyncio.to_thread(_discard, destination)
        await self._record(spec, image, ArtifactStatus.FAILED, error=error)
        logger.info(
            "%s of %s failed: %s",
            spec.stage,
            image.relpath,
            brief(error),
            extra={"action": "item_failed", "job_id": item.job.id},
        )

    async def _record(
        self,
        spec: RenditionSpec,
        image: ImageRecord,
        status: ArtifactStatus,
        *,
        path: str | None = None,
        error: str | None = None,
        rendition: Rendition | None = None,
    ) -> None:
        await self._catalog.record_artifact(
            Artifact(
                image_id=image.id,
                kind=spec.stage,
                status=status,
                variant=spec.variant,
                source_size=image.size,
                source_mtime_ns=image.mtime_ns,
                produced_at=self._clock(),
                path=path,
                error=error,
                width=None if rendition is None else rendition.width,
                height=None if rendition is None else rendition.height,
            )
        )


def _discard(stale: Path) -> None:
    """Remove a rendition of an earlier version of the image, if there is one."""
    try:
        stale.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("cannot remove %s: %s", stale, exc, extra={"action": "cleanup_failed"})


def render_inside(
    root: Path, relpath: str, destination: Path, max_edge: int, quality: int
) -> Rendition:
    """Runs in a worker process: open the image safely inside its root, render it."""
    with open_inside(root, relpath) as source:
        return render(source, destination, max_edge=max_edge, quality=quality)
