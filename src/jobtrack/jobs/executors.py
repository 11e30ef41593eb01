"""Where handlers run: on the event loop (``async``), in a bounded thread
pool (``thread``), or in worker processes (``process``).

Whatever the executor, running a handler gives an :class:`Attempt`: the
work it added for later stages, or its error, already judged (retry it or
fail the item) by the job type's rules. A handler in a process is called
by name (a module-level function) with a copy of the item; what it added
comes back with the answer, its error as text (an exception need not
survive pickling). A worker process that dies mid-item is a retryable
error; the pool is replaced (:class:`~jobtrack.pipeline.pool.RenderPool`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from jobtrack.errors import WorkerCrashed
from jobtrack.jobs.types import Handler, Item, JobType, Retry, StageHandler
from jobtrack.pipeline.pool import RenderPool, process_pool
from jobtrack.store.ledger import LedgerItem

__all__ = ["Attempt", "HandlerRunner"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one try of an item went: ``error`` None when the handler returned
    (``added``: the items it added, by stage), else ``"Type: message"``,
    with whether the type retries it and after how many seconds."""

    added: list[tuple[str, LedgerItem]] = field(default_factory=list)
    error: str | None = None
    retryable: bool = False
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class _Answer:
    """A worker process's answer: the items added, or the error judged there."""

    added: list[tuple[str, LedgerItem]]
    error: str | None = None
    retryable: bool = False
    after: float | None = None


class HandlerRunner:
    """Runs handlers with their executor: ``concurrency`` threads and as many
    worker processes at most, each pool started on first use.

    :param process_factory: makes the process pool (default: forkserver
        processes, ``concurrency`` of them).
    """

    def __init__(
        self,
        concurrency: int = 1,
        *,
        process_factory: Callable[[], Executor] | None = None,
    ) -> None:
        self.concurrency = concurrency
        self._process_factory = process_factory or process_pool(concurrency)
        self._threads: ThreadPoolExecutor | None = None
        self._processes: RenderPool | None = None

    async def run(self, job_type: JobType, handler: StageHandler, item: Item) -> Attempt:
        """Run ``handler`` on ``item``; never raises an ``Exception`` (a
        cancellation goes through)."""
        try:
            if handler.executor == "process":
                return await self._in_process(job_type, handler.function, item)
            if handler.executor == "async":
                await cast(Awaitable[None], handler.function(item))
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self._thread_pool(), handler.function, item
                )
        except WorkerCrashed as exc:
            return Attempt(
                error=f"the worker process died running the item ({exc})",
                retryable=True,
                delay=job_type.delay(item.attempt),
            )
        except Exception as exc:  # the handler's error: the item's outcome
            return _judged(job_type, item, exc)
        return Attempt(added=list(item.added))

    async def _in_process(self, job_type: JobType, function: Handler, item: Item) -> Attempt:
        if self._processes is None:
            self._processes = RenderPool(self._process_factory)
        answer = await self._processes.run(_call_in_process, function, item, job_type.retry_on)
        if answer.error is None:
            return Attempt(added=answer.added)
        delay = answer.after if answer.after is not None else job_type.delay(item.attempt)
        return Attempt(error=answer.error, retryable=answer.retryable, delay=delay)

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="jobtrack-handler"
            )
        return self._threads

    def shutdown(self) -> None:
        """Stop the pools (work not started is dropped; a worker process
        still running after a grace period is terminated)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown()


def describe(error: BaseException) -> str:
    """An error as it is recorded: ``"Type: message"``."""
    return f"{type(error).__name__}: {error}"


def _judged(job_type: JobType, item: Item, error: Exception) -> Attempt:
    return Attempt(
        error=describe(error),
        retryable=job_type.retryable(error),
        delay=job_type.delay(item.attempt, error),
    )


def _call_in_process(
    function: Handler, item: Item, retry_on: tuple[type[BaseException], ...]
) -> _Answer:
    """Runs in a worker process: the handler on the item, its outcome as data."""
    try:
        function(item)
    except Exception as exc:
        after = exc.after if isinstance(exc, Retry) else None
        retryable = isinstance(exc, (Retry, *retry_on))
        return _Answer([], describe(exc), retryable, after)
    return _Answer(list(item.added))
