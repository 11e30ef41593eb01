"""Users' own jobs: job types and their handlers (:mod:`.types`)."""

from jobtrack.jobs.types import Executor, Handler, Item, JobType, Retry, StageHandler

__all__ = ["Executor", "Handler", "Item", "JobType", "Retry", "StageHandler"]
