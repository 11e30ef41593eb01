"""jobtrack: progress tracking for multi-stage background jobs that stays true
under crashes, redelivery and outages.

The names below are the public surface; the reference application (collection
scans) lives in :mod:`jobtrack.pipeline`, its wiring in :mod:`jobtrack.runtime`.
"""

from importlib.metadata import version

from jobtrack.errors import (
    InvalidIncrement,
    InvalidRequest,
    JobNotFound,
    JobtrackError,
    NotFound,
    StageNotFound,
    StoreError,
    StoreUnavailable,
)
from jobtrack.model import Job, JobStatus, Stage, StageCounts, StageStatus
from jobtrack.store import (
    Increment,
    InMemoryJobStore,
    JobQuery,
    JobStore,
    ProgressResult,
    SqliteJobStore,
    StageProgress,
    open_store,
)
from jobtrack.tracking import ProgressTracker, Receipt

__version__ = version("jobtrack")

__all__ = [
    "InMemoryJobStore",
    "Increment",
    "InvalidIncrement",
    "InvalidRequest",
    "Job",
    "JobNotFound",
    "JobQuery",
    "JobStatus",
    "JobStore",
    "JobtrackError",
    "NotFound",
    "ProgressResult",
    "ProgressTracker",
    "Receipt",
    "SqliteJobStore",
    "Stage",
    "StageCounts",
    "StageNotFound",
    "StageProgress",
    "StageStatus",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "open_store",
]
