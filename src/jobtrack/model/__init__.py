"""Pure domain model: jobs, stages, statuses and their transition rules. No I/O."""

from jobtrack.model.clock import Clock, new_id, utc_now
from jobtrack.model.job import RESERVED_ATTRIBUTES, Job, JobEvent, Stage, StageCounts
from jobtrack.model.rules import (
    MAX_INCREMENT,
    apply_increment,
    check_increment,
    default_completed,
    derive_job_status,
    derive_stage_status,
    raise_total,
    seal_total,
    set_counts,
    start_stage,
)
from jobtrack.model.status import ACTIVE_JOB_STATUSES, JobStatus, StageStatus

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "MAX_INCREMENT",
    "RESERVED_ATTRIBUTES",
    "Clock",
    "Job",
    "JobEvent",
    "JobStatus",
    "Stage",
    "StageCounts",
    "StageStatus",
    "apply_increment",
    "check_increment",
    "default_completed",
    "derive_job_status",
    "derive_stage_status",
    "new_id",
    "raise_total",
    "seal_total",
    "set_counts",
    "start_stage",
    "utc_now",
]
