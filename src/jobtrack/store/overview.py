"""What an operator's first screen reads from the store: per job type, how
many jobs are active, stuck, waiting, being re-driven or failed
(:class:`TypeCounts`), and the list behind those counts (:class:`Watched`,
read with a :class:`WatchQuery`); and the search terms of a job list
(:class:`SearchField`, :func:`like_pattern`).

The rules, the same in every backend:

- *stuck*: an active job not written since ``stuck_before`` (the monitor's
  ``stuck_after`` ago), as :attr:`~jobtrack.store.base.StoreStats.stuck`;
- *waiting*: an active job whose latest ``waiting`` or ``redriven`` event
  is a ``waiting`` one (the monitor left it alone behind a backlog being
  consumed), as :attr:`~jobtrack.store.base.StoreStats.waiting`;
- *redriving*: an active job the monitor is re-driving: its latest
  ``waiting`` or ``redriven`` event is a ``redriven`` one, or it has none
  of those and was ``reconciled``.

A job may be stuck and waiting at once; each count, and each filter of the
list, holds every job that matches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from jobtrack.errors import InvalidRequest
from jobtrack.model import JobEvent, JobStatus

__all__ = [
    "MONITOR_ACTIONS",
    "WATCH_LIMIT",
    "SearchField",
    "TypeCounts",
    "WatchQuery",
    "WatchState",
    "Watched",
    "like_pattern",
    "watch_states",
]

#: The event kinds that are the monitor's actions on an active job.
MONITOR_ACTIONS = ("waiting", "redriven", "reconciled")
#: At most this many jobs in a page of the watch list.
WATCH_LIMIT = 200

_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,100}")


class WatchState(StrEnum):
    """Why an active job is on the watch list (see the module's rules)."""

    STUCK = "stuck"
    WAITING = "waiting"
    REDRIVING = "redriving"


@dataclass(frozen=True, slots=True)
class TypeCounts:
    """One job type's jobs: per status, and the active ones that are stuck,
    waiting or being re-driven."""

    job_type: str
    pending: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    stuck: int = 0
    waiting: int = 0
    redriving: int = 0

    @property
    def active(self) -> int:
        """Jobs pending or in progress."""
        return self.pending + self.in_progress


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """Filters and paging of :meth:`~jobtrack.store.base.JobStore.list_watched`:
    active jobs stuck (not written since ``stuck_before``), waiting or
    being re-driven; only those in ``state`` (None: any of them), of
    ``job_type`` (None: any); newest first."""

    stuck_before: datetime
    state: WatchState | None = None
    job_type: str | None = None
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.limit <= WATCH_LIMIT or self.offset < 0:
            raise InvalidRequest(
                f"a watch page takes 0 to {WATCH_LIMIT} jobs from an offset of 0 or more"
            )


@dataclass(frozen=True, slots=True)
class Watched:
    """An active job on the watch list: the job's own fields, which states
    it is in (:func:`watch_states`), and the monitor's latest action on it
    (its latest ``waiting``, ``redriven`` or ``reconciled`` event; None if
    the monitor has not acted on it yet)."""

    job_id: str
    job_type: str
    status: JobStatus
    message: str
    created_at: datetime
    updated_at: datetime
    stuck: bool
    waiting: bool
    redriving: bool
    action: JobEvent | None

    @property
    def states(self) -> list[WatchState]:
        """The states the job is in, worst first."""
        return watch_states(stuck=self.stuck, waiting=self.waiting, redriving=self.redriving)


def watch_states(*, stuck: bool, waiting: bool, redriving: bool) -> list[WatchState]:
    """The states named by these flags, worst first (stuck, redriving, waiting)."""
    flags = ((WatchState.STUCK, stuck), (WatchState.REDRIVING, redriving))
    return [state for state, on in (*flags, (WatchState.WAITING, waiting)) if on]


@dataclass(frozen=True, slots=True)
class SearchField:
    """A searchable field of one job type: a dotted ``path`` into the
    attributes of that type's jobs (``collection.path``); only string values
    are searched. Raises :class:`InvalidRequest` for a path that is not
    dot-separated names of letters, digits, ``-`` and ``_``."""

    job_type: str
    path: str

    def __post_init__(self) -> None:
        if not self.path or not all(_SEGMENT.fullmatch(part) for part in self.path.split(".")):
            raise InvalidRequest(
                f"a searchable field is a dotted path of names (letters, digits, '-', '_'),"
                f" not {self.path[:60]!r}"
            )

    @property
    def parts(self) -> tuple[str, ...]:
        """The path's names, outermost first."""
        return tuple(self.path.split("."))


def like_pattern(term: str) -> str:
    """A ``LIKE … ESCAPE '\\'`` pattern matching any text that contains
    ``term``, lowercased, its ``%``, ``_`` and ``\\`` taken literally."""
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
