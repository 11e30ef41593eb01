"""What the monitor needs from a job type: its ground truth, whether its work
may still be queued, and a way to publish missing items again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from jobtrack.model import Job, StageCounts

__all__ = ["ItemHooks", "Reconciler", "Truth"]


@dataclass(frozen=True, slots=True)
class Truth:
    """A job's stages as they really are.

    ``done`` holds, per stage, the keys of the items the counts hold (done
    or failed): the stage's counted keys are set to exactly those; a stage
    not named keeps its counted keys (empty: the keys are the truth
    already). ``missing`` holds the keys of the items still to do.
    ``waiting_to_seal`` names the stages whose totals are not sealed for no
    fault of the job's (a discovered stage whose feeding stages have not
    completed): the monitor does not fail the job for them.
    """

    counts: Mapping[str, StageCounts]
    done: Mapping[str, Sequence[str]] = field(default_factory=dict)
    missing: Mapping[str, Sequence[str]] = field(default_factory=dict)
    waiting_to_seal: frozenset[str] = frozenset()

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


@runtime_checkable
class ItemHooks(Protocol):
    """What a reconciler whose items are kept one by one (a ledger) adds:
    the monitor calls these when the reconciler has them."""

    async def prepare(self, job: Job) -> Job:
        """Bring a stuck job up to date before it is judged (seal the
        stages that are ready); the job as it is then."""
        ...

    async def give_up(self, job: Job, missing: Mapping[str, Sequence[str]], reason: str) -> None:
        """The monitor failed the job with these items still missing: keep
        them as failed items, with ``reason``."""
        ...
