"""Whether a backlog is being consumed: when each stage's backlog last shrank.

The monitor reads every stage's backlog (work queued or in flight) once per
cycle and keeps, per stage, the size it last saw and when it last saw it
shrink. A job behind a backlog that shrank within ``stuck_after`` is slow
and left alone; behind one that has not shrunk for ``stuck_after`` (its
workers are gone), with the job not moving either, it is stuck.

This memory lives in the monitor's process, from cycle to cycle. So that a
monitor that restarts (or runs ``--once`` from a scheduler) does not start
every backlog afresh, the ``waiting`` event the monitor records when it
leaves a job alone carries the backlog per stage and since when it had not
shrunk (:meth:`BacklogWatch.snapshot`); a monitor that has not itself seen a
stage shrink takes that older time, as long as the backlog is no smaller
than the event recorded (:meth:`BacklogWatch.not_shrunk_since`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["BacklogWatch"]


@dataclass(slots=True)
class _Seen:
    size: int
    since: datetime  # when it last shrank, or when this process first saw it
    shrank: bool  # whether this process saw it shrink


class BacklogWatch:
    """Per (job type, stage): the backlog's last size, and since when it has
    not shrunk."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], _Seen] = {}

    def observe(self, job_type: str, backlog: Mapping[str, int], now: datetime) -> None:
        """Record one reading of a job type's backlogs (once per cycle)."""
        for stage, size in backlog.items():
            seen = self._seen.get((job_type, stage))
            if seen is None:
                self._seen[(job_type, stage)] = _Seen(size, now, shrank=False)
            elif size < seen.size:
                seen.size, seen.since, seen.shrank = size, now, True
            else:
                seen.size = size

    def not_shrunk_since(
        self, job_type: str, stage: str, recorded: Mapping[str, Any] | None
    ) -> datetime | None:
        """Since when the stage's backlog has not shrunk (None if never
        observed). ``recorded`` is the data of the job's last ``waiting``
        event, written by this or another monitor: its older time counts
        when this process has not seen the backlog shrink, and the backlog
        is no smaller now than it was then."""
        seen = self._seen.get((job_type, stage))
        if seen is None:
            return None
        if seen.shrank or recorded is None:
            return seen.since
        size = recorded.get("backlog", {}).get(stage)
        since = recorded.get("since", {}).get(stage)
        if not isinstance(size, int) or not isinstance(since, str) or seen.size < size:
            return seen.since
        try:
            then = datetime.fromisoformat(since)
        except ValueError:
            return seen.since
        return min(then, seen.since)

    @staticmethod
    def snapshot(backlog: Mapping[str, int], since: Mapping[str, datetime]) -> dict[str, Any]:
        """The data a ``waiting`` event carries: per stage the backlog, and
        since when it had not shrunk (ISO 8601)."""
        return {
            "backlog": dict(backlog),
            "since": {stage: at.isoformat() for stage, at in since.items()},
        }
