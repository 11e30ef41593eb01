"""``POST /api/scans``: a scan of a folder under one of the configured roots,
run in the background of the server (on the in-process broker the work
happens here; on a shared broker the workers do it and this follows)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from jobtrack.broker import Broker
from jobtrack.errors import NotFound, PathRefused, ScanNotStarted
from jobtrack.model import Job
from jobtrack.pipeline.walk import ResolvedRoot
from jobtrack.runtime import EmbeddedRuntime, Settings

__all__ = ["MAX_SCANS", "ScanLauncher", "confine"]

#: Scans one server runs at once (each may have a process pool of its own).
MAX_SCANS = 4


logger = logging.getLogger(__name__)


def confine(path: str, roots: tuple[Path, ...]) -> ResolvedRoot:
    """The folder ``path`` names, if it lies under one of ``roots`` once every
    symlink and ``..`` is resolved; a relative path is taken from the first
    root. The scan is given this resolved folder, never ``path`` again, so
    what is scanned is what was checked.

    :raises PathRefused: no roots, or the folder lies outside them.
    :raises NotFound: no folder at ``path``.
    """
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
    return ResolvedRoot(resolved)


@dataclass(eq=False)
class _Scan:
    """A scan this server runs: its task, and the job as last seen."""

    task: asyncio.Task[None]
    first: asyncio.Future[Job]
    latest: Job | None = None


class ScanLauncher:
    """Starts scans and keeps them running until the server stops; a folder
    already being scanned here is not scanned twice, and takes one slot. A
    scan whose job has ended but whose task is still closing down (its pool,
    its broker) keeps its slot until it is done, and is stopped and awaited
    by :meth:`aclose` like the others."""

    def __init__(
        self, settings: Settings, roots: tuple[Path, ...], *, broker: Broker | None = None
    ) -> None:
        self._settings = settings
        self.roots = roots
        self.broker = broker
        """The in-process broker the scans run their work on (None: one of
        their own each); the server's, so that it shows their queues."""
        self._scans: dict[Path, _Scan] = {}
        self._closing: set[_Scan] = set()  # job ended, task not yet done

    @property
    def running(self) -> int:
        """Scans whose task runs now, closing ones included (at most
        :data:`MAX_SCANS`)."""
        return len(self._scans) + len(self._closing)

    async def start(self, path: str, *, wait: float = 30.0) -> Job:
        """Start a scan of ``path`` (or follow the collection's running job);
        returns the job as soon as it exists.

        :raises PathRefused: ``path`` lies outside the roots.
        :raises NotFound: no folder at ``path``.
        :raises ScanNotStarted: every slot is taken, or the job did not
            appear within ``wait`` seconds.
        """
        folder = confine(path, self.roots)
        running = self._scans.get(folder.path)
        if running is not None and running.latest is not None and running.latest.status.terminal:
            # Its job has ended: the task is only closing down. Set aside, so
            # that a new scan of the folder may start beside it.
            del self._scans[folder.path]
            self._closing.add(running)
            running = None
        if running is None:
            if self.running >= MAX_SCANS:
                raise ScanNotStarted(f"{MAX_SCANS} scans are running: try again when one has ended")
            running = self._launch(folder)
        if running.latest is not None:
            return running.latest
        try:
            return await asyncio.wait_for(asyncio.shield(running.first), wait)
        except TimeoutError as exc:
            raise ScanNotStarted(f"the scan of {path} did not start within {wait:g} s") from exc

    def _launch(self, folder: ResolvedRoot) -> _Scan:
        first: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        first.add_done_callback(_retrieve)  # a failure is logged by run()

        def seen(job: Job) -> None:
            scan.latest = job
            if not first.done():
                first.set_result(job)

        async def run() -> None:
            try:
                runtime = (
                    EmbeddedRuntime(self._settings)
                    if self.broker is None
                    else EmbeddedRuntime(self._settings, broker=self.broker)
                )
                async with runtime:
                    outcome = await runtime.scan(folder, on_progress=seen)
                seen(outcome.job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("scan of %s failed", folder, extra={"action": "scan_error"})
                if not first.done():
                    first.set_exception(exc)

        scan = _Scan(asyncio.create_task(run(), name=f"scan {folder}"), first)
        self._scans[folder.path] = scan

        def ended(_: asyncio.Task[None]) -> None:
            self._closing.discard(scan)
            if self._scans.get(folder.path) is scan:
                del self._scans[folder.path]

        scan.task.add_done_callback(ended)
        return scan

    async def aclose(self) -> None:
        """Stop the scans still running, closing ones included (their jobs
        are cancelled as interrupted), and wait for their tasks to end."""
        stopping = [*self._scans.values(), *self._closing]
        for scan in stopping:
            scan.task.cancel()
        for scan in stopping:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await scan.task
        # Done: no slot is held any more, before their done callbacks run.
        self._closing.difference_update(stopping)
        for folder in [f for f, scan in self._scans.items() if scan in stopping]:
            del self._scans[folder]


def _retrieve(future: asyncio.Future[Job]) -> None:
    if not future.cancelled():
        future.exception()
