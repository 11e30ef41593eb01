"""Producing a job from plain synchronous code.

::

    app = jobtrack.App(settings, job_types=[imports])
    with app.start_job_sync("csv-import") as producer:
        producer.add("parse", ["a.csv", "b.csv"])
    print(producer.job.id)

:class:`SyncJobProducer` wraps a :class:`~jobtrack.jobs.producer.JobProducer`
and runs it on an event loop that is not the caller's:

- an app that is open (``async with app:``) on an event loop running in
  another thread: the producer runs on that loop, with the app's own parts
  (its in-process broker included, so in-process workers get the items);
- an app that is not open: a private event loop, in a thread of its own,
  runs the producer on a copy of the app (:meth:`App.with_settings`), opened
  and closed with the producer. A copy shares nothing held in memory, so
  this needs a store and a broker other processes reach (``memory://`` for
  either is refused: the job or its messages would vanish with the copy).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future, wait
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from jobtrack.errors import InvalidRequest
from jobtrack.jobs.producer import PRODUCER_BATCH, ItemSpec, JobProducer
from jobtrack.jobs.types import JobType
from jobtrack.model import Job

if TYPE_CHECKING:
    from jobtrack.runtime.app import App

__all__ = ["SyncJobProducer"]

T = TypeVar("T")

#: Seconds an interrupted call waits for its work on the loop to stop.
_STOP_WAIT = 10.0


class _PrivateLoop:
    """An event loop running in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="jobtrack-producer", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncJobProducer:
    """A :class:`~jobtrack.jobs.producer.JobProducer` for synchronous code:
    a context manager whose :meth:`add` and :meth:`seal` are plain methods
    that block until done. Entering creates the job; leaving without an
    error seals the producer's stages; an error cancels the job and
    propagates.

    :raises InvalidRequest: (on enter) called on the thread whose event loop
        the app is open on (use ``start_job`` there), or an unopened app
        whose store or broker is ``memory://``.
    """

    def __init__(
        self, app: App, job_type: str | JobType, *, attributes: dict[str, Any] | None = None
    ) -> None:
        self._app = app
        self._type_name = job_type
        self._attributes = attributes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._private: _PrivateLoop | None = None
        self._copy: App | None = None
        self._producer: JobProducer | None = None

    @property
    def job(self) -> Job:
        """The job (as created, or as sealing left it).

        :raises InvalidRequest: not entered yet.
        """
        if self._producer is None:
            raise InvalidRequest("the job is created on entering the producer: use `with`")
        return self._producer.job

    def add(self, stage: str, items: Iterable[ItemSpec]) -> int:
        """Add items to ``stage`` and wait until they are written and
        published; how many were new. The items are read a batch at a time
        (:data:`~jobtrack.jobs.producer.PRODUCER_BATCH`), so a generator
        of any length is never held whole. Raises as :meth:`JobProducer.add`."""
        producer = self._entered()
        new = 0
        iterator = iter(items)
        while chunk := list(islice(iterator, PRODUCER_BATCH)):
            new += self._run(producer.add(stage, chunk))
        return new

    def seal(self) -> Job:
        """Seal the producer's stages and wait; the job. Raises as
        :meth:`JobProducer.seal`."""
        return self._run(self._entered().seal())

    def __enter__(self) -> SyncJobProducer:
        """Create the job (on the app's loop or a private one)."""
        loop = self._app.running_loop
        if loop is not None:
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is loop:
                raise InvalidRequest(
                    "start_job_sync would block the event loop the app runs on: "
                    "use `async with app.start_job(...)` there"
                )
            self._loop = loop
            self._producer = self._run(self._open_shared())
            return self
        settings = self._app.settings
        checked = [("store", settings.store_url)]
        if not self._sends_itself():  # a sender's items need no broker of ours
            checked.append(("broker", settings.broker_url))
        for what, url in checked:
            if url.startswith("memory://"):
                raise InvalidRequest(
                    f"a {what} in memory lives in one event loop: open the app "
                    "(`async with app:`) and produce from another thread, or name a "
                    f"{what} other processes reach"
                )
        self._private = _PrivateLoop()
        self._loop = self._private.loop
        try:
            self._producer = self._run(self._open_copy())
        except BaseException:
            try:
                if self._copy is not None:
                    self._run(self._copy.aclose())
            finally:
                self._close_private()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Seal (no error) or cancel the job (an error, which propagates);
        close the private loop and app copy, if any."""
        try:
            if self._producer is not None:
                self._run(self._producer.__aexit__(exc_type, exc, traceback))
        finally:
            if self._private is not None:
                try:
                    if self._copy is not None:
                        self._run(self._copy.aclose())
                finally:
                    self._close_private()

    async def _open_shared(self) -> JobProducer:
        producer = self._app.start_job(self._type_name, attributes=self._attributes)
        await producer.start()
        return producer

    async def _open_copy(self) -> JobProducer:
        copy = self._app.with_settings(self._app.settings)
        self._copy = copy
        await copy.__aenter__()
        producer = copy.start_job(self._type_name, attributes=self._attributes)
        await producer.start()
        return producer

    def _sends_itself(self) -> bool:
        """Whether the job type sends its items through a sender of its own."""
        job_type = self._type_name
        if isinstance(job_type, str):
            try:
                job_type = self._app.get_type(job_type)
            except InvalidRequest:
                return False  # refused with its reason when the copy opens
        return job_type.sender is not None

    def _close_private(self) -> None:
        if self._private is not None:
            self._private.close()
            self._private = None

    def _entered(self) -> JobProducer:
        if self._producer is None:
            raise InvalidRequest("enter the producer first: `with app.start_job_sync(...)`")
        return self._producer

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted here (Ctrl-C): stop the work on the loop too, and
            # wait for it to stop, so nothing is written after the caller
            # moves on (to cancel the job, say).
            future.cancel()
            wait([future], timeout=_STOP_WAIT)
            raise
