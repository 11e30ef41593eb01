"""The collection-scan reconciler: true per-stage counts from the catalog.

Ground truth is what was really produced (``ImageState.finished``, the same
test the scanner uses to skip work): an artifact counts as completed only if
the catalog records it for the image's current version and settings and its
file is on disk; a recorded failure for the current version counts as failed;
anything else is still missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobtrack.model import Job, StageCounts
from jobtrack.pipeline.catalog import ArtifactStatus, Catalog, ImageState
from jobtrack.pipeline.stages import DEFAULT_RENDITIONS, JOB_TYPE, SCAN, RenditionSpec

__all__ = ["CollectionScanReconciler", "MissingItems"]

MissingItems = dict[str, list[str]]


class CollectionScanReconciler:
    """Counts a collection-scan job's stages from the catalog."""

    job_type = JOB_TYPE

    def __init__(
        self, *, catalog: Catalog, renditions: Sequence[RenditionSpec] = DEFAULT_RENDITIONS
    ) -> None:
        self._catalog = catalog
        self._renditions = tuple(renditions)

    async def count(self, job: Job) -> dict[str, StageCounts]:
        """The true counts of each stage of ``job``."""
        counts, _ = await self.inspect(job)
        return counts

    async def inspect(self, job: Job) -> tuple[dict[str, StageCounts], MissingItems]:
        """The true counts, and per stage the image ids still missing."""
        collection_id = job.attributes["collection"]["id"]
        states = await self._catalog.images_of_job(collection_id, job.id)
        final = job.stages[SCAN].total_final
        seen = len(states)
        counts = {SCAN: StageCounts(seen, seen, 0, total_final=final)}
        missing: MissingItems = {}
        for spec in self._renditions:
            completed, failed, absent = _tally(states, spec)
            counts[spec.stage] = StageCounts(seen, completed, failed, total_final=final)
            missing[spec.stage] = absent
        return counts, missing


def _tally(states: list[ImageState], spec: RenditionSpec) -> tuple[int, int, list[str]]:
    completed, failed, absent = 0, 0, []
    for state in states:
        artifact = state.finished(spec.stage, spec.variant)
        if artifact is None:
            absent.append(state.image.id)
        elif artifact.status is ArtifactStatus.FAILED:
            failed += 1
        else:
            completed += 1
    return completed, failed, absent
