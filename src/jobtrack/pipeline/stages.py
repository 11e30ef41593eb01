"""The collection-scan job: its type, its stages and their renditions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE",
    "DEFAULT_RENDITIONS",
    "JOB_TYPE",
    "SCAN",
    "STAGES",
    "THUMBNAIL",
    "RenditionSpec",
    "queue_for",
]

JOB_TYPE = "collection-scan"
SCAN = "scan"
THUMBNAIL = "thumbnail"
CACHE = "cache"
STAGES = (SCAN, THUMBNAIL, CACHE)


@dataclass(frozen=True, slots=True)
class RenditionSpec:
    """What one rendition stage makes: a JPEG at most ``max_edge`` px."""

    stage: str
    max_edge: int
    quality: int = 85

    @property
    def variant(self) -> str:
        """Names the settings, so that changing them makes artifacts stale."""
        return f"{self.max_edge}px-q{self.quality}"

    def output_path(self, data_dir: Path, collection_id: str, image_id: str) -> Path:
        """Where this stage's artifact of an image lives."""
        return data_dir / "renditions" / collection_id / self.stage / f"{image_id}.jpg"


DEFAULT_RENDITIONS = (RenditionSpec(THUMBNAIL, 300), RenditionSpec(CACHE, 1920))


def queue_for(stage: str) -> str:
    """The broker queue a stage's messages travel on."""
    return f"jobtrack.{stage}"
