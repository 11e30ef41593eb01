"""The JSON of the operator's overview (``GET /api/overview``) and of the
watch list (``GET /api/watch``), from what the store reads
(:mod:`jobtrack.store.overview`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from jobtrack.store import TypeCounts, Watched, WatchState

__all__ = ["overview_json", "reason_of", "watched_json"]

_COUNTED = [f.name for f in fields(TypeCounts) if f.name != "job_type"]


def _counts_json(counts: TypeCounts) -> dict[str, Any]:
    return {
        "job_type": counts.job_type,
        "active": counts.active,
        **{name: getattr(counts, name) for name in _COUNTED},
    }


def overview_json(counts: Sequence[TypeCounts], stuck_after: float) -> dict[str, Any]:
    """Per job type and over all of them, as ``OverviewOut``."""
    totals = TypeCounts("", **{name: sum(getattr(c, name) for c in counts) for name in _COUNTED})
    return {
        "types": [_counts_json(c) for c in counts],
        "totals": _counts_json(totals),
        "stuck_after": stuck_after,
    }


def _seconds(seconds: float) -> str:
    """A duration in words, to the second: ``42 s``, ``7 min 5 s``, ``3 h 2 min``."""
    whole = max(int(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def reason_of(watched: Watched, *, now: datetime, stuck_after: float) -> str:
    """Why the job is on the watch list, in words, worst first."""
    reasons = []
    for state in watched.states:
        if state is WatchState.STUCK:
            quiet = _seconds((now - watched.updated_at).total_seconds())
            reasons.append(f"stuck: not written for {quiet} (stuck after {_seconds(stuck_after)})")
        elif state is WatchState.REDRIVING:
            reasons.append("re-driven by the monitor, which found it stuck")
        else:
            reasons.append("waiting behind a backlog being consumed")
    return "; ".join(reasons)


def watched_json(watched: Watched, *, now: datetime, stuck_after: float) -> dict[str, Any]:
    """One job of the watch list, as ``WatchedOut``."""
    return {
        "id": watched.job_id,
        "job_type": watched.job_type,
        "status": watched.status.value,
        "message": watched.message,
        "created_at": _iso(watched.created_at),
        "updated_at": _iso(watched.updated_at),
        "states": [state.value for state in watched.states],
        "reason": reason_of(watched, now=now, stuck_after=stuck_after),
        "action": None if watched.action is None else watched.action.to_dict(),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
