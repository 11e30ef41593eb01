"""The image worker pool: a process per core, rebuilt when a worker dies.

A worker killed mid-image (out of memory, a crash in a decoder) breaks a
``ProcessPoolExecutor`` for good: every later submission fails. The pool
replaces a broken executor once and reports the loss as
:class:`~jobtrack.errors.WorkerCrashed`, so the consumer can retry the items that were in it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from jobtrack.errors import WorkerCrashed

__all__ = ["RenderPool", "process_pool"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def process_pool(workers: int) -> Callable[[], Executor]:
    """A factory of process pools started with forkserver (safe with threads)."""
    context = multiprocessing.get_context("forkserver")
    return lambda: ProcessPoolExecutor(max_workers=workers, mp_context=context)


class RenderPool:
    """Runs CPU-bound functions on an executor, replacing it when it breaks."""

    def __init__(self, factory: Callable[[], Executor]) -> None:
        self._factory = factory
        self._executor = factory()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a worker; WorkerCrashed if the worker died."""
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise WorkerCrashed(f"an image worker process died: {exc}") from exc

    def _replace(self, broken: Executor) -> None:
        if self._executor is not broken:
            return  # another item already replaced it
        logger.warning("an image worker died; starting a new pool", extra={"action": "pool_broken"})
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._factory()

    def shutdown(self, *, grace: float = 10.0) -> None:
        """Stop the workers, dropping work not yet started. A worker still
        running after ``grace`` seconds is terminated: a pool that lost a
        worker can otherwise wait forever in its own shutdown."""
        executor = self._executor
        # The executor's own record of its processes: the only handle on them.
        workers = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                logger.warning("terminating image worker %s", worker.pid)
                worker.terminate()
                worker.join(1.0)
