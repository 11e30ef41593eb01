"""Job types, declared in ordinary Python: a name, stages in order, one
handler per stage.

::

    import jobtrack

    app = jobtrack.App()
    imports = app.job_type("csv-import", stages=["parse", "write"])

    @imports.handler("parse", feeds=["write"])
    def parse(item: jobtrack.Item) -> None:
        for number, row in enumerate(read_rows(item.payload["path"])):
            item.add("write", key=f"{item.key}:{number}", payload=row)

    @imports.handler("write")
    async def write(item: jobtrack.Item) -> None:
        await table.insert(item.payload)

A handler that returns has done its item; one that raises has failed it,
with the error recorded, unless the error is one the type retries
(``retry_on``): then the item is tried again, with backoff, and fails only
after ``max_attempts``. A stage some handler ``feeds`` is *discovered*:
its items are added by the handlers of earlier stages while they run, and
its total seals itself once every stage feeding it has completed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from jobtrack.errors import Conflict, InvalidRequest
from jobtrack.jobs.messages import item_bodies
from jobtrack.model import Job
from jobtrack.store.ledger import ItemFailure, LedgerItem
from jobtrack.store.overview import SearchField

if TYPE_CHECKING:
    from jobtrack.broker import Broker
    from jobtrack.monitor.base import Reconciler
    from jobtrack.runtime.app import App

__all__ = [
    "DetailsHook",
    "Executor",
    "FailuresHook",
    "Handler",
    "Item",
    "ItemSender",
    "JobType",
    "Retry",
    "RetryHook",
    "StageHandler",
    "TruthFactory",
    "failure_json",
    "item_failures_of",
    "ledger_failures",
    "search_fields",
]

#: Where a handler runs: on the event loop (``async``), in a thread, or in a
#: worker process (CPU-bound work; the handler must be importable by name).
Executor: TypeAlias = Literal["async", "thread", "process"]

#: A stage's handler: takes the item; returns nothing (or an awaitable of
#: nothing, for ``async def`` handlers).
Handler: TypeAlias = Callable[["Item"], "Awaitable[None] | None"]

#: Builds the monitor's view of a job type from the app's parts, for a type
#: whose truth is not its ledger (the collection scan's catalog, say).
TruthFactory: TypeAlias = Callable[[Any, "JobType"], "Reconciler"]

#: Reads a job's failed items, at most ``limit``, for a type whose failures
#: are kept elsewhere than the ledger (the collection scan's catalog, say).
FailuresHook: TypeAlias = Callable[["App", Job, int], Awaitable[list[ItemFailure]]]

#: Starts the work again for an ended job's failed items; returns the job
#: that does it (a new one, or the same).
RetryHook: TypeAlias = Callable[["App", Job], Awaitable[Job]]

#: Lines that say more about a job than its stages (where its output is).
DetailsHook: TypeAlias = Callable[["App", Job], Sequence[str]]


#: Failures read from the ledger a query at a time.
class ItemSender(Protocol):
    """Where a job type's items go when something other than jobtrack's own
    workers does them: a task framework (Celery, Dramatiq, arq, RQ). The
    producer sends each batch through it once the batch is in the ledger,
    and the monitor re-drives missing items through it, from the ledger.
    """

    async def send(self, job: Job, stage: str, items: Sequence[LedgerItem]) -> None:
        """Send ``items`` of ``job``'s ``stage`` to be done (each at least
        once: a redelivered or re-sent item counts once by its key).

        :raises JobtrackError: (a subclass) the items could not be sent.
        """
        ...

    async def backlog(self, stage: str) -> int | None:
        """Items of ``stage`` waiting or being done, as the framework's queue
        tells; None when it cannot be known."""
        ...


_FAILURES_PAGE = 500

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class Retry(Exception):
    """Raised by a handler to have its item tried again (after ``after``
    seconds, or the type's backoff), whatever the error; it still fails
    after the type's ``max_attempts``."""

    def __init__(self, reason: str = "retry requested", *, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


@dataclass(slots=True)
class Item:
    """One item, as a handler receives it: its ``key`` and JSON ``payload``,
    the ``job`` it belongs to (as read shortly before), its ``stage``, and
    which ``attempt`` this is (1 the first time), and the ``app`` whose
    worker runs it (its settings, store and catalog, for a handler whose
    work needs them; None in a worker process, where the handler gets a
    copy of the item and the app's parts do not follow).

    :meth:`add` records discovered work for a later stage; what is added is
    written to the job's ledger, and published, before this item counts.
    """

    key: str
    payload: Any
    job: Job
    stage: str
    attempt: int = 1
    added: list[tuple[str, LedgerItem]] = field(default_factory=list)
    feeds: frozenset[str] = frozenset()
    app: App | None = field(default=None, repr=False, compare=False)

    def add(self, stage: str, key: str, payload: Any = None) -> None:
        """Add an item to ``stage``, a later stage this handler feeds.

        Raises:
            InvalidRequest: the handler's stage does not feed ``stage``.
        """
        if stage not in self.feeds:
            fed = ", ".join(sorted(self.feeds)) or "no stage"
            raise InvalidRequest(
                f"the {self.stage!r} handler feeds {fed}, not {stage!r}: "
                f"declare it with handler({self.stage!r}, feeds=[{stage!r}])"
            )
        self.added.append((stage, LedgerItem(key, payload)))


@dataclass(frozen=True, slots=True)
class StageHandler:
    """A stage's handler and how it runs: its executor, the later stages it
    feeds, and the broker queue its items travel on."""

    stage: str
    function: Handler
    executor: Executor
    feeds: frozenset[str]
    queue: str


class JobType:
    """A kind of job: its ``name``, its ``stages`` in order, a handler per
    stage (:meth:`handler`), which errors are retried and how.

    :param retry_on: exception classes a handler may raise that are worth
        trying again (a timeout, a refused connection); any other error
        fails the item at once.
    :param max_attempts: tries of an item before a retried error fails it.
    :param backoff: seconds before the first retry, doubled each time, up to
        ``max_backoff``.
    :param truth: builds the monitor's reconciler for this type; by default
        the truth is the ledger against the counted keys.
    :param queue_prefix: the broker queues are ``<prefix>.<type>.<stage>``.
    :param failures: reads a job's failed items (:meth:`item_failures`); by
        default the store's ledger failures.
    :param retry: starts the work of an ended job's failed items again
        (:meth:`retry_job`); None: the type has no retry of its own.
    :param details: lines that say more about a job than its stages
        (:meth:`details`); None: nothing more.
    :param counted_by_producer: stages with no handler, whose items the
        producer itself does and counts (a folder walk that is the
        producing, say): no queue, no worker.
    :param sender: sends the type's items somewhere else to be done (a task
        framework's workers count them): no handlers, no jobtrack queue;
        the producer and the monitor's re-drive send through it.
    :param searchable: dotted paths into a job's attributes whose string
        values the job list's search looks in (``collection.path``), besides
        the job's id.
    :raises InvalidRequest: a name that is not lowercase letters, digits,
        ``-`` and ``_`` (at most 63), no stages, a stage twice, a stage
        counted by the producer that is not one of them, or a searchable
        path that is not dot-separated names.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[str],
        *,
        retry_on: Iterable[type[BaseException]] = (),
        max_attempts: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        truth: TruthFactory | None = None,
        queue_prefix: str = "jobtrack",
        failures: FailuresHook | None = None,
        retry: RetryHook | None = None,
        details: DetailsHook | None = None,
        counted_by_producer: Iterable[str] = (),
        sender: ItemSender | None = None,
        searchable: Iterable[str] = (),
    ) -> None:
        for what in (name, *stages):
            if not isinstance(what, str) or not _NAME.fullmatch(what):
                raise InvalidRequest(
                    f"{what!r} is not a job type or stage name: use lowercase letters, "
                    "digits, '-' and '_', at most 63"
                )
        if not stages:
            raise InvalidRequest(f"job type {name!r} needs at least one stage")
        if len(set(stages)) != len(stages):
            raise InvalidRequest(f"job type {name!r} names a stage twice: {list(stages)}")
        if max_attempts < 1 or backoff < 0 or max_backoff < backoff:
            raise InvalidRequest("max_attempts must be at least 1, 0 <= backoff <= max_backoff")
        self.name = name
        self.stages = tuple(stages)
        self.counted_by_producer = frozenset(counted_by_producer)
        unknown = sorted(self.counted_by_producer.difference(self.stages))
        if unknown:
            raise InvalidRequest(f"job type {name!r} has no stage {unknown[0]!r}")
        self.retry_on = tuple(retry_on)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.truth = truth
        self.queue_prefix = queue_prefix
        self.failures = failures
        self.retry = retry
        self.describe = details
        self.sender = sender
        if isinstance(searchable, str):
            raise InvalidRequest(f"searchable takes a list of paths, not the text {searchable!r}")
        self.searchable = tuple(SearchField(name, path) for path in dict.fromkeys(searchable))
        self.handlers: dict[str, StageHandler] = {}

    def handler(
        self,
        stage: str,
        *,
        feeds: Iterable[str] = (),
        executor: Executor | None = None,
        queue: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as ``stage``'s handler.

        :param feeds: later stages whose items this handler adds
            (:meth:`Item.add`); they seal themselves once every stage
            feeding them has completed.
        :param executor: ``async`` for ``async def`` functions (the default
            for them), ``thread`` (the default for plain functions) or
            ``process``.
        :param queue: the broker queue of the stage's items (default
            ``<queue_prefix>.<type>.<stage>``).
        :raises InvalidRequest: an unknown stage, a stage with a handler
            already, a stage fed that is not later, an executor that does not
            fit the function.
        """
        self._check_stage(stage)
        if self.sender is not None:
            raise InvalidRequest(
                f"job type {self.name!r} sends its items through its sender: no handlers"
            )
        if stage in self.handlers:
            raise InvalidRequest(f"stage {stage!r} of {self.name!r} has a handler already")
        fed = frozenset(feeds)
        later = self.stages[self.stages.index(stage) + 1 :]
        for name in fed:
            if name not in later:
                raise InvalidRequest(
                    f"the {stage!r} handler can only feed a later stage of {self.name!r} "
                    f"({', '.join(later) or 'none'}), not {name!r}"
                )

        chosen_queue = queue or f"{self.queue_prefix}.{self.name}.{stage}"
        taken = [h.stage for h in self.handlers.values() if h.queue == chosen_queue]
        if taken:
            raise InvalidRequest(
                f"queue {chosen_queue!r} is the {taken[0]!r} stage's already: each stage "
                "needs a queue of its own (a consumer refuses another stage's items)"
            )

        def register(function: Handler) -> Handler:
            chosen = executor or ("async" if inspect.iscoroutinefunction(function) else "thread")
            if (chosen == "async") != inspect.iscoroutinefunction(function):
                raise InvalidRequest(
                    f"the {stage!r} handler: executor {chosen!r} needs "
                    + ("an async def function" if chosen == "async" else "a plain function")
                )
            self.handlers[stage] = StageHandler(
                stage=stage,
                function=function,
                executor=chosen,
                feeds=fed,
                queue=chosen_queue,
            )
            return function

        return register

    def fed_by(self, stage: str) -> tuple[str, ...]:
        """The stages whose handlers feed ``stage`` (empty: the producer does)."""
        self._check_stage(stage)
        return tuple(s for s in self.stages if stage in self._feeds_of(s))

    def discovered(self, stage: str) -> bool:
        """Whether ``stage``'s items come from earlier stages' handlers."""
        return bool(self.fed_by(stage))

    def queue(self, stage: str) -> str:
        """The broker queue of ``stage``'s items."""
        self._check_stage(stage)
        handler = self.handlers.get(stage)
        return handler.queue if handler else f"{self.queue_prefix}.{self.name}.{stage}"

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth trying the item again for."""
        return isinstance(error, (Retry, *self.retry_on))

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait before trying again after try number ``attempt``:
        a :class:`Retry`'s ``after``, or the backoff doubled per attempt;
        never more than ``max_backoff`` (the message is held meanwhile)."""
        if isinstance(error, Retry) and error.after is not None:
            return min(max(float(error.after), 0.0), self.max_backoff)
        return min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)

    async def send_items(
        self, broker: Broker | None, job: Job, stage: str, items: Sequence[LedgerItem]
    ) -> None:
        """Send ``items`` of ``job``'s ``stage`` to be done: through the
        type's sender when it has one, else as item messages on ``broker``
        (nothing without one). The producer and the monitor's re-drive both
        send this way, once the items are in the ledger.

        :raises BrokerError: the broker refused a publish.
        :raises JobtrackError: the type's sender could not send them.
        """
        if self.sender is not None:
            await self.sender.send(job, stage, items)
        elif broker is not None:
            await broker.publish_many(
                self.queue(stage), item_bodies(job.id, self.name, stage, items)
            )

    def check_complete(self) -> None:
        """Raise :class:`InvalidRequest` unless every stage has a handler
        (or is counted by the producer), or the type has a sender."""
        if self.sender is not None:
            return
        missing = [
            stage
            for stage in self.stages
            if stage not in self.handlers and stage not in self.counted_by_producer
        ]
        if missing:
            raise InvalidRequest(
                f"job type {self.name!r} has no handler for {missing}: import the module "
                "that registers its handlers (which stages each feeds and their queues "
                "are part of them)"
            )

    async def item_failures(self, app: App, job: Job, limit: int) -> list[ItemFailure]:
        """``job``'s failed items, at most ``limit``, with their errors: the
        type's ``failures`` hook, else the store's ledger failures.

        :raises JobNotFound: no such job (ledger failures).
        :raises StoreError: the store cannot be read.
        """
        read = self.failures or ledger_failures
        return await read(app, job, limit)

    async def retry_job(self, app: App, job: Job) -> Job:
        """Start the work of ``job``'s failed items again with the type's
        ``retry`` hook; the job that does it.

        :raises Conflict: the type has no retry of its own, or the hook
            finds nothing to retry.
        """
        if self.retry is None:
            raise Conflict(f"job {job.id} is a {self.name} job: its type has no retry")
        return await self.retry(app, job)

    def details(self, app: App, job: Job) -> list[str]:
        """Lines that say more about ``job`` than its stages (the type's
        ``details`` hook; none by default). Raises nothing of its own."""
        return [] if self.describe is None else list(self.describe(app, job))

    def _feeds_of(self, stage: str) -> frozenset[str]:
        handler = self.handlers.get(stage)
        return handler.feeds if handler else frozenset()

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise InvalidRequest(
                f"job type {self.name!r} has no stage {stage!r}: its stages are "
                + ", ".join(self.stages)
            )

    def __repr__(self) -> str:
        return f"JobType({self.name!r}, stages={list(self.stages)!r})"


async def ledger_failures(app: App, job: Job, limit: int) -> list[ItemFailure]:
    """``job``'s failed items as its store's ledger records them, at most
    ``limit``, in (stage, key) order (read in pages).

    :raises JobNotFound: no such job.
    :raises StoreError: the store cannot be read.
    """
    found: list[ItemFailure] = []
    after: tuple[str, str] | None = None
    while len(found) < limit:
        wanted = min(limit - len(found), _FAILURES_PAGE)
        page = await app.store.list_failures(job.id, after=after, limit=wanted)
        found.extend(page)
        if len(page) < wanted:
            break
        after = (page[-1].stage, page[-1].key)
    return found


async def item_failures_of(app: App, job: Job, *, limit: int) -> list[ItemFailure]:
    """``job``'s failed items, at most ``limit``: through its type when
    ``app`` knows it (:meth:`JobType.item_failures`), else the ledger's.

    :raises StoreError: the store (or the type's own records) cannot be read.
    """
    job_type = app.job_types.get(job.job_type)
    if job_type is None:
        return await ledger_failures(app, job, limit)
    return await job_type.item_failures(app, job, limit)


def search_fields(job_types: Iterable[JobType]) -> tuple[SearchField, ...]:
    """Every searchable field of these job types, type by type: what a job
    list's search (``JobQuery.search_fields``) looks in."""
    return tuple(field for job_type in job_types for field in job_type.searchable)


def failure_json(failures: Iterable[ItemFailure]) -> list[dict[str, Any]]:
    """Failed items as JSON shows them: one entry per key, in order of first
    appearance, with the stages it failed in and the first error::

        {"image": "a/b.jpg", "stages": ["cache", "thumbnail"], "error": "…"}

    (``image`` names the item's key, as the collection scan first showed it.)
    """
    by_key: dict[str, dict[str, Any]] = {}
    for failure in failures:
        entry = by_key.setdefault(
            failure.key, {"image": failure.key, "stages": [], "error": failure.error}
        )
        if failure.stage not in entry["stages"]:
            entry["stages"].append(failure.stage)
    return list(by_key.values())


def registry(types: Iterable[JobType]) -> Mapping[str, JobType]:
    """Job types by name.

    Raises:
        InvalidRequest: two types share a name.
    """
    by_name: dict[str, JobType] = {}
    for job_type in types:
        if job_type.name in by_name:
            raise InvalidRequest(f"two job types are named {job_type.name!r}")
        by_name[job_type.name] = job_type
    return by_name
