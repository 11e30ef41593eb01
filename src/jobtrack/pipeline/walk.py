"""Walking a collection's folder safely.

Everything is decided on resolved paths: an entry whose real path lies
outside the root is refused, whatever its name says (symlinks, ``..``), and
a folder already visited is not entered again, so symlink loops end.
Containment is ``Path.is_relative_to`` on resolved paths, never a string
prefix (``/photos-old`` is not inside ``/photos``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobtrack.errors import PathRefused
from jobtrack.pipeline.catalog import ScannedFile
from jobtrack.pipeline.imaging import IMAGE_SUFFIXES

__all__ = ["Refused", "Skipped", "WalkEntry", "resolve_inside", "resolve_root", "walk_images"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refused:
    """An entry left out because its real path escapes the root, or loops."""

    relpath: str
    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not an image."""

    relpath: str


WalkEntry = ScannedFile | Refused | Skipped


def resolve_root(path: str | Path) -> Path:
    """The real path of a collection's root; PathRefused unless it is a folder."""
    candidate = Path(path).expanduser()
    try:
        root = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise PathRefused(f"{path}: no such folder") from None
    except (OSError, RuntimeError) as exc:
        raise PathRefused(f"{path}: cannot be resolved ({exc})") from exc
    if not root.is_dir():
        raise PathRefused(f"{path}: not a folder")
    return root


def resolve_inside(root: Path, relpath: str) -> Path:
    """The real path of ``root/relpath``; PathRefused if it escapes ``root``."""
    try:
        real = (root / relpath).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PathRefused(f"{relpath}: cannot be resolved ({exc})") from exc
    if not real.is_relative_to(root):
        raise PathRefused(f"{relpath}: resolves outside the collection root")
    return real


def walk_images(root: Path) -> Iterator[WalkEntry]:
    """Every entry under ``root`` (a resolved folder), in a stable order."""
    visited_dirs = {root}
    seen_files: set[Path] = set()
    pending: list[tuple[Path, str]] = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        subfolders: list[tuple[Path, str]] = []
        for entry in _sorted_entries(folder):
            relpath = f"{prefix}{entry.name}"
            found = _classify(root, entry, relpath, visited_dirs, seen_files)
            if isinstance(found, tuple):
                subfolders.append(found)
            elif found is not None:
                yield found
        pending.extend(reversed(subfolders))


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        logger.warning("cannot list %s: %s", folder, exc, extra={"action": "scan_unreadable"})
        return []


def _classify(
    root: Path,
    entry: os.DirEntry[str],
    relpath: str,
    visited_dirs: set[Path],
    seen_files: set[Path],
) -> WalkEntry | tuple[Path, str] | None:
    try:
        real = Path(entry.path).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        return Refused(relpath, f"cannot be resolved ({type(exc).__name__})")
    if not real.is_relative_to(root):
        return Refused(relpath, "resolves outside the collection root")
    if real.is_dir():
        if real in visited_dirs:
            return None  # a loop or a second way into a folder already walked
        visited_dirs.add(real)
        return real, f"{relpath}/"
    if not real.is_file():
        return Skipped(relpath)
    if real.suffix.lower() not in IMAGE_SUFFIXES or entry.name.startswith("."):
        return Skipped(relpath)
    if real in seen_files:
        return None
    seen_files.add(real)
    stat = real.stat()
    return ScannedFile(relpath=relpath, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
