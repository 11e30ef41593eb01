"""A crash at every step: a rule-based state machine over jobtrack's counting.

Two workers, a producer and the monitor share one real store (SQLite in a
temporary file, or a fresh PostgreSQL schema) and a model of the broker
that delivers again whatever was not acked. Each step of an item is a rule
of its own, so that a crash, an outage or a monitor cycle can fall between
any two of them:

1. ``deliver``: a worker takes a message (at most ``PREFETCH`` held);
2. ``do_work``: the item's side effect happens: it joins the ground truth
   (:attr:`CrashMachine.truth`, done or failed by its key);
3. ``report``: ``ProgressTracker.add`` on the worker's own tracker, whose
   interval and backoff are so long that only the next rule writes;
4. ``flush``: ``ProgressTracker.flush_if_due``;
5. ``ack``: allowed once the item's receipt is resolved (durable, or
   refused: then dead-lettered), as ``jobtrack worker`` does.

The other rules crash a worker (its tracker's folds are lost, its held
messages go back to the queue), restart it, take the store down for a few
calls (:class:`FlakyStore`, with the reply to a committed write lost or
not), add items to the ledger, publish them, lose the producer's batches
not yet published, seal a job, cancel one, and run a monitor cycle on the
shared clock, moved past ``stuck_after`` or not.

After every step the invariants read the store itself (not through the
flaky proxy): no stage counts more than the truth; every active job's
counts equal its counted keys, which are all in the truth; an item acked
as durable of an active job is counted; a stage ends only once sealed and
counted up to its total; a job ends once, and stays as it ended.

When the steps are done, :meth:`CrashMachine.teardown` brings the world to
rest (store up, workers restarted, the producer's batches published and
every job sealed, the queues drained through every step, monitor cycles
on the advanced clock until every job has ended) and checks the end: every
count equals the truth, the truth is the ledger, and each job ended once,
completed unless its truth says failed (a stage whose items all failed) or
a cancel reached it.

Two planted bugs show that the machine can fail; they live here, in the
test, never in the library: :attr:`CrashMachine.ack_before_durable` acks
an item as soon as it is reported, before its flush is durable, and
:attr:`CrashMachine.drop_keys` strips the item keys from every progress
write (a store without the key check), so a redelivered item counts twice.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar, cast

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jobtrack.broker.base import DeadMessage, Handler, QueueStats, Subscription
from jobtrack.errors import BrokerError, StoreUnavailable
from jobtrack.jobs.messages import decode_item, item_bodies
from jobtrack.jobs.reconciler import LedgerReconciler
from jobtrack.jobs.types import JobType
from jobtrack.model import JobStatus, StageStatus
from jobtrack.monitor import Monitor
from jobtrack.store import JobStore, StageProgress, open_store
from jobtrack.store.ledger import LedgerItem
from jobtrack.tracking import ProgressTracker, Receipt
from tests.conftest import SteppingClock
from tests.postgres import database_url, new_schema

T = TypeVar("T")

STAGES = ("fetch", "render")
JOB_TYPE = JobType("chaos", STAGES)
STUCK_AFTER = 60.0
PREFETCH = 3
MAX_JOBS = 2
#: Long enough that a tracker never writes on its own: only the flush rule does.
NEVER = 1e9
#: Seconds after which a step that has not returned fails the run as hung.
HANG = 30.0


def fails(key: str) -> bool:
    """Whether the item ``key`` fails (its side effect is a failure): every
    fourth item, so that most stages complete with some failed items, and a
    stage whose items all fail fails its job."""
    return int(key.rsplit("-", 1)[1]) % 4 == 3


class FlakyStore:
    """A store that is down when told: for ``calls`` calls after the next
    ``after`` ones, each call raises :class:`StoreUnavailable`, before the
    call (nothing written) or, with ``lost_reply``, after it (written, and
    the caller does not know). With ``drop_keys`` (a planted bug), progress
    goes to the store without its item keys, its counts kept."""

    def __init__(self, store: JobStore, *, drop_keys: bool = False) -> None:
        self.inner = store
        self.backend = store.backend
        self.drop_keys = drop_keys
        self._after = 0
        self._calls = 0
        self._lost_reply = False
        self.refused = 0

    @property
    def is_down(self) -> bool:
        """Whether calls are failing, or will after the next few."""
        return self._calls > 0

    def down(self, *, after: int, calls: int, lost_reply: bool) -> None:
        """Fail ``calls`` calls once ``after`` more have gone through."""
        self._after, self._calls, self._lost_reply = after, calls, lost_reply

    def up(self) -> None:
        """Let every call through again."""
        self._after = self._calls = 0

    def _failing(self) -> bool:
        if self._calls <= 0:
            return False
        if self._after > 0:
            self._after -= 1
            return False
        self._calls -= 1
        return True

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(target) or name == "aclose":
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            failing = self._failing()
            if failing and not self._lost_reply:
                self.refused += 1
                raise StoreUnavailable(f"store down: {name} not run")
            if name == "add_progress" and self.drop_keys:
                args = (strip_keys(args[0]), *args[1:])
            result = await target(*args, **kwargs)
            if failing:
                self.refused += 1
                raise StoreUnavailable(f"store down: {name} ran, its reply lost")
            return result

        return call


def strip_keys(batch: Sequence[StageProgress]) -> list[StageProgress]:
    """The planted key bug: each entry's keys become bare counts."""
    return [
        replace(
            p,
            completed=p.completed + len(p.completed_keys),
            failed=p.failed + len(p.failed_keys),
            completed_keys=(),
            failed_keys=(),
        )
        for p in batch
    ]


class ModelBroker:
    """The broker as the machine drives it: a message taken is held until
    settled; one given back is delivered again. Publishing (the producer's
    and the monitor's re-drive) goes through the :class:`Broker` port."""

    def __init__(self) -> None:
        self.ready: dict[str, list[bytes]] = {}
        self.unacked: dict[str, int] = {}
        self.dead: list[bytes] = []
        self.log: list[tuple[str, bytes]] = []  # every message published, in order

    async def publish(self, queue: str, body: bytes) -> None:
        """Queue one message."""
        await self.publish_many(queue, [body])

    async def publish_many(self, queue: str, bodies: Iterable[bytes]) -> None:
        """Queue messages, in order."""
        sent = list(bodies)
        self.ready.setdefault(queue, []).extend(sent)
        self.log.extend((queue, body) for body in sent)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        """Not offered: the machine's rules deliver."""
        raise BrokerError("the model broker delivers through the machine's rules")

    async def in_flight(self, queue: str) -> int:
        """Messages queued or held."""
        return len(self.ready.get(queue, ())) + self.unacked.get(queue, 0)

    async def queue_stats(self, queue: str) -> QueueStats:
        """Messages queued and held (no consumers: the rules deliver)."""
        return QueueStats(queue, len(self.ready.get(queue, ())), 0, self.unacked.get(queue, 0))

    async def dead_messages(self, queue: str, *, limit: int) -> list[DeadMessage]:
        """Not offered: the machine counts its dead letters itself."""
        raise BrokerError("the model broker keeps no dead letters to list")

    async def settle_dead(
        self, queue: str, ids: Collection[str] | None, *, requeue: bool, most: int | None = None
    ) -> list[DeadMessage]:
        """Not offered: the machine counts its dead letters itself."""
        raise BrokerError("the model broker keeps no dead letters to settle")

    async def failed(self) -> BrokerError:
        """Never returns."""
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Nothing to close."""

    def take(self, queue: str) -> bytes | None:
        """The next message of ``queue``, now held; None when there is none."""
        ready = self.ready.get(queue)
        if not ready:
            return None
        self.unacked[queue] = self.unacked.get(queue, 0) + 1
        return ready.pop(0)

    def settle(self, queue: str) -> None:
        """A held message is acked (or dead-lettered): gone."""
        self.unacked[queue] -= 1

    def give_back(self, queue: str, body: bytes) -> None:
        """A held message whose consumer died: delivered again."""
        self.unacked[queue] -= 1
        self.ready.setdefault(queue, []).append(body)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing held."""
        return not any(self.ready.values()) and not any(self.unacked.values())


@dataclass(slots=True)
class Held:
    """A message a worker holds, and how far its item went."""

    queue: str
    body: bytes
    job_id: str
    stage: str
    key: str
    step: int = 0  # 0 delivered, 1 side effect done, 2 reported to the tracker
    receipt: Receipt | None = None


@dataclass(slots=True)
class Worker:
    """A worker process: its tracker (None while crashed) and what it holds."""

    tracker: ProgressTracker | None
    held: list[Held] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StageView:
    """A stage as the store holds it."""

    status: StageStatus
    total: int
    completed: int
    failed: int
    sealed: bool


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the store holds it, with its counted keys per stage."""

    status: JobStatus
    ended_at: object  # compared only: the backend's own form of completed_at
    stages: dict[str, StageView]
    keys: dict[str, list[str]]


@dataclass(slots=True)
class JobModel:
    """What the producer knows of a job it started."""

    id: str
    sealing: bool = False  # the producer began sealing: it adds nothing more
    sealed: bool = False
    cancel_tried: bool = False
    cancelled: bool = False  # the cancel went through (or found the job ended)
    written: int = 0  # batches the producer wrote to the ledger
    ended: tuple[JobStatus, object] | None = None  # as first seen ended
    endings: int = 0


class CrashMachine(RuleBasedStateMachine):
    """The workers, the producer and the monitor, one step at a time."""

    #: ``sqlite``, or ``postgres``: a fresh schema of this database per run.
    backend: ClassVar[str] = "sqlite"
    postgres_database: ClassVar[str | None] = None
    #: Planted bug 1: ack an item once reported, before its count is durable.
    ack_before_durable: ClassVar[bool] = False
    #: Planted bug 2: progress written without its item keys (no key check).
    drop_keys: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = SteppingClock()
        self.tmp: str | None = None
        self.oracle: sqlite3.Connection | None = None
        self.healthy = False  # the last invariant check passed and nothing ran since
        self.real = self.run(self._open_store())
        self.store = FlakyStore(self.real, drop_keys=self.drop_keys)
        self.broker = ModelBroker()
        self.workers = [Worker(self._tracker()), Worker(self._tracker())]
        self.monitor = Monitor(
            self._flaky,
            [LedgerReconciler(JOB_TYPE, self._flaky, self.broker)],
            stuck_after=STUCK_AFTER,
            max_redrives=1_000,
            clock=self.clock,
        )
        self.jobs: list[JobModel] = []
        self.batches: list[tuple[str, str, list[LedgerItem]]] = []  # in the ledger, not published
        self.truth: dict[tuple[str, str], dict[str, bool]] = {}  # key -> failed
        self.acked: dict[tuple[str, str], set[str]] = {}
        self.serial = 0

    # -- plumbing ---------------------------------------------------------

    @property
    def _flaky(self) -> JobStore:
        return cast(JobStore, self.store)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end on the machine's loop; one that hangs
        fails the run (:data:`HANG`)."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, HANG))

    async def _open_store(self) -> JobStore:
        if self.backend == "postgres":
            from jobtrack.store.postgres import PostgresJobStore

            database = self.postgres_database
            assert database is not None
            url = database_url(database, schema=new_schema(database))
            return PostgresJobStore(url, clock=self.clock, max_size=2)
        self.tmp = tempfile.mkdtemp(prefix="jobtrack-chaos-")
        return open_store(f"sqlite:///{self.tmp}/jobs.db", clock=self.clock)

    def _tracker(self) -> ProgressTracker:
        return ProgressTracker(
            self._flaky, flush_interval=NEVER, retry_after=NEVER, max_retry_after=NEVER
        )

    def _try(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run a store call; None when the store is down."""

        async def attempt() -> T:
            return await call()

        try:
            return self.run(attempt())
        except StoreUnavailable:
            return None

    def _step(self) -> None:
        self.healthy = False

    def _abandon(self, tracker: ProgressTracker) -> None:
        """Drop a tracker as a killed process would: nothing more is written."""
        task = tracker._coalescer._task  # its background flusher, never woken again
        if task is not None:
            task.cancel()
            self.loop.run_until_complete(asyncio.gather(task, return_exceptions=True))

    def _job(self, index: int) -> JobModel:
        return self.jobs[index % len(self.jobs)]

    def _start_job(self) -> None:
        job = self._try(lambda: self.store.create_job(JOB_TYPE.name, STAGES))
        if job is not None:
            self.jobs.append(JobModel(job.id))

    # -- the producer ------------------------------------------------------

    @initialize()
    def first_job(self) -> None:
        """The producer starts a job (the store is up at first)."""
        self._step()
        self._start_job()
        assert self.jobs, "the first job could not be created"

    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule()
    def start_job(self) -> None:
        """The producer starts another job."""
        self._step()
        self._start_job()

    def _open_jobs(self) -> list[JobModel]:
        """The jobs the producer still adds to."""
        return [job for job in self.jobs if not (job.sealing or job.cancel_tried)]

    @precondition(lambda self: self._open_jobs())
    @rule(j=st.integers(0, MAX_JOBS - 1), stage=st.sampled_from(STAGES), n=st.integers(1, 3))
    def add_items(self, j: int, stage: str, n: int) -> None:
        """The producer writes a batch to the ledger (raising the total);
        published by :meth:`publish`. A batch whose write failed is not
        published (its keys may be in the ledger all the same: a lost
        reply; the monitor re-drives those)."""
        self._step()
        jobs = self._open_jobs()
        job = jobs[j % len(jobs)]
        items = [LedgerItem(f"{stage}-{self.serial + i}") for i in range(n)]
        self.serial += n
        added = self._try(lambda: self.store.add_items(job.id, stage, items))
        if added is not None:
            self.batches.append((job.id, stage, items))
            job.written += 1

    @precondition(lambda self: self.batches)
    @rule(i=st.integers(0, 3))
    def publish(self, i: int) -> None:
        """The producer publishes a batch already in the ledger."""
        self._step()
        job_id, stage, items = self.batches.pop(i % len(self.batches))
        bodies = item_bodies(job_id, JOB_TYPE.name, stage, items)
        self.run(self.broker.publish_many(JOB_TYPE.queue(stage), bodies))

    @precondition(lambda self: self.batches)
    @rule()
    def producer_crash(self) -> None:
        """The producer dies between ledger writes and publishes: its
        batches are in the ledger and never published."""
        self._step()
        self.batches.clear()

    def _sealable(self) -> list[JobModel]:
        """Jobs the producer is done with: a batch written at least, or a
        seal begun."""
        return [
            job
            for job in self.jobs
            if not (job.sealed or job.cancel_tried) and (job.sealing or job.written)
        ]

    @precondition(lambda self: self._sealable())
    @rule(j=st.integers(0, MAX_JOBS - 1))
    def seal(self, j: int) -> None:
        """The producer is done with a job: it seals every stage."""
        self._step()
        jobs = self._sealable()
        job = jobs[j % len(jobs)]
        job.sealing = True
        for stage in STAGES:
            if self._try(functools.partial(self.store.seal_total, job.id, stage)) is None:
                return
        job.sealed = True

    @precondition(lambda self: not any(job.cancelled for job in self.jobs))
    @rule(j=st.integers(0, MAX_JOBS - 1))
    def cancel(self, j: int) -> None:
        """Someone cancels a job, one a run, until the store answers (the
        store down, the job may or may not be cancelled); the producer
        stops adding to it at once."""
        self._step()
        tried = [job for job in self.jobs if job.cancel_tried]
        job = tried[0] if tried else self._job(j)
        job.cancel_tried = True
        ended = self._try(lambda: self.store.end_job_if_active(job.id, JobStatus.CANCELLED))
        job.cancelled = ended is not None

    # -- the workers -------------------------------------------------------

    def _pick(self, w: int, fits: Callable[[Worker], bool]) -> int | None:
        """Worker ``w`` if it fits, else the other one if it does."""
        return next((v for v in (w, 1 - w) if fits(self.workers[v])), None)

    def _can_take(self, worker: Worker) -> bool:
        return worker.tracker is not None and len(worker.held) < PREFETCH

    def _ackable(self, held: Held) -> bool:
        return held.step == 2 and (
            self.ack_before_durable or (held.receipt is not None and held.receipt.done())
        )

    def _held(self, w: int, i: int, fits: Callable[[Held], bool]) -> tuple[Worker, Held] | None:
        """The ``i``-th item that fits, of worker ``w`` or else of the other."""
        v = self._pick(w, lambda worker: any(fits(held) for held in worker.held))
        if v is None:
            return None
        worker = self.workers[v]
        ready = [held for held in worker.held if fits(held)]
        return worker, ready[i % len(ready)]

    def _holding(self, fits: Callable[[Held], bool]) -> bool:
        return any(fits(held) for worker in self.workers for held in worker.held)

    @precondition(
        lambda self: (
            any(self.broker.ready.values())
            and any(self._can_take(worker) for worker in self.workers)
        )
    )
    @rule(w=st.integers(0, 1), stage=st.sampled_from(STAGES))
    def deliver(self, w: int, stage: str) -> None:
        """The broker delivers a message of ``stage`` (else of the other
        stage) to a running worker with room in its prefetch."""
        self._step()
        v = self._pick(w, self._can_take)
        if v is None:
            return
        for name in (stage, *STAGES):
            queue = JOB_TYPE.queue(name)
            body = self.broker.take(queue)
            if body is not None:
                item = decode_item(body)
                self.workers[v].held.append(Held(queue, body, item.job_id, item.stage, item.key))
                return

    @precondition(lambda self: self._holding(lambda held: held.step == 0))
    @rule(w=st.integers(0, 1), i=st.integers(0, PREFETCH - 1))
    def do_work(self, w: int, i: int) -> None:
        """The handler does the item: its side effect is real from now on."""
        self._step()
        found = self._held(w, i, lambda held: held.step == 0)
        if found is None:
            return
        _, held = found
        self.truth.setdefault((held.job_id, held.stage), {})[held.key] = fails(held.key)
        held.step = 1

    @precondition(lambda self: self._holding(lambda held: held.step == 1))
    @rule(w=st.integers(0, 1), i=st.integers(0, PREFETCH - 1))
    def report(self, w: int, i: int) -> None:
        """The worker reports the item to its tracker (folded, not written)."""
        self._step()
        found = self._held(w, i, lambda held: held.step == 1)
        if found is None:
            return
        worker, held = found
        tracker = worker.tracker
        assert tracker is not None

        async def add() -> Receipt:
            return tracker.add(held.job_id, held.stage, item_key=held.key, failed=fails(held.key))

        held.receipt = self.run(add())
        held.step = 2

    @precondition(
        lambda self: any(w.tracker is not None and w.tracker.pending for w in self.workers)
    )
    @rule(w=st.integers(0, 1))
    def flush(self, w: int) -> None:
        """The worker's tracker writes what it folded (kept if the store is down)."""
        self._step()
        v = self._pick(w, lambda worker: worker.tracker is not None and worker.tracker.pending > 0)
        tracker = None if v is None else self.workers[v].tracker
        if tracker is not None:
            self.run(tracker.flush_if_due())

    @precondition(lambda self: self._holding(self._ackable))
    @rule(w=st.integers(0, 1), i=st.integers(0, PREFETCH - 1))
    def ack(self, w: int, i: int) -> None:
        """The worker settles an item whose receipt resolved: acked once
        durable, dead-lettered once refused (with the planted bug 1: acked
        as soon as it is reported)."""
        self._step()
        found = self._held(w, i, self._ackable)
        if found is None:
            return
        worker, held = found
        receipt = held.receipt
        assert receipt is not None
        worker.held.remove(held)
        self.broker.settle(held.queue)
        if receipt.refused is not None:
            self.broker.dead.append(held.body)
        else:
            self.acked.setdefault((held.job_id, held.stage), set()).add(held.key)

    @precondition(lambda self: any(worker.tracker is not None for worker in self.workers))
    @rule(w=st.integers(0, 1))
    def crash(self, w: int) -> None:
        """The worker dies: what its tracker folded is lost, what it held
        is delivered again."""
        self._step()
        v = self._pick(w, lambda worker: worker.tracker is not None)
        if v is None:
            return
        worker = self.workers[v]
        assert worker.tracker is not None
        self._abandon(worker.tracker)
        worker.tracker = None
        for held in worker.held:
            self.broker.give_back(held.queue, held.body)
        worker.held.clear()

    @precondition(lambda self: any(worker.tracker is None for worker in self.workers))
    @rule(w=st.integers(0, 1))
    def restart(self, w: int) -> None:
        """A crashed worker starts again, with a new tracker."""
        self._step()
        v = self._pick(w, lambda worker: worker.tracker is None)
        if v is not None:
            self.workers[v].tracker = self._tracker()

    # -- the store and the monitor -----------------------------------------

    @rule(after=st.integers(0, 3), calls=st.integers(1, 6), lost_reply=st.booleans())
    def store_down(self, after: int, calls: int, lost_reply: bool) -> None:
        """The store fails ``calls`` calls once ``after`` more went through."""
        self._step()
        self.store.down(after=after, calls=calls, lost_reply=lost_reply)

    @precondition(lambda self: self.store.is_down)
    @rule()
    def store_up(self) -> None:
        """The store is back."""
        self._step()
        self.store.up()

    @precondition(lambda self: all(job.sealed or job.cancelled for job in self.jobs))
    @rule(advance=st.booleans())
    def monitor_cycle(self, advance: bool) -> None:
        """A monitor cycle, ``stuck_after`` later or not (while a job's
        producer is still adding, the monitor would rightly fail it as
        abandoned: it runs once every job is sealed). What it re-drives of
        a job were missing items (ledger items not counted) when it began,
        each once; all of them, unless the store failed a call meanwhile."""
        self._step()
        if advance:
            self.clock.advance(STUCK_AFTER + 1)
        missing = self.run(self._missing())
        sent, outages = len(self.broker.log), self.store.refused
        self._try(self.monitor.cycle)
        redriven: dict[str, list[str]] = {}
        for _, body in self.broker.log[sent:]:
            item = decode_item(body)
            redriven.setdefault(item.job_id, []).append(f"{item.stage}/{item.key}")
        for job_id, keys in redriven.items():
            where = f"job {job_id[:8]}"
            assert len(keys) == len(set(keys)), f"{where}: an item re-driven twice in a cycle"
            extra = set(keys) - missing.get(job_id, set())
            assert not extra, f"{where}: re-driven, and not missing: {sorted(extra)}"
            if self.store.refused == outages:  # a cycle the store answered throughout
                assert set(keys) == missing[job_id], (
                    f"{where}: re-drove {sorted(keys)} of {sorted(missing[job_id])} missing"
                )

    async def _missing(self) -> dict[str, set[str]]:
        """Per active job, its ledger items not counted, as ``stage/key``."""
        missing: dict[str, set[str]] = {}
        for model in self.jobs:
            job = await self.real.get_job(model.id)
            if job.status.terminal:
                continue
            for stage in STAGES:
                items = await self.real.missing_items(job.id, stage, limit=1_000_000)
                missing.setdefault(job.id, set()).update(f"{stage}/{i.key}" for i in items)
        return missing

    # -- what must hold at every step --------------------------------------

    def _snapshot(self) -> dict[str, JobView]:
        """Every job as the store holds it: on SQLite read straight from its
        file (fast enough to run after every step), else through the store."""
        if self.tmp is None:
            return self.run(self._read_through_store())
        if self.oracle is None:
            self.oracle = sqlite3.connect(f"file:{self.tmp}/jobs.db?mode=ro", uri=True)
        views: dict[str, JobView] = {}
        for row in self.oracle.execute(
            "SELECT j.id, j.status, j.completed_at, s.name, s.status, s.total_items,"
            " s.completed_items, s.failed_items, s.total_final"
            " FROM jobs AS j JOIN stages AS s ON s.job_id = j.id"
        ):
            job_id, status, ended_at, name, *stage = row
            view = views.setdefault(job_id, JobView(JobStatus(status), ended_at, {}, {}))
            view.stages[name] = StageView(
                StageStatus(stage[0]), stage[1], stage[2], stage[3], bool(stage[4])
            )
        for job_id, stage, key in self.oracle.execute(
            "SELECT job_id, stage, item_key FROM item_keys"
        ):
            views[job_id].keys.setdefault(stage, []).append(key)
        return views

    async def _read_through_store(self) -> dict[str, JobView]:
        views: dict[str, JobView] = {}
        for model in self.jobs:
            job = await self.real.get_job(model.id)
            view = views[job.id] = JobView(job.status, job.completed_at, {}, {})
            for name, stage in job.stages.items():
                view.stages[name] = StageView(
                    stage.status,
                    stage.total_items,
                    stage.completed_items,
                    stage.failed_items,
                    stage.total_final,
                )
                view.keys[name] = await self.real.settled_items(job.id, name, limit=1_000_000)
        return views

    @invariant()
    def counting_holds(self) -> None:
        """Read from the store itself, after every step."""
        self.healthy = False
        views = self._snapshot()
        for model in self.jobs:
            job = views[model.id]
            self._check_ending(model, job)
            for name, stage in job.stages.items():
                truth = self.truth.get((model.id, name), {})
                done = sum(1 for failed in truth.values() if not failed)
                where = f"job {model.id[:8]} stage {name}"
                assert stage.completed <= done, (
                    f"{where}: {stage.completed} completed, only {done} done for real"
                )
                assert stage.failed <= len(truth) - done, (
                    f"{where}: {stage.failed} failed, only {len(truth) - done} for real"
                )
                if stage.status.terminal:
                    assert stage.sealed, f"{where} ended before its total was sealed"
                    assert stage.completed + stage.failed >= stage.total, (
                        f"{where} ended short of its total"
                    )
                if job.status.terminal:
                    continue  # an ended job's keys are dropped
                keys = job.keys.get(name, [])
                assert len(keys) == len(set(keys)), f"{where}: a key counted twice"
                counted = stage.completed + stage.failed
                assert counted == len(keys), (
                    f"{where}: counts {counted} for {len(keys)} counted keys"
                )
                assert set(keys) <= truth.keys(), f"{where}: a key counted that was never done"
                unseen = self.acked.get((model.id, name), set()) - set(keys)
                assert not unseen, f"{where}: acked before its count was durable: {sorted(unseen)}"
        self.healthy = True

    def _check_ending(self, model: JobModel, job: JobView) -> None:
        name = model.id[:8]
        if not job.status.terminal:
            assert model.ended is None, f"job {name} ended, then went on"
            return
        now = (job.status, job.ended_at)
        if model.ended is None:
            model.ended, model.endings = now, model.endings + 1
        assert model.ended == now, f"job {name} ended as {model.ended}, then as {now}"
        if job.status is JobStatus.CANCELLED:
            assert model.cancel_tried, f"job {name} cancelled by nobody"

    # -- the end -------------------------------------------------------------

    def teardown(self) -> None:
        """Bring everything to rest and check the end (unless a step failed
        already: that failure is the one to see), then close."""
        try:
            if self.healthy:
                self._quiesce()
                self._check_end()
        finally:
            self._close()

    def _quiesce(self) -> None:
        self.store.up()
        while self.batches:
            self.publish(0)
        for job in self.jobs:  # the canceller and the producer finish what they began
            if job.cancel_tried and not job.cancelled:
                self.cancel(0)
            if not job.sealed and not self.run(self.real.get_job(job.id)).status.terminal:
                job.sealing = True
                for stage in STAGES:
                    self.run(self.store.seal_total(job.id, stage))
                job.sealed = True
        for w, worker in enumerate(self.workers):
            if worker.tracker is None:
                self.restart(w)
        for _ in range(20):
            self._drain()
            self.counting_holds()
            jobs = [self.run(self.real.get_job(job.id)) for job in self.jobs]
            if all(job.status.terminal for job in jobs):
                return
            self.clock.advance(STUCK_AFTER + 1)
            self.run(self.monitor.cycle())
        raise AssertionError(f"the jobs never ended: {[job.status for job in jobs]}")

    def _drain(self) -> None:
        """Work every message through every step, until none is left."""
        for _ in range(1_000):
            if self.broker.idle:
                return
            for w, worker in enumerate(self.workers):
                while any(self.broker.ready.values()) and self._can_take(worker):
                    self.deliver(w, STAGES[0])
                for step, handle in ((0, self.do_work), (1, self.report)):
                    while any(held.step == step for held in worker.held):
                        handle(w, 0)
                self.flush(w)
                while any(self._ackable(held) for held in worker.held):
                    self.ack(w, 0)
        raise AssertionError("the queues never drained")

    def _check_end(self) -> None:
        for model in self.jobs:
            job = self.run(self.real.get_job(model.id))
            tallies = self.run(self.real.tally_ledger(job.id))
            assert model.endings == 1, f"job {job.id[:8]} ended {model.endings} times"
            for name, stage in job.stages.items():
                if job.status is JobStatus.CANCELLED:
                    continue  # its items are not all done, and need not be
                truth = self.truth.get((job.id, name), {})
                where = f"job {job.id[:8]} stage {name}"
                ledger = tallies[name].items if name in tallies else 0
                assert len(truth) == ledger, f"{where}: {len(truth)} done of {ledger} in the ledger"
                done = sum(1 for failed in truth.values() if not failed)
                assert (stage.completed_items, stage.failed_items, stage.total_items) == (
                    done,
                    len(truth) - done,
                    ledger,
                ), f"{where}: counts {stage} against {done} done of {len(truth)}"
            if job.status is JobStatus.CANCELLED:
                continue
            all_failed = any(
                truth and all(truth.values())
                for truth in (self.truth.get((job.id, name), {}) for name in STAGES)
            )
            expected = JobStatus.FAILED if all_failed else JobStatus.COMPLETED
            assert job.status is expected, f"job {job.id[:8]} {job.status}, expected {expected}"

    def _close(self) -> None:
        try:
            for worker in self.workers:
                if worker.tracker is not None:
                    self._abandon(worker.tracker)
            if self.oracle is not None:
                self.oracle.close()
            self.run(self.real.aclose())
        finally:
            pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
