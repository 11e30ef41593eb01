"""The store port: a domain-level, async protocol over jobs and stages.

Every backend applies the rules of :mod:`jobtrack.model.rules` atomically,
inside the store: an increment is one statement (or, with an item key, one
short transaction), never a read-modify-write in the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from jobtrack.errors import Conflict, InvalidIncrement, InvalidRequest, JobtrackError, NotFound
from jobtrack.model import (
    MAX_INCREMENT,
    RESERVED_ATTRIBUTES,
    Job,
    JobEvent,
    JobStatus,
    Stage,
    StageCounts,
    check_increment,
    default_completed,
    raise_total,
    seal_total,
    start_stage,
)
from jobtrack.store.ledger import ItemFailure, LedgerItem, LedgerTally
from jobtrack.store.overview import SearchField, TypeCounts, Watched, WatchQuery
from jobtrack.store.text import MAX_KEY_LENGTH, key_problem, text_problem
from jobtrack.store.workers import StageCount, ThroughputPoint, WorkerBeat, WorkerInfo

__all__ = [
    "CHANGES_LIMIT",
    "DEFAULT_PAGE_SIZE",
    "EVENTS_LIMIT",
    "MAX_EVENT_MESSAGE",
    "MAX_KEY_LENGTH",
    "STORE_SETTING",
    "STUCK_QUERY_LIMIT",
    "ChangeCursor",
    "Changes",
    "Ended",
    "Increment",
    "JobQuery",
    "JobStore",
    "ProgressResult",
    "StageProgress",
    "StageWrites",
    "StoreStats",
    "as_progress",
    "check_end_status",
    "check_event",
    "check_progress",
    "check_unmoved",
    "increment_progress",
    "key_problem",
    "merge_screened",
    "progress_problem",
    "screen_progress",
    "text_problem",
    "validate_new_job",
]

#: The setting a store's URL comes from, as a configuration error names it.
STORE_SETTING = "JOBTRACK_STORE_URL / --store"
DEFAULT_PAGE_SIZE = 50
#: At most this many jobs per stuck-job query, as the seed's ``Limit(100)``.
STUCK_QUERY_LIMIT = 100
#: At most this many jobs per change-feed query.
CHANGES_LIMIT = 500
#: Events a job's history shows by default.
EVENTS_LIMIT = 100
#: The longest event message kept (longer ones are cut).
MAX_EVENT_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class Increment:
    """What an increment did: whether it counted, and the stage after it.

    ``job_status`` is the job's status when this increment ended its stage
    (the moment a job may have completed), and None otherwise.
    """

    counted: bool
    stage: Stage
    job_status: JobStatus | None = None


@dataclass(frozen=True, slots=True)
class StageProgress:
    """Progress to add to one stage in one write: unkeyed counts, plus items
    known by key, each of which counts once however often it is reported."""

    job_id: str
    stage: str
    completed: int = 0
    failed: int = 0
    completed_keys: Sequence[str] = ()
    failed_keys: Sequence[str] = ()

    @property
    def items(self) -> int:
        """How many items this reports, before deduplication."""
        return self.completed + self.failed + len(self.completed_keys) + len(self.failed_keys)


@dataclass(frozen=True, slots=True)
class ProgressResult:
    """What one :class:`StageProgress` did: items counted, the stage after.

    ``missing`` is the error when the job or the stage does not exist, and
    ``rejected`` the error when the entry itself can never be stored (text
    no engine takes, counts out of bounds; see :func:`progress_problem`);
    ``stage`` is then None. ``job_status`` is set when this write ended
    the stage.
    """

    progress: StageProgress
    counted: int
    stage: Stage | None
    job_status: JobStatus | None = None
    missing: NotFound | None = None
    rejected: JobtrackError | None = None

    @property
    def refused(self) -> str | None:
        """Why nothing was counted, when the entry was refused for good."""
        error = self.missing or self.rejected
        return None if error is None else str(error)

    def as_increment(self) -> Increment:
        """The result of a single increment; raises what it was refused for
        (:class:`NotFound`, :class:`InvalidIncrement`, ...)."""
        if self.missing is not None:
            raise self.missing
        if self.rejected is not None:
            raise self.rejected
        assert self.stage is not None  # only a refused entry has none
        return Increment(self.counted > 0, self.stage, self.job_status)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Totals across the store, for metrics."""

    jobs: dict[str, int]  # status -> jobs
    items: dict[str, tuple[int, int]]  # stage -> (completed, failed) items
    events: dict[str, int]  # event kind -> events
    stuck: int  # active jobs not written since the threshold
    # Active jobs the monitor last left alone behind a backlog being consumed:
    # of their "waiting" and "redriven" events, the latest is a "waiting" one.
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters and paging for :meth:`JobStore.list_jobs`; newest first.
    Raises :class:`InvalidRequest` for a search no backend can compare."""

    status: JobStatus | None = None
    job_type: str | None = None
    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0
    #: Only jobs written at or after this moment.
    updated_since: datetime | None = None
    #: Only jobs whose id starts with this text, or in one of whose
    #: ``search_fields`` (those of the job's type) this text is found,
    #: case-insensitively (``%`` and ``_`` are plain characters).
    search: str | None = None
    #: The attribute paths ``search`` looks in, per job type.
    search_fields: tuple[SearchField, ...] = ()
    #: Only active jobs (pending or in progress).
    active: bool = False

    def __post_init__(self) -> None:
        """Raise :class:`InvalidRequest` for a search no backend can compare
        (a NUL character, a lone surrogate)."""
        problem = None if self.search is None else text_problem(self.search, "a search")
        if problem is not None:
            raise InvalidRequest(problem)


class Ended(NamedTuple):
    """What ending a job did: the job after the call, and whether this call
    ended it (False: it had already ended, and the job says as what)."""

    job: Job
    changed: bool


_XID = r"(?:0|[1-9][0-9]{0,18})"
_CURSOR = re.compile(rf"({_XID})(?:-({_XID}):({_XID}):((?:{_XID}(?:,{_XID}){{0,9999}})?))?")
_MAX_ID = 2**63


@dataclass(frozen=True, slots=True)
class ChangeCursor:
    """Where a reader of the change feed stands: every job write up to
    ``seq`` read, and, on PostgreSQL, the snapshot of that read
    (``snapshot``, PostgreSQL's ``xmin:xmax:xip,…`` text; empty on SQLite
    and in memory): the writes of transactions it did not see, whatever
    their ``seq``, are read next time."""

    seq: int
    snapshot: str = ""

    def __str__(self) -> str:
        """The compact text form, a ``Last-Event-ID``: ``1234`` or
        ``1234-5001:5004:5001,5002``."""
        return f"{self.seq}-{self.snapshot}" if self.snapshot else str(self.seq)

    @classmethod
    def parse(cls, text: str) -> ChangeCursor:
        """The cursor a text form names; raises :class:`InvalidRequest` for
        anything else (a malformed ``Last-Event-ID``)."""
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise InvalidRequest(f"not a change cursor: {text[:40]!r}")
        seq, xmin, xmax, xip = match.groups()
        if xmin is None:
            if int(seq) >= _MAX_ID:
                raise InvalidRequest(f"not a change cursor: {text[:40]!r}")
            return cls(int(seq))
        running = [int(x) for x in xip.split(",")] if xip else []
        low, high = int(xmin), int(xmax)
        if (
            max(int(seq), high) >= _MAX_ID
            or low > high
            or any(not low <= x < high for x in running)
            or running != sorted(set(running))
        ):
            raise InvalidRequest(f"not a change cursor: {text[:40]!r}")
        return cls(int(seq), f"{xmin}:{xmax}:{xip}")


class Changes(NamedTuple):
    """A read of the change feed: the jobs written after a cursor, in write
    order, and the cursor to read from next."""

    jobs: list[Job]
    cursor: ChangeCursor


def check_unmoved(job_id: str, seq: int, if_seq: int | None) -> None:
    """Raise :class:`Conflict` if a job read at ``if_seq`` (None: no check)
    was written since: its ``seq`` is now another."""
    if if_seq is not None and seq != if_seq:
        raise Conflict(f"job {job_id} was written since change {if_seq}")


def check_end_status(status: JobStatus) -> None:
    """Raise :class:`InvalidRequest` unless ``status`` ends a job
    (completed, failed or cancelled)."""
    if not status.terminal:
        raise InvalidRequest(
            f"a job can only be ended as completed, failed or cancelled, not {status}"
        )


def validate_new_job(
    job_type: str, stages: Sequence[str], attributes: Mapping[str, Any] | None
) -> None:
    """Refuse a job no backend should store."""
    if not job_type:
        raise InvalidRequest("a job needs a job_type")
    if not stages:
        raise InvalidRequest("a job needs at least one stage")
    if len(set(stages)) != len(stages) or not all(stages):
        raise InvalidRequest(f"stage names must be unique and non-empty: {list(stages)}")
    clash = RESERVED_ATTRIBUTES.intersection(attributes or {})
    if clash:
        raise InvalidRequest(f"attributes may not use reserved keys: {sorted(clash)}")


def progress_problem(progress: StageProgress) -> str | None:
    """Why no backend can ever store this entry, or None: a job id, stage
    name or item key that is not storable text, negative counts, more than
    ``MAX_INCREMENT`` items."""
    for text, what in ((progress.job_id, "a job id"), (progress.stage, "a stage name")):
        problem = text_problem(text, what)
        if problem is not None:
            return f"{problem}: {text[:40]!r}"
    if progress.completed < 0 or progress.failed < 0:
        return f"progress must not be negative: {progress.completed}, {progress.failed}"
    if progress.items > MAX_INCREMENT:
        return f"progress of {progress.items} items exceeds {MAX_INCREMENT}"
    for key in (*progress.completed_keys, *progress.failed_keys):
        problem = key_problem(key)
        if problem is not None:
            return f"{problem}: {key[:40]!r}"
    return None


def check_progress(progress: StageProgress) -> None:
    """Raise :class:`InvalidIncrement` for an entry no backend can store
    (see :func:`progress_problem`)."""
    problem = progress_problem(progress)
    if problem is not None:
        raise InvalidIncrement(problem)


def screen_progress(batch: Sequence[StageProgress]) -> list[ProgressResult | None]:
    """Each entry's refusal (a result with ``rejected`` set) when no backend
    can store it, or None when it may be written: a backend writes the
    entries screened None and leaves the others alone."""
    if _storable(batch):
        return [None] * len(batch)
    screened: list[ProgressResult | None] = []
    for progress in batch:
        problem = progress_problem(progress)
        refusal = None if problem is None else InvalidIncrement(problem)
        screened.append(
            None if refusal is None else ProgressResult(progress, 0, None, rejected=refusal)
        )
    return screened


def _storable(batch: Sequence[StageProgress]) -> bool:
    """True when every entry of the batch is storable, told in a few passes
    over the whole batch (a flush screens tens of thousands of keys); False:
    look at each entry."""
    keys = [key for p in batch for group in (p.completed_keys, p.failed_keys) for key in group]
    if keys and (min(map(len, keys)) == 0 or max(map(len, keys)) > MAX_KEY_LENGTH):
        return False
    if any(p.completed < 0 or p.failed < 0 or p.items > MAX_INCREMENT for p in batch):
        return False
    text = "".join([*(p.job_id for p in batch), *(p.stage for p in batch), *keys])
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def merge_screened(
    screened: Sequence[ProgressResult | None], written: Sequence[ProgressResult]
) -> list[ProgressResult]:
    """The batch's results in input order: the refusals of
    :func:`screen_progress`, with the results of the entries written (in
    their order) in the gaps. Raises ValueError if the counts differ."""
    rest = iter(written)
    results = [next(rest) if result is None else result for result in screened]
    if next(rest, None) is not None or len(written) != screened.count(None):
        raise ValueError("one result per entry written")
    return results


def as_progress(
    job_id: str, stage: str, completed: int, failed: int, item_key: str | None
) -> StageProgress:
    """One increment as progress: with a key, the item counts once. Raises
    :class:`InvalidIncrement` for what no backend can store."""
    if item_key is None:
        progress = StageProgress(job_id, stage, completed, failed)
    elif completed + failed != 1:
        raise InvalidIncrement("an increment with an item key counts exactly one item")
    else:
        keys = (item_key,)
        progress = StageProgress(
            job_id,
            stage,
            completed_keys=keys if completed else (),
            failed_keys=keys if failed else (),
        )
    check_progress(progress)
    return progress


def increment_progress(
    job_id: str, stage: str, completed: int | None, failed: int, item_key: str | None
) -> StageProgress:
    """The arguments of :meth:`JobStore.increment` as progress (``completed``
    1 unless told otherwise); raises :class:`InvalidIncrement` for a
    negative, empty or absurd increment, or what no backend can store."""
    completed = default_completed(completed, failed)
    check_increment(completed, failed)
    return as_progress(job_id, stage, completed, failed, item_key)


class StageWrites:
    """The stage writes every backend makes the same way, with the rules of
    :mod:`jobtrack.model.rules`, over the backend's ``_change`` (the stage
    read, changed and written back in one atomic write of the job), and the
    end of an active job over ``end_job``."""

    async def _change(
        self, job_id: str, stage: str, change: Callable[[Stage, datetime], Stage]
    ) -> Stage:
        raise NotImplementedError

    async def end_job(
        self, job_id: str, status: JobStatus, *, message: str = "", if_seq: int | None = None
    ) -> Ended:
        """Complete, fail or cancel a job (see :meth:`JobStore.end_job`)."""
        raise NotImplementedError

    async def raise_total(self, job_id: str, stage: str, *, by: int) -> Stage:
        """Add ``by`` items to the stage's (unsealed) total; raises
        :class:`InvalidRequest` once it is sealed, ``NotFound``."""
        return await self._change(job_id, stage, lambda s, now: raise_total(s, now, by=by))

    async def seal_total(self, job_id: str, stage: str, *, total: int | None = None) -> Stage:
        """Make the stage's total final; it may complete at once. Raises
        :class:`InvalidRequest` for another total once sealed, ``NotFound``."""
        return await self._change(job_id, stage, lambda s, now: seal_total(s, now, total=total))

    async def start_stage(self, job_id: str, stage: str, *, message: str | None = None) -> Stage:
        """Mark a stage as started (and set its message); ``NotFound``."""
        return await self._change(
            job_id, stage, lambda s, now: start_stage(s, now, message=message)
        )

    async def end_job_if_active(
        self, job_id: str, status: JobStatus, *, message: str = ""
    ) -> Ended:
        """End a job that has not ended, however often it is written: the
        guard is its status alone. Raises as :meth:`end_job`."""
        return await self.end_job(job_id, status, message=message)


@runtime_checkable
class JobStore(Protocol):
    """Where jobs live. Unknown ids raise :class:`~jobtrack.errors.JobNotFound`
    or :class:`~jobtrack.errors.StageNotFound`; a store that cannot be reached
    raises :class:`~jobtrack.errors.StoreUnavailable`."""

    #: The backend's name: ``memory``, ``sqlite`` or ``postgres``.
    backend: ClassVar[str]

    async def create_job(
        self,
        job_type: str,
        stages: Sequence[str],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Job:
        """Create a pending job with these stages, in this order."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now."""
        ...

    async def list_jobs(self, query: JobQuery | None = None) -> list[Job]:
        """Jobs matching the query, newest first."""
        ...

    async def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        """Count finished items atomically, with the status transitions they
        imply. With ``item_key``, the same (job, stage, item) counts once.

        ``completed`` defaults to 1, or to 0 when ``failed`` is given.
        """
        ...

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        """Apply many stages' progress at once, atomically, keys deduplicated
        in the same write (the coalesced path: one write per flush); one
        result per entry, in input order. An entry refused for good (an
        unknown job or stage, or what :func:`progress_problem` names)
        refuses itself, not the batch: its result says why, the others are
        written. Raises :class:`~jobtrack.errors.StoreUnavailable` when the
        store cannot be reached."""
        ...

    async def raise_total(self, job_id: str, stage: str, *, by: int) -> Stage:
        """Add ``by`` items to the stage's (unsealed) total."""
        ...

    async def seal_total(self, job_id: str, stage: str, *, total: int | None = None) -> Stage:
        """Make the stage's total final; it may complete at once."""
        ...

    async def start_stage(self, job_id: str, stage: str, *, message: str | None = None) -> Stage:
        """Mark a stage as started (and set its message)."""
        ...

    async def end_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        message: str = "",
        if_seq: int | None = None,
    ) -> Ended:
        """Complete, fail or cancel a job. A job already ended is left as it is.

        Returns the job after the call and whether this call ended it. With
        ``if_seq``, only if the job has not been written (nor ended) since:
        its ``seq`` is still that; otherwise :class:`Conflict`. Raises
        :class:`InvalidRequest` for a status that is not an end,
        :class:`~jobtrack.errors.JobNotFound` for an unknown job."""
        ...

    async def end_job_if_active(
        self, job_id: str, status: JobStatus, *, message: str = ""
    ) -> Ended:
        """End the job as ``status`` (completed, failed or cancelled) unless it
        has already ended, however often it is being written meanwhile: one
        atomic write whose guard is the job's status alone.

        Returns the job after the call and whether this call ended it (False:
        it had already ended, and the job says as what). Of two calls racing,
        exactly one ends the job. Raises :class:`InvalidRequest` for a status
        that is not an end, :class:`~jobtrack.errors.JobNotFound` for an
        unknown job."""
        ...

    async def list_changed(
        self, *, after: ChangeCursor | None = None, limit: int = CHANGES_LIMIT
    ) -> Changes:
        """Jobs written after the cursor ``after`` (None: from the start), in
        the order of their ``seq``, and the cursor to read from next: the
        change feed (on an index of its own). No write is ever skipped,
        whatever the writers' clocks or the order their transactions commit."""
        ...

    async def count_items(self, job_type: str, stage: str) -> int:
        """Items of ``stage`` counted (completed and failed) over every job of
        ``job_type``, ended ones too: it grows as workers report items. The
        monitor reads it to tell a backlog being consumed from one whose
        workers are gone, across restarts."""
        ...

    async def last_change(self) -> ChangeCursor:
        """The cursor after the newest write (``seq`` 0 when the store has no
        job): where a change feed starts."""
        ...

    async def stats(self, *, stuck_before: datetime) -> StoreStats:
        """Jobs per status, items per stage, events per kind, how many
        active jobs were not written since ``stuck_before``, and how many
        the monitor last left waiting behind a backlog."""
        ...

    async def find_stuck(
        self,
        job_type: str,
        *,
        updated_before: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = STUCK_QUERY_LIMIT,
    ) -> list[Job]:
        """Active jobs of this type not updated since ``updated_before``,
        oldest first (ties by id): the seed's stuck-job query, on its index.
        To page, pass the last job's ``(updated_at, id)`` as ``after``."""
        ...

    async def claim_stuck(self, job_id: str, seq: int) -> int | None:
        """Touch an active job whose ``seq`` is still ``seq``, and return its
        new ``seq``; None if it moved or ended meanwhile. Of several monitors
        that found the same stuck job, one wins, and the job is not stuck
        again before another ``stuck_after`` has passed."""
        ...

    async def set_counts(
        self,
        job_id: str,
        counts: Mapping[str, StageCounts],
        *,
        keys: Mapping[str, Collection[str]] | None = None,
        if_seq: int | None = None,
    ) -> Job:
        """Set stage counts to the ground truth (reconciliation), up or down;
        the job is written (its ``updated_at`` and ``seq`` move) whatever
        changed, keys alone included.

        With ``if_seq``, only if the job has not been written since
        (:class:`~jobtrack.errors.Conflict` otherwise): a reconciliation never
        overwrites an increment that arrived while it ran.

        With ``keys``, each named stage's counted item keys become exactly
        those (the items the truth counts), in the same transaction: a late
        increment of an item already counted then counts nothing, and an item
        counted before but missing now counts again when it is redone."""
        ...

    async def add_event(
        self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        """Append an entry to the job's history."""
        ...

    async def list_events(self, job_id: str, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The job's last ``limit`` events, oldest first."""
        ...

    async def recent_events(self, *, limit: int = EVENTS_LIMIT) -> list[JobEvent]:
        """The last ``limit`` events of every job, newest first."""
        ...

    async def add_items(
        self, job_id: str, stage: str, items: Sequence[LedgerItem], *, seal: bool = False
    ) -> int:
        """Record items in the job's ledger (one statement for the batch) and
        raise the stage's total by how many were new, in one transaction: a
        key already in the ledger is not added again, so adding a batch twice
        (a producer or handler run again) raises the total once. With
        ``seal``, the stage's total is then sealed. Returns the number of new
        items.

        Raises :class:`InvalidRequest` for a batch
        :func:`~jobtrack.store.ledger.check_items` refuses, or when new items
        come to a sealed stage (nothing is written then);
        :class:`~jobtrack.errors.JobNotFound`,
        :class:`~jobtrack.errors.StageNotFound`."""
        ...

    async def tally_ledger(self, job_id: str) -> dict[str, LedgerTally]:
        """Per stage with items in the ledger, the items recorded against the
        keys counted. Raises :class:`~jobtrack.errors.JobNotFound`."""
        ...

    async def missing_items(
        self, job_id: str, stage: str, *, after: str | None = None, limit: int = 1000
    ) -> list[LedgerItem]:
        """The stage's ledger items whose key is not counted, in key order
        (by code point), after the key ``after``: what the monitor re-drives.
        Meaningful while the job is active (an ended job's keys are dropped).
        Raises :class:`~jobtrack.errors.JobNotFound`,
        :class:`~jobtrack.errors.StageNotFound`."""
        ...

    async def settled_items(
        self, job_id: str, stage: str, *, after: str | None = None, limit: int = 1000
    ) -> list[str]:
        """The keys of the stage's ledger items that are counted or have an
        outcome recorded (:meth:`record_outcomes`), in key order (by code
        point), after the key ``after``: the items the ledger's truth counts.
        Raises :class:`~jobtrack.errors.JobNotFound`,
        :class:`~jobtrack.errors.StageNotFound`."""
        ...

    async def ledger_items(
        self, job_id: str, stage: str, keys: Collection[str]
    ) -> list[LedgerItem]:
        """The ledger items of the stage with these keys, in key order; keys
        not in the ledger are left out. Raises
        :class:`~jobtrack.errors.JobNotFound`."""
        ...

    async def record_outcomes(
        self,
        job_id: str,
        stage: str,
        done_keys: Collection[str],
        failed_keys: Collection[str] = (),
    ) -> int:
        """Record in the ledger, in one statement, that these items of the
        stage are done or failed (a later outcome of an item replaces its
        earlier one), whatever their keys' counts: the ledger's truth then
        counts them (:meth:`tally_ledger`) and leaves them out of the missing
        items. The job itself is not written. Returns how many ledger items
        were recorded (keys not in the stage's ledger are left out).

        Raises :class:`InvalidRequest` for more than
        :data:`~jobtrack.store.ledger.MAX_LEDGER_BATCH` keys, a key no store
        can hold, or a key both done and failed;
        :class:`~jobtrack.errors.JobNotFound`,
        :class:`~jobtrack.errors.StageNotFound`."""
        ...

    async def record_failure(
        self, job_id: str, stage: str, key: str, error: str, *, attempts: int = 1
    ) -> None:
        """Keep why an item failed (a later failure of the same item replaces
        it; the error is cut to :data:`MAX_EVENT_MESSAGE` characters). Raises
        :class:`InvalidRequest` for a key no store can hold,
        :class:`~jobtrack.errors.JobNotFound`,
        :class:`~jobtrack.errors.StageNotFound`."""
        ...

    async def list_failures(
        self,
        job_id: str,
        *,
        stage: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[ItemFailure]:
        """The job's failed items with their errors and ledger payloads, in
        (stage, key) order, after ``after`` (a (stage, key) pair), at most
        ``limit``. Raises :class:`~jobtrack.errors.JobNotFound`."""
        ...

    async def purge_ledger(self, *, ended_before: datetime, limit: int = 10_000) -> int:
        """Delete the ledger rows and failures of jobs that ended before
        ``ended_before``, at most ``limit`` jobs' worth a call; returns the
        number of jobs purged. Active jobs keep theirs whatever their age."""
        ...

    # Worker heartbeats and throughput (store/workers.py).

    async def beat_worker(self, beat: WorkerBeat, counts: Sequence[StageCount] = ()) -> None:
        """Write a worker's heartbeat (its one row, replaced; ``beat_at``
        stamped by the store's clock) and, in the same transaction, add
        ``counts`` (what it counted since its previous beat) to its own row
        of the throughput bucket the beat falls in. A beat whose ``seq`` the
        row holds already, or a later one, was written before and changes
        nothing (its counts are not added twice). Raises
        :class:`InvalidRequest` for a beat
        :func:`~jobtrack.store.workers.check_beat` refuses."""
        ...

    async def list_workers(self, *, limit: int = 1000) -> list[WorkerInfo]:
        """The workers (at most ``limit``, the latest beats), live first, then
        dead, then stopped, each with its state judged by the store's clock
        (:func:`~jobtrack.store.workers.worker_state`)."""
        ...

    async def throughput(self, *, since: datetime) -> list[ThroughputPoint]:
        """Items counted per throughput bucket, job type and stage, summed
        over the workers, from the bucket ``since`` falls in on, oldest first."""
        ...

    async def purge_workers(self, *, before: datetime) -> int:
        """Delete the workers last heard of (beat or stop) before ``before``,
        and the throughput buckets that start before it; returns how many
        workers were deleted."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...

    # The operator's overview (store.overview).

    async def count_by_type(self, *, stuck_before: datetime) -> list[TypeCounts]:
        """Per job type in the store, in name order, its jobs per status and
        its active jobs stuck (not written since ``stuck_before``), waiting
        and being re-driven (the rules of :mod:`jobtrack.store.overview`),
        read in one query."""
        ...

    async def list_watched(self, query: WatchQuery) -> list[Watched]:
        """Active jobs stuck, waiting or being re-driven (as ``query``
        filters them), newest first (by creation, ties by id), each with the
        monitor's latest action on it, read in one query."""
        ...


def check_event(kind: str, message: str) -> str:
    """Refuse an event without a kind; the message, cut to ``MAX_EVENT_MESSAGE``."""
    if not kind or len(kind) > 50:
        raise InvalidRequest(f"an event kind must have 1 to 50 characters, not {kind!r}")
    return message[:MAX_EVENT_MESSAGE]
