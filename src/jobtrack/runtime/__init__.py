"""Wiring: builds store, broker, consumers and scanner from settings; the
services the command line and the API share (cancel)."""

from jobtrack.runtime.cancel import CancelOutcome, CancelResult, cancel_job
from jobtrack.runtime.embedded import EmbeddedRuntime, ScanOutcome
from jobtrack.runtime.settings import Settings, default_data_dir
from jobtrack.runtime.worker import Worker

__all__ = [
    "CancelOutcome",
    "CancelResult",
    "EmbeddedRuntime",
    "ScanOutcome",
    "Settings",
    "Worker",
    "cancel_job",
    "default_data_dir",
]
