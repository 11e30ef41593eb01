"""Walking a collection's folder safely.

Everything is decided on resolved paths: an entry whose real path lies
outside the root is refused, whatever its name says (symlinks, ``..``); a
symlink that stays inside the root is an alias and skipped, since its target
is walked under its own name; and a folder already visited is not entered
again, so loops end.
Containment is ``Path.is_relative_to`` on resolved paths, never a string
prefix (``/photos-old`` is not inside ``/photos``).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jobtrack.errors import PathRefused
from jobtrack.pipeline.catalog import ScannedFile
from jobtrack.pipeline.imaging import IMAGE_SUFFIXES

__all__ = [
    "Refused",
    "ResolvedRoot",
    "Skipped",
    "WalkEntry",
    "open_inside",
    "resolve_inside",
    "resolve_root",
    "walk_images",
]

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


@dataclass(frozen=True, slots=True)
class ResolvedRoot:
    """A collection's folder resolved once, as it was checked: its real path
    (every symlink and ``..`` gone), which is used as it is and never
    resolved again, since a symlink swapped in since the check would lead
    elsewhere. Make one only from a path just resolved (``resolve_root``,
    or the API's ``confine``)."""

    path: Path

    def check_unchanged(self) -> None:
        """PathRefused if the folder is no longer at its real path (a part of
        it was swapped for a symlink since it was resolved). The walk checks
        each entry against the root as well, so this is not the guard
        itself: it makes such a scan fail plainly, rather than refuse
        every entry and retire the collection's images."""
        try:
            again = self.path.resolve(strict=True)
        except (OSError, RuntimeError):
            again = None
        if again != self.path or not self.path.is_dir():
            raise PathRefused(f"{self.path}: the folder changed since it was checked")

    def __str__(self) -> str:
        return str(self.path)


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


def open_inside(root: Path, relpath: str) -> BinaryIO:
    """Open ``root/relpath`` for reading, if the file opened lies inside ``root``.

    The check is made on the open descriptor, not on the path, so a folder
    swapped for a symlink between the walk and the open cannot lead outside
    the root. Only regular files are opened (never a FIFO or a device).
    """
    try:
        fd = os.open(root / relpath, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PathRefused(f"{relpath}: cannot be opened ({exc.strerror})") from exc
    try:
        _check_descriptor(fd, root, relpath)
    except BaseException:
        os.close(fd)
        raise
    raw = io.FileIO(fd, "rb", closefd=True)
    raw.name = str(root / relpath)  # errors then name the file, not a descriptor
    return io.BufferedReader(raw)


def _check_descriptor(fd: int, root: Path, relpath: str) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise PathRefused(f"{relpath}: not a regular file")
    proc = Path(f"/proc/self/fd/{fd}")
    if proc.exists():
        real = Path(os.readlink(proc))
        inside = real.is_relative_to(root)
    else:  # no /proc: compare the descriptor with the resolved path
        opened, resolved = os.fstat(fd), os.stat(resolve_inside(root, relpath))
        inside = (opened.st_dev, opened.st_ino) == (resolved.st_dev, resolved.st_ino)
    if not inside:
        raise PathRefused(f"{relpath}: resolves outside the collection root")


def walk_images(
    root: Path, *, exclude: Iterable[Path] = (), stop: threading.Event | None = None
) -> Iterator[WalkEntry]:
    """Every entry under ``root`` (a resolved folder), in a stable order.

    Hidden files and folders (names starting with a dot) are skipped, and so
    is every folder in ``exclude`` (resolved): jobtrack's own data folder
    must never be scanned as part of a collection. Once ``stop`` is set the
    walk ends at the next entry (it runs in a thread: the flag is how a
    cancelled job stops it).
    """
    walk = _Walk(root, {p.resolve() for p in exclude})
    pending: list[tuple[Path, str]] = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        subfolders: list[tuple[Path, str]] = []
        for entry in _sorted_entries(folder):
            if stop is not None and stop.is_set():
                return
            found = walk.classify(entry, f"{prefix}{entry.name}")
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


class _Walk:
    """What one walk has seen: folders (so loops end) and files (so a file
    reached twice, through a symlink, counts once)."""

    def __init__(self, root: Path, excluded: set[Path]) -> None:
        self.root = root
        self.excluded = excluded
        self.visited_dirs = {root}
        self.seen_files: set[Path] = set()

    def classify(
        self, entry: os.DirEntry[str], relpath: str
    ) -> WalkEntry | tuple[Path, str] | None:
        """A walk entry, a folder to descend into, or None for nothing to report."""
        if not _is_utf8(relpath):
            return Refused(relpath.encode("utf-8", "replace").decode(), "name is not valid UTF-8")
        try:
            real = Path(entry.path).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            return Refused(relpath, f"cannot be resolved ({type(exc).__name__})")
        if not real.is_relative_to(self.root):
            return Refused(relpath, "resolves outside the collection root")
        if entry.name.startswith(".") or real in self.excluded or entry.is_symlink():
            # A symlink that stays inside the root is an alias: what it
            # points to is walked under its own name.
            return Skipped(relpath)
        try:
            info = real.stat()
        except OSError as exc:  # gone or unreadable since it was listed
            return Refused(relpath, f"cannot be read ({exc.strerror})")
        if stat.S_ISDIR(info.st_mode):
            return self._folder(real, relpath)
        if not stat.S_ISREG(info.st_mode) or real.suffix.lower() not in IMAGE_SUFFIXES:
            return Skipped(relpath)
        if real in self.seen_files:
            return None
        self.seen_files.add(real)
        return ScannedFile(relpath=relpath, size=info.st_size, mtime_ns=info.st_mtime_ns)

    def _folder(self, real: Path, relpath: str) -> tuple[Path, str] | None:
        if real in self.visited_dirs:
            return None  # a loop, or a second way into a folder already walked
        self.visited_dirs.add(real)
        return real, f"{relpath}/"


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
