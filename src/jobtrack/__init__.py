"""jobtrack: progress tracking for multi-stage background jobs that stays true
under crashes, redelivery and outages.

The names below are the public surface: an :class:`App` holds the store, the
broker, the tracker and the job types registered with it (:class:`JobType`,
whose handlers take an :class:`Item`); :meth:`App.start_job` produces a job,
:class:`Worker` works on it, :meth:`App.monitor` watches over it. The
reference application (collection scans) lives in :mod:`jobtrack.pipeline`.
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
from jobtrack.jobs import Item, JobType, Retry
from jobtrack.jobs.producer import JobProducer
from jobtrack.model import Job, JobStatus, Stage, StageCounts, StageStatus
from jobtrack.runtime import App, Settings, Worker
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
from jobtrack.store.ledger import ItemFailure, LedgerItem
from jobtrack.tracking import ProgressTracker, Receipt

__version__ = version("jobtrack")

__all__ = [
    "App",
    "InMemoryJobStore",
    "Increment",
    "InvalidIncrement",
    "InvalidRequest",
    "Item",
    "ItemFailure",
    "Job",
    "JobNotFound",
    "JobProducer",
    "JobQuery",
    "JobStatus",
    "JobStore",
    "JobType",
    "JobtrackError",
    "LedgerItem",
    "NotFound",
    "ProgressResult",
    "ProgressTracker",
    "Receipt",
    "Retry",
    "Settings",
    "SqliteJobStore",
    "Stage",
    "StageCounts",
    "StageNotFound",
    "StageProgress",
    "StageStatus",
    "StoreError",
    "StoreUnavailable",
    "Worker",
    "__version__",
    "open_store",
]
