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
import time
from pathlib import Path

import msgspec

from jobtrack.broker import Delivery
from jobtrack.errors import (
    ImageError,
    MalformedMessage,
    NotFound,
    PathRefused,
    StoreUnavailable,
    WorkerCrashed,
)
from jobtrack.model import Clock, utc_now
from jobtrack.pipeline.catalog import Artifact, ArtifactStatus, Catalog, ImageRecord
from jobtrack.pipeline.gate import JobGate
from jobtrack.pipeline.imaging import STALE_TEMPORARY_AGE, Rendition, render, sweep_temporaries
from jobtrack.pipeline.messages import StageMessage, brief, decode_message, encode_message
from jobtrack.pipeline.pool import RenderPool
from jobtrack.pipeline.stages import RenditionSpec
from jobtrack.pipeline.walk import open_inside
from jobtrack.tracking import ProgressTracker

__all__ = ["RenditionConsumer", "render_inside"]

logger = logging.getLogger(__name__)


class RenditionConsumer:
    """Handles the messages of one rendition stage.

    A failure that is not the image's fault (the output folder not
    writable, say) puts the message back, its ``attempt`` raised, after a
    backoff, until it has been tried ``max_deliveries`` times; then it is
    dead-lettered.
    An image whose worker process dies under it that many times is a failed
    item. While the store is unreachable the message is held and its item
    tried again with backoff, for as long as it takes. With
    ``ack_when_durable``, a message is acked only once its item's
    progress is durable in the store (or ``durable_within`` seconds passed:
    the tracker keeps it, and reconciliation has the last word; None waits
    as long as it takes, so an unreachable store stops the intake once
    ``prefetch`` messages wait). A message whose item's progress is refused
    for good (its receipt says why) is dead-lettered with that reason when
    the refusal is known before the ack: with ``ack_when_durable``, any
    refusal decided within ``durable_within``; without it, only a refusal
    the tracker decides as the item is reported (a job id, stage or item
    key no store can hold). A refusal the store decides at a later flush
    (an unknown job or stage, say) is then only logged, and the message is
    acked.

    Before writing into a folder, and again every ``stale_after`` seconds,
    it sweeps the temporary files killed writers left there
    (:func:`~jobtrack.pipeline.imaging.sweep_temporaries`).
    """

    def __init__(
        self,
        *,
        spec: RenditionSpec,
        catalog: Catalog,
        tracker: ProgressTracker,
        data_dir: Path,
        pool: RenderPool,
        max_deliveries: int = 5,
        retry_delay: float = 0.2,
        ack_when_durable: bool = False,
        durable_within: float | None = 30.0,
        clock: Clock = utc_now,
        gate: JobGate | None = None,
        stale_after: float = STALE_TEMPORARY_AGE,
    ) -> None:
        self.spec = spec
        self._catalog = catalog
        self._tracker = tracker
        self._data_dir = data_dir
        self._pool = pool
        self._max_deliveries = max_deliveries
        self._retry_delay = retry_delay
        self._ack_when_durable = ack_when_durable
        self._durable_within = durable_within
        self._clock = clock
        self._gate = gate
        self._stale_after = stale_after
        self._swept: dict[Path, float] = {}  # folder -> when swept (monotonic)

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
        end = None if self._gate is None else await self._gate.ended(message.job_id)
        if end is not None:
            logger.info(
                "%s of image %s skipped: job %s has ended (%s)",
                message.stage,
                message.image_id,
                message.job_id,
                end,
                extra={"action": "skipped", "job_id": message.job_id},
            )
            await delivery.ack()
            return
        if delivery.delivery_count > 1:
            logger.info(
                "%s of image %s for job %s delivered again (delivery %d)",
                message.stage,
                message.image_id,
                message.job_id,
                delivery.delivery_count,
                extra={"action": "redelivered", "job_id": message.job_id},
            )
        try:
            failed = await self._process_when_reachable(message, _attempts(delivery, message))
        except NotFound as exc:
            await delivery.nack(requeue=False, reason=brief(str(exc)))
            return
        except Exception as exc:
            await self._retry_later(delivery, message, exc)
            return
        receipt = self._tracker.add(
            message.job_id, self.spec.stage, item_key=message.item_key, failed=failed
        )
        if self._ack_when_durable:
            await receipt.wait(self._durable_within)
        if receipt.refused is not None:  # refused for good: a redelivery would be refused again
            await delivery.nack(
                requeue=False, reason=brief(f"progress refused by the store: {receipt.refused}")
            )
            return
        await delivery.ack()

    async def _process_when_reachable(self, message: StageMessage, attempts: int) -> bool:
        """``_process``, tried again for as long as the store is unreachable: an
        outage holds the message (and, at ``prefetch``, stops the intake) instead
        of spending its deliveries."""
        delay = self._retry_delay
        while True:
            try:
                return await self._process(message, attempts)
            except StoreUnavailable as exc:
                logger.warning(
                    "store unreachable for item %s of job %s (%s); trying again in %.1f s",
                    message.image_id,
                    message.job_id,
                    brief(str(exc)),
                    delay,
                    extra={"action": "store_unavailable", "job_id": message.job_id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _retry_later(self, delivery: Delivery, message: StageMessage, exc: Exception) -> None:
        attempts = _attempts(delivery, message)
        again = attempts < self._max_deliveries
        logger.warning(
            "item %s of job %s not done (%s); %s",
            message.image_id,
            message.job_id,
            brief(str(exc)),
            "will retry" if again else "dead-lettered",
            extra={"action": "item_error", "job_id": message.job_id},
        )
        if not again:
            await delivery.nack(requeue=False, reason=brief(f"{type(exc).__name__}: {exc}"))
            return
        await asyncio.sleep(min(self._retry_delay * 2 ** (attempts - 1), 10.0))
        await delivery.retry(encode_message(msgspec.structs.replace(message, attempt=attempts + 1)))

    async def _process(self, message: StageMessage, attempts: int) -> bool:
        """Make and record the artifact; True when the item failed."""
        image = await self._catalog.get_image(message.image_id)
        collection = await self._catalog.get_collection(image.collection_id)
        try:
            destination = self.spec.output_path(self._data_dir, collection.id, image.id)
        except PathRefused as exc:  # the catalog's ids name no place to write
            await self._failed(message, image, None, str(exc))
            return True
        await self._sweep(destination.parent)
        try:
            rendition = await self._pool.run(
                render_inside,
                Path(collection.root),
                image.relpath,
                destination,
                self.spec.max_edge,
                self.spec.quality,
            )
        except WorkerCrashed:
            if attempts < self._max_deliveries:
                raise
            error = f"{image.relpath}: the image worker died {attempts} times on it"
            await self._failed(message, image, destination, error)
            return True
        except (ImageError, PathRefused) as exc:
            await self._failed(message, image, destination, str(exc))
            return True
        await self._record(image, ArtifactStatus.OK, path=str(destination), rendition=rendition)
        return False

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
        self, message: StageMessage, image: ImageRecord, destination: Path | None, error: str
    ) -> None:
        if destination is not None:
            await asyncio.to_thread(_discard, destination)
        await self._record(image, ArtifactStatus.FAILED, error=error)
        logger.info(
            "%s of %s failed: %s",
            self.spec.stage,
            image.relpath,
            brief(error),
            extra={"action": "item_failed", "job_id": message.job_id},
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


def _attempts(delivery: Delivery, message: StageMessage) -> int:
    """How many times this item has been tried, this time included: the
    message's own count (retries republish it) or the broker's, whichever
    is higher (a worker that died mid-item leaves only the broker's)."""
    return max(delivery.delivery_count, message.attempt)


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
