"""``POST /api/scans``: a scan of a folder under one of the configured roots,
run in the background of the server (on the in-process broker the work
happens here; on a shared broker the workers do it and this follows)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from jobtrack.errors import JobtrackError, NotFound, PathRefused
from jobtrack.model import Job
from jobtrack.runtime import EmbeddedRuntime, Settings

__all__ = ["MAX_SCANS", "ScanLauncher", "ScanNotStarted", "confine"]

#: Scans one server runs at once (each may have a process pool of its own).
MAX_SCANS = 4


class ScanNotStarted(JobtrackError):
    """The server could not start the scan now (too many running, or it did
    not start in time): try again later."""


logger = logging.getLogger(__name__)


def confine(path: str, roots: tuple[Path, ...]) -> Path:
    """The folder ``path`` names, if it lies under one of ``roots`` once every
    symlink and ``..`` is resolved; a relative path is taken from the first
    root."""
    if not roots:
        raise PathRefused("this server scans nothing: start it with --root FOLDER")
    if not path or "\x00" in path:
        raise NotFound(f"no folder at {path!r}")
    given = Path(path)
    candidate = given if given.is_absolute() else roots[0] / given
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise NotFound(f"no folder at {path}") from exc
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise PathRefused(f"{path} is outside the folders this server may scan")
    if not resolved.is_dir():
        raise NotFound(f"no folder at {path}: it is a file")
    return resolved


class ScanLauncher:
    """Starts scans and keeps them running until the server stops."""

    def __init__(self, settings: Settings, roots: tuple[Path, ...]) -> None:
        self._settings = settings
        self.roots = roots
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Scans running now (at most :data:`MAX_SCANS`)."""
        return len(self._tasks)

    async def start(self, path: str, *, wait: float = 30.0) -> Job:
        """Start a scan of ``path`` (or follow the collection's running job);
        returns the job as soon as it exists."""
        folder = confine(path, self.roots)
        if len(self._tasks) >= MAX_SCANS:
            raise ScanNotStarted(f"{MAX_SCANS} scans are running: try again when one has ended")
        loop = asyncio.get_running_loop()
        first: asyncio.Future[Job] = loop.create_future()

        def seen(job: Job) -> None:
            if not first.done():
                first.set_result(job)

        async def run() -> None:
            try:
                async with EmbeddedRuntime(self._settings) as runtime:
                    outcome = await runtime.scan(folder, on_progress=seen)
                seen(outcome.job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("scan of %s failed", folder, extra={"action": "scan_error"})
                if not first.done():
                    first.set_exception(exc)

        task = asyncio.create_task(run(), name=f"scan {folder}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(first), wait)
        except TimeoutError as exc:
            first.add_done_callback(_retrieve)  # a later failure is logged by run()
            raise ScanNotStarted(f"the scan of {path} did not start within {wait:g} s") from exc

    async def aclose(self) -> None:
        """Stop the scans still running (their jobs are cancelled as interrupted)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _retrieve(future: asyncio.Future[Job]) -> None:
    if not future.cancelled():
        future.exception()
