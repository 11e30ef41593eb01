"""The collection-scan reconciler: true per-stage counts from the catalog.

Ground truth is what was really produced (``ImageState.finished``, the same
test the scanner uses to skip work): an artifact counts as completed only if
the catalog records it for the image's current version and settings and its
file is on disk; a recorded failure for the current version counts as failed;
anything else is still missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jobtrack.broker import Broker
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job, StageCounts
from jobtrack.monitor import Truth
from jobtrack.pipeline.catalog import ArtifactStatus, Catalog, ImageState
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, JOB_TYPE, SCAN, RenditionSpec, queue_for

__all__ = ["CollectionScanReconciler", "MissingItems"]

MissingItems = dict[str, list[str]]


class CollectionScanReconciler:
    """Counts a collection-scan job's stages from the catalog; with a broker,
    tells a backlog from a loss and publishes missing items again (the
    monitor's :class:`~jobtrack.monitor.Reconciler`)."""

    job_type = JOB_TYPE

    def __init__(
        self,
        *,
        catalog: Catalog,
        renditions: Sequence[RenditionSpec] = DEFAULT_RENDITIONS,
        broker: Broker | None = None,
    ) -> None:
        self._catalog = catalog
        self._renditions = tuple(renditions)
        self._broker = broker

    async def count(self, job: Job) -> dict[str, StageCounts]:
        """The true counts of each stage of ``job``."""
        counts, _ = await self.inspect(job)
        return counts

    async def inspect(self, job: Job) -> tuple[dict[str, StageCounts], MissingItems]:
        """The true counts, and per stage the image ids still missing."""
        truth = await self.truth(job)
        return dict(truth.counts), {stage: list(ids) for stage, ids in truth.missing.items()}

    async def truth(self, job: Job) -> Truth:
        """The true counts, the items they hold and the items missing, per stage."""
        collection_id = job.attributes["collection"]["id"]
        states = await self._catalog.images_of_job(collection_id, job.id)
        final = job.stages[SCAN].total_final
        seen = len(states)
        counts = {SCAN: StageCounts(seen, seen, 0, total_final=final)}
        done: dict[str, list[str]] = {}
        missing: MissingItems = {}
        for spec in self._renditions:
            completed, failed, absent = _tally(states, spec)
            counts[spec.stage] = StageCounts(seen, len(completed), len(failed), total_final=final)
            done[spec.stage] = completed + failed
            missing[spec.stage] = absent
        return Truth(counts, done, missing)

    async def backlog(self) -> dict[str, int]:
        """Per rendition stage, the messages its queue holds or has in flight."""
        if self._broker is None:
            return {}
        return {
            spec.stage: await self._broker.in_flight(queue_for(spec.stage))
            for spec in self._renditions
        }

    @property
    def can_redrive(self) -> bool:
        """Whether there is a broker to publish missing items to."""
        return self._broker is not None

    async def redrive(self, job: Job, missing: Mapping[str, Sequence[str]]) -> int:
        """Publish a message for every missing item; how many."""
        if self._broker is None:
            return 0
        published = 0
        for stage, image_ids in missing.items():
            bodies = [
                encode_item(ItemMessage(job.id, JOB_TYPE, stage, image)) for image in image_ids
            ]
            await self._broker.publish_many(queue_for(stage), bodies)
            published += len(bodies)
        return published


def _tally(states: list[ImageState], spec: RenditionSpec) -> tuple[list[str], list[str], list[str]]:
    completed, failed, absent = [], [], []
    for state in states:
        artifact = state.finished(spec.stage, spec.variant)
        if artifact is None:
            absent.append(state.image.id)
        elif artifact.status is ArtifactStatus.FAILED:
            failed.append(state.image.id)
        else:
            completed.append(state.image.id)
    return completed, failed, absent
