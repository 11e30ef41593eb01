"""Property tests of the transition rules over arbitrary interleavings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from jobtrack.errors import InvalidRequest
from jobtrack.model import (
    JobStatus,
    Stage,
    StageStatus,
    apply_increment,
    derive_job_status,
    derive_stage_status,
    raise_total,
    seal_total,
)

NOW = datetime(2026, 11, 28, tzinfo=UTC)
STAGES = ("scan", "thumbnail", "cache")


@dataclass(frozen=True)
class Op:
    kind: str  # "inc", "raise" or "seal"
    stage: int
    completed: int = 0
    failed: int = 0


increments = st.builds(
    Op,
    kind=st.just("inc"),
    stage=st.integers(0, 2),
    completed=st.integers(0, 3),
    failed=st.integers(0, 2),
).filter(lambda op: op.completed + op.failed > 0)
raises = st.builds(Op, kind=st.just("raise"), stage=st.integers(0, 2), completed=st.integers(0, 5))
seals = st.builds(Op, kind=st.just("seal"), stage=st.integers(0, 2))
operations = st.lists(st.one_of(increments, raises, seals), max_size=60)


def step(stages: dict[str, Stage], op: Op) -> dict[str, Stage]:
    """Apply one operation as a store would."""
    name = STAGES[op.stage]
    stage = stages[name]
    try:
        if op.kind == "inc":
            changed = apply_increment(stage, NOW, completed=op.completed, failed=op.failed)
            return stages if changed is None else {**stages, name: changed}
        if op.kind == "raise":
            return {**stages, name: raise_total(stage, NOW, by=op.completed)}
        return {**stages, name: seal_total(stage, NOW)}
    except InvalidRequest:
        assert op.kind == "raise"
        assert stage.total_final
        return stages


def run(ops: list[Op]) -> list[tuple[dict[str, Stage], JobStatus]]:
    """Every intermediate state of a job the operations are applied to."""
    stages = {name: Stage(name=name) for name in STAGES}
    status = JobStatus.PENDING
    history = []
    for op in ops:
        stages = step(stages, op)
        status = derive_job_status(status, (s.status for s in stages.values()))
        history.append((stages, status))
    return history


@given(operations)
def test_counts_never_go_negative(ops: list[Op]) -> None:
    for stages, _ in run(ops):
        for stage in stages.values():
            assert min(stage.total_items, stage.completed_items, stage.failed_items) >= 0


@given(operations)
def test_no_stage_ends_before_its_total_is_final(ops: list[Op]) -> None:
    for stages, _ in run(ops):
        for stage in stages.values():
            if stage.status.terminal:
                assert stage.total_final
                assert stage.done_items >= stage.total_items
                assert stage.completed_at is not None
            else:
                assert stage.completed_at is None


@given(operations)
def test_job_completes_exactly_when_all_stages_do(ops: list[Op]) -> None:
    for stages, status in run(ops):
        all_completed = all(s.status is StageStatus.COMPLETED for s in stages.values())
        assert (status is JobStatus.COMPLETED) == all_completed


@given(operations)
def test_terminal_stages_stop_counting(ops: list[Op]) -> None:
    history = run(ops)
    for (before, _), (after, _) in itertools.pairwise(history):
        for name in STAGES:
            if before[name].status.terminal:
                assert after[name] == before[name]


def test_all_failed_items_fail_the_stage() -> None:
    assert derive_stage_status(total=3, completed=0, failed=3, total_final=True, started=True) is (
        StageStatus.FAILED
    )
    assert derive_stage_status(total=3, completed=1, failed=2, total_final=True, started=True) is (
        StageStatus.COMPLETED
    )
    assert derive_stage_status(total=0, completed=0, failed=0, total_final=True, started=False) is (
        StageStatus.COMPLETED
    )
    assert derive_stage_status(total=3, completed=3, failed=0, total_final=False, started=True) is (
        StageStatus.IN_PROGRESS
    )


def test_a_failed_stage_fails_the_job_once_all_stages_end() -> None:
    statuses = [StageStatus.COMPLETED, StageStatus.FAILED, StageStatus.IN_PROGRESS]
    assert derive_job_status(JobStatus.IN_PROGRESS, statuses) is JobStatus.IN_PROGRESS
    statuses[2] = StageStatus.COMPLETED
    assert derive_job_status(JobStatus.IN_PROGRESS, statuses) is JobStatus.FAILED
    assert derive_job_status(JobStatus.CANCELLED, [StageStatus.COMPLETED]) is JobStatus.CANCELLED
