"""What the monitor needs from a job type: its ground truth, whether its work
may still be queued, and a way to publish missing items again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jobtrack.model import Job, StageCounts

__all__ = ["Reconciler", "Truth"]


@dataclass(frozen=True, slots=True)
class Truth:
    """A job's stages as they really are.

    ``done`` holds, per stage, the keys of the items the counts hold (done
    or failed); ``missing`` the keys of the items still to do.
    """

    counts: Mapping[str, StageCounts]
    done: Mapping[str, Sequence[str]] = field(default_factory=dict)
    missing: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def missing_items(self) -> int:
        """How many items are missing, over every stage."""
        return sum(len(keys) for keys in self.missing.values())


class Reconciler(Protocol):
    """The monitor's view of one job type."""

    @property
    def job_type(self) -> str:
        """The type of the jobs this reconciler knows."""
        ...

    async def truth(self, job: Job) -> Truth:
        """The job's true counts, from what was really produced."""
        ...

    async def backlog(self) -> Mapping[str, int]:
        """Per stage, the work queued or in flight. A stuck job whose missing
        items are of a stage with a backlog may be waiting behind it: slow,
        not stuck."""
        ...

    @property
    def can_redrive(self) -> bool:
        """Whether :meth:`redrive` can publish anything (a broker is there)."""
        ...

    async def redrive(self, job: Job, missing: Mapping[str, Sequence[str]]) -> int:
        """Publish the missing items again; how many were published."""
        ...
