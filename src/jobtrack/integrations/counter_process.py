"""A task counter in a process of its own, for a worker that forks a child
per task.

RQ's worker forks a work horse for every job. The fork copies the page
tables of everything the worker's process maps, and each page the
worker's threads write while a horse lives costs a copy-on-write fault.
A :class:`~jobtrack.integrations.counter.TaskCounter` in the worker brings
PostgreSQL's client library, an event loop and a thread into it, and each
fork costs more for them (see the RQ page of the documentation for the
figures). A :class:`CounterProcess` keeps them out: at the first hand-over
it forks a *writer*, a process of its own that runs the ``TaskCounter``,
and hands it the task ends over a pipe, a batch at a time (a writer that
dies is replaced at the next hand-over). The worker's process then holds
a list of ends and one end of a pipe, runs no thread of jobtrack's, and
forks as cheaply as a worker that counts nothing. A child forked from it
later (a work horse, RQ's scheduler) closes its copy of the pipe at once.

The writer ignores SIGINT and SIGTERM: a terminal's Ctrl-C or a service
manager signals the whole process group, and the worker, which shuts down
warmly, closes the writer once its last ends are handed over. It stops
when told to (:meth:`CounterProcess.close`) or when the pipe closes or
breaks, and closes its counter before it ends, which writes what it holds
(unless the store stays away past the counter's flush timeout: then what
it holds is lost). A worker killed with SIGKILL loses only the ends it had
not handed over yet. The monitor sends the tasks of lost ends again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import weakref
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from jobtrack.integrations.counter import (
    MAX_ERROR,
    TaskCounter,
    register_at_exit,
    require_shared_store,
)
from jobtrack.integrations.tasks import TaskRef

if TYPE_CHECKING:
    from jobtrack.runtime.app import App

__all__ = ["CounterProcess", "End", "EndCounter", "tell"]

logger = logging.getLogger(__name__)

#: Seconds a reply from the writer may come after the time it was given.
_REPLY_MARGIN = 5.0

#: A task's end as a worker holds it and as it crosses the pipe:
#: ``("done" | "failed" | "retrying", ref, error, attempts)``.
End = tuple[str, TaskRef, str, int]


class EndCounter(Protocol):
    """What task ends are told to: a
    :class:`~jobtrack.integrations.TaskCounter`, a :class:`CounterProcess`,
    or what holds the ends for one."""

    def done(self, ref: TaskRef) -> None:
        """Count ``ref``'s item done."""

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        """Count ``ref``'s item failed with ``error`` after ``attempts`` tries."""

    def retrying(self, ref: TaskRef) -> None:
        """Say that ``ref``'s task will be tried again."""


def tell(counter: EndCounter, ends: list[End]) -> None:
    """Tell ``counter`` each of ``ends``, in order. Raises what ``counter``
    raises."""
    for what, ref, error, attempts in ends:
        if what == "done":
            counter.done(ref)
        elif what == "failed":
            counter.failed(ref, error, attempts=attempts)
        else:
            counter.retrying(ref)


# What the pipe's errors are when the other side is gone.
_PIPE_GONE = (OSError, EOFError, ValueError)
# The signals that stop a worker, held back while a message is written to
# the pipe (a handler that raises mid-write would cut a frame in two) and
# while the writer is forked (it ignores them once it runs).
_STOPPING = {signal.SIGINT, signal.SIGTERM}

#: Every counter process of this process, to let go of their pipes in a
#: child forked from it.
_COUNTERS: weakref.WeakSet[CounterProcess] = weakref.WeakSet()


def _let_go_after_fork() -> None:
    # A child (a work horse, RQ's scheduler) holding a copy of the pipe
    # would keep the writer from seeing its worker die.
    for counter in list(_COUNTERS):
        counter._let_go()


os.register_at_fork(after_in_child=_let_go_after_fork)


@contextlib.contextmanager
def _stopping_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back in this thread for the block; they are
    delivered when it ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class CounterProcess:
    """Counts the ends of a framework's tasks into jobtrack from a worker
    process, as :class:`~jobtrack.integrations.counter.TaskCounter` does,
    with the counter in a child process forked on first use (see the
    module). :meth:`done`, :meth:`failed` and :meth:`retrying` return at
    once and never raise. It is made for one thread of a process (a
    worker's main thread); the writer's heartbeat is the worker's, under
    the writer's process id.

    A process forked from the one that started the writer (a work horse)
    does not share it: used there, it starts a writer of its own.

    :param app: the jobtrack app whose store the counts go to (the writer
        opens a copy of it).
    :param flush_timeout: seconds :meth:`flush` and :meth:`close` wait at
        most by default.
    :raises InvalidRequest: the app's store is ``memory://``.
    """

    def __init__(self, app: App, *, flush_timeout: float = 30.0) -> None:
        require_shared_store(app)
        self._app = app
        self.flush_timeout = flush_timeout
        self._connection: Connection | None = None
        self._writer = 0  # the writer's pid
        self._owner = 0  # the pid of the process that forked it
        self._asked = 0  # the number of the last question put to the writer
        self._ends: list[End] = []
        self._gathering = 0
        self.reported = 0
        """Task ends reported in this process (done and failed)."""
        self.dropped = 0
        """Task ends this process could not hand to its writer (it could
        not start, or it died): the monitor sends their tasks again."""
        self._dropped_seen = 0  # `dropped` at the last flush
        register_at_exit(self.close)
        _COUNTERS.add(self)

    def _let_go(self) -> None:
        """In a forked child: close this process's copy of the parent's
        pipe, without a word to its writer."""
        connection, self._connection = self._connection, None
        self._ends = []
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()

    @property
    def pid(self) -> int | None:
        """The writer's process id; None before the first end is handed
        over, after :meth:`close`, or in a forked child."""
        if self._connection is None or self._owner != os.getpid():
            return None
        return self._writer

    def done(self, ref: TaskRef) -> None:
        """Count ``ref``'s item done (once, by its key)."""
        self.reported += 1
        self._report(("done", ref, "", 1))

    def failed(self, ref: TaskRef, error: str, *, attempts: int = 1) -> None:
        """Count ``ref``'s item failed with ``error`` after ``attempts``
        tries (the error recorded in the ledger first)."""
        self.reported += 1
        self._report(("failed", ref, error[:MAX_ERROR], attempts))

    def retrying(self, ref: TaskRef) -> None:
        """Say that ``ref``'s task will be tried again: its job is touched
        (see :meth:`TaskCounter.retrying`)."""
        self._report(("retrying", ref, "", 0))

    def _report(self, end: End) -> None:
        self._ends.append(end)
        if not self._gathering:
            self._send()

    @contextlib.contextmanager
    def gathering(self) -> Iterator[None]:
        """A block whose task ends are handed to the writer together, in one
        message, when it is left."""
        self._gathering += 1
        try:
            yield
        finally:
            self._gathering -= 1
            if not self._gathering:
                self._send()

    def _send(self) -> None:
        ends, self._ends = self._ends, []
        if not ends:
            return
        try:
            connection = self._started()
        except Exception as exc:  # the monitor makes up for what is dropped
            self._drop(len(ends), f"the counting process could not start: {exc}")
            return
        try:
            with _stopping_held():
                connection.send(("ends", ends))
        except _PIPE_GONE as exc:
            self._lost(exc)
            self._drop(len(ends), f"the counting process is gone: {exc!r}")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        logger.warning(
            "%d task ends not counted (%s); the monitor sends their tasks again",
            count,
            why,
            extra={"action": "task_count_dropped"},
        )

    def _started(self) -> Connection:
        """The pipe to the writer, forking it first if there is none in
        this process (or the one there was is gone)."""
        if self._connection is not None and self._owner == os.getpid():
            return self._connection
        ours, theirs = Pipe()
        with _stopping_held():
            pid = os.fork()
            if pid == 0:  # the writer
                ours.close()
                _serve(theirs, self._app, self.flush_timeout)
        theirs.close()
        self._connection, self._writer, self._owner = ours, pid, os.getpid()
        logger.debug("counting process %d started", pid)
        return ours

    def _lost(self, exc: BaseException) -> None:
        """Forget a writer that is gone (reaped if it has ended)."""
        logger.warning(
            "the counting process %d is gone (%r); a new one starts with the next ends",
            self._writer,
            exc,
            extra={"action": "task_counter_lost"},
        )
        self._forget(wait=0.0)

    def _forget(self, *, wait: float) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()
        _reap(self._writer, wait)

    def _ask(self, question: tuple[Any, ...], wait: float) -> bool | None:
        """Put ``question`` (after its number) to the writer and return its
        answer; None if none came within ``wait`` seconds (and the margin)
        or the writer is gone."""
        connection = self._connection
        if connection is None:
            return None
        self._asked += 1
        number = self._asked
        deadline = time.monotonic() + wait + _REPLY_MARGIN
        try:
            with _stopping_held():
                connection.send((question[0], number, *question[1:]))
            while connection.poll(max(deadline - time.monotonic(), 0.0)):
                answered, answer = connection.recv()
                if answered == number:  # an earlier question's late answer is let go
                    return bool(answer)
        except _PIPE_GONE as exc:
            self._lost(exc)
        return None

    def flush(self, timeout: float | None = None, *, keep_writing: bool = False) -> bool:
        """Hand over what is gathered and block until every task end
        handed over is durable in the store; False if that is not so within
        ``timeout`` seconds (default :attr:`flush_timeout`), if the writer
        is gone, or if ends were dropped since the last flush. What the
        writer could not write yet it keeps and writes when the store is
        back; ``keep_writing`` as in :meth:`TaskCounter.flush`. Raises
        nothing."""
        self._send()
        kept = self.dropped == self._dropped_seen  # nothing dropped since the last flush
        self._dropped_seen = self.dropped
        if self._connection is None or self._owner != os.getpid():
            return kept
        wait = self.flush_timeout if timeout is None else timeout
        return self._ask(("flush", wait, keep_writing), wait) is True and kept

    def close(self, timeout: float | None = None) -> None:
        """Hand over what is gathered, have the writer write it (for up to
        ``timeout`` seconds, default :attr:`flush_timeout`) and stop, and
        reap it. A writer that does not answer in time is left to end on
        its own, once it has written what it holds. Used again, the counter
        starts a new writer. Called at the process's exit too. Raises
        nothing."""
        self._send()
        if self._connection is None or self._owner != os.getpid():
            return
        wait = self.flush_timeout if timeout is None else timeout
        # The writer's counter flushes, then stops its thread: each may take `wait`.
        answered = self._ask(("close", wait), 2 * wait)
        if not answered:
            logger.warning(
                "the counting process %d did not say it closed within %g s; "
                "it ends once it has written what it holds or given up",
                self._writer,
                2 * wait + _REPLY_MARGIN,
                extra={"action": "task_counter_not_closed"},
            )
        self._forget(wait=_REPLY_MARGIN if answered else 0.0)


def _reap(pid: int, wait: float) -> None:
    """Collect ``pid``'s exit status, waiting for it up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already, or not ours
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def _serve(connection: Connection, app: App, flush_timeout: float) -> NoReturn:
    """The writer: feed what comes over ``connection`` to a
    :class:`TaskCounter` until told to stop or the pipe closes, close the
    counter, and end the process (never returning into the worker's code)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)  # held since the fork
        counter = TaskCounter(app, flush_timeout=flush_timeout)
        closing: tuple[int, float] | None = None
        try:
            closing = _answer(connection, counter)
        finally:
            counter.close(closing[1] if closing is not None else None)
        if closing is not None:
            with contextlib.suppress(*_PIPE_GONE):
                connection.send((closing[0], True))
    except BaseException:  # an exit code says it; the worker logs the writer as gone
        logger.exception("the counting process failed", extra={"action": "task_counter_failed"})
        code = 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(code)


def _answer(connection: Connection, counter: TaskCounter) -> tuple[int, float] | None:
    """Answer the worker until it says close (its question's number and
    timeout) or goes away (None): its pipe closed, reset, or cut mid-frame."""
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the worker is gone: what it handed over is written
            return None
        except Exception as exc:  # the same, less cleanly
            logger.warning(
                "the counting process's pipe broke (%r); it writes what it holds and ends",
                exc,
                extra={"action": "task_counter_pipe_broken"},
            )
            return None
        kind = message[0]
        if kind == "ends":
            with counter.gathering():
                tell(counter, message[1])
        elif kind == "flush":
            _, number, timeout, keep_writing = message
            flushed = counter.flush(timeout, keep_writing=keep_writing)
            try:
                connection.send((number, flushed))
            except _PIPE_GONE:
                return None
        else:  # "close"
            _, number, timeout = message
            return (number, timeout)
