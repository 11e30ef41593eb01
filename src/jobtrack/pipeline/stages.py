"""The collection-scan job: its type, its stages and their renditions.

A rendition's path is built from the collection's and the image's ids, read
from the catalog; whatever the database holds, an id decides a path inside
the renditions folder or none: each must be a plain name (letters, digits,
``-`` and ``_``, at most 128), and the final path must lie in the folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from jobtrack.errors import PathRefused

__all__ = [
    "CACHE",
    "DEFAULT_RENDITIONS",
    "JOB_TYPE",
    "SCAN",
    "STAGES",
    "THUMBNAIL",
    "RenditionSpec",
    "inside_renditions",
    "queue_for",
    "renditions_dir",
]

JOB_TYPE = "collection-scan"
SCAN = "scan"
THUMBNAIL = "thumbnail"
CACHE = "cache"
STAGES = (SCAN, THUMBNAIL, CACHE)

# Every id jobtrack makes is hex (new_id, image_id_for); this admits no
# separator, no dot, no NUL and nothing a filesystem would read otherwise.
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


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
        """Where this stage's artifact of an image lives.

        Raises:
            PathRefused: an id is not a plain name, or the path would not lie
                inside the renditions folder.
        """
        _check_id("collection", collection_id)
        _check_id("image", image_id)
        path = renditions_dir(data_dir) / collection_id / self.stage / f"{image_id}.jpg"
        if not inside_renditions(path, data_dir):
            raise PathRefused(f"{path} lies outside {renditions_dir(data_dir)}")
        return path


DEFAULT_RENDITIONS = (RenditionSpec(THUMBNAIL, 300), RenditionSpec(CACHE, 1920))


def renditions_dir(data_dir: Path) -> Path:
    """The folder every rendition lies in."""
    return data_dir / "renditions"


def inside_renditions(path: Path | str, data_dir: Path) -> bool:
    """Whether ``path``, with its ``..`` parts resolved, lies in the renditions
    folder (not the folder itself): the test before a path read from the
    catalog is deleted."""
    folder = os.path.abspath(renditions_dir(data_dir))  # abspath normalises too
    return os.path.abspath(path).startswith(folder.rstrip(os.sep) + os.sep)


def _check_id(kind: str, value: str) -> None:
    if not _PLAIN_ID.fullmatch(value):
        raise PathRefused(f"{kind} id {value[:40]!r} cannot name a rendition")


def queue_for(stage: str) -> str:
    """The broker queue a stage's messages travel on."""
    return f"jobtrack.{stage}"
