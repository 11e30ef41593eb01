"""The rendition consumers: one per stage (thumbnail, cache).

For each message: make the rendition in a worker process (image work is
CPU-bound; the pool uses every core), record the artifact in the catalog,
report the item to the tracker, then ack. A corrupt or hostile image is a
failed item with its error recorded, never a crashed worker; a malformed
message is dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path

from jobtrack.broker import Delivery
from jobtrack.errors import ImageError, JobtrackError, MalformedMessage, NotFound, PathRefused
from jobtrack.model import Clock, utc_now
from jobtrack.pipeline.catalog import Artifact, ArtifactStatus, Catalog, ImageRecord
from jobtrack.pipeline.imaging import Rendition, render
from jobtrack.pipeline.messages import StageMessage, decode_message
from jobtrack.pipeline.stages import RenditionSpec
from jobtrack.pipeline.walk import resolve_inside
from jobtrack.tracking import ProgressTracker

__all__ = ["RenditionConsumer"]

logger = logging.getLogger(__name__)


class RenditionConsumer:
    """Handles the messages of one rendition stage.

    :param max_deliveries: a message that keeps failing for reasons other
        than its image (the catalog unreachable, say) is requeued until it has
        been delivered this many times, then dead-lettered.
    """

    def __init__(
        self,
        *,
        spec: RenditionSpec,
        catalog: Catalog,
        tracker: ProgressTracker,
        data_dir: Path,
        executor: Executor | None,
        max_deliveries: int = 5,
        clock: Clock = utc_now,
    ) -> None:
        self.spec = spec
        self._catalog = catalog
        self._tracker = tracker
        self._data_dir = data_dir
        self._executor = executor
        self._max_deliveries = max_deliveries
        self._clock = clock

    async def handle(self, delivery: Delivery) -> None:
        """Handle one delivery and settle it; never raises."""
        try:
            message = decode_message(delivery.body)
            if message.stage != self.spec.stage:
                raise MalformedMessage(
                    f"a {message.stage!r} message on the {self.spec.stage!r} queue"
                )
        except MalformedMessage as exc:
            await delivery.nack(requeue=False, reason=str(exc))
            return
        try:
            failed = await self._process(message)
        except NotFound as exc:
            await delivery.nack(requeue=False, reason=str(exc))
            return
        except Exception as exc:
            requeue = delivery.delivery_count < self._max_deliveries
            logger.warning(
                "item %s of job %s not done (%s); %s",
                message.image_id,
                message.job_id,
                exc,
                "requeued" if requeue else "dead-lettered",
                extra={"action": "item_error", "job_id": message.job_id},
            )
            await delivery.nack(requeue=requeue, reason=f"{type(exc).__name__}: {exc}")
            return
        await self._tracker.increment(
            message.job_id, self.spec.stage, item_key=message.item_key, failed=failed
        )
        await delivery.ack()

    async def _process(self, message: StageMessage) -> bool:
        """Make and record the artifact; True when the item failed."""
        image = await self._catalog.get_image(message.image_id)
        collection = await self._catalog.get_collection(image.collection_id)
        destination = self.spec.output_path(self._data_dir, collection.id, image.id)
        try:
            source = resolve_inside(Path(collection.root), image.relpath)
            rendition = await self._render(source, destination)
        except (ImageError, PathRefused) as exc:
            await self._record(image, ArtifactStatus.FAILED, error=str(exc))
            logger.info(
                "%s of %s failed: %s",
                self.spec.stage,
                image.relpath,
                exc,
                extra={"action": "item_failed", "job_id": message.job_id},
            )
            return True
        await self._record(image, ArtifactStatus.OK, path=str(destination), rendition=rendition)
        return False

    async def _render(self, source: Path, destination: Path) -> Rendition:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _render_call, source, destination, self.spec.max_edge, self.spec.quality
        )

    async def _record(
        self,
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
                kind=self.spec.stage,
                status=status,
                variant=self.spec.variant,
                source_size=image.size,
                source_mtime_ns=image.mtime_ns,
                produced_at=self._clock(),
                path=path,
                error=error,
                width=None if rendition is None else rendition.width,
                height=None if rendition is None else rendition.height,
            )
        )


def _render_call(source: Path, destination: Path, max_edge: int, quality: int) -> Rendition:
    """Runs in a worker process; keyword arguments do not cross run_in_executor."""
    try:
        return render(source, destination, max_edge=max_edge, quality=quality)
    except JobtrackError:
        raise
    except Exception as exc:  # anything Pillow let through is still a bad image
        raise ImageError(f"{source.name}: {type(exc).__name__}: {exc}") from exc
