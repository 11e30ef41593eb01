"""Wiring: :class:`App`, the one composition root that builds store, catalog,
broker and tracker from :class:`Settings`; the scan runtime and the worker
built on it; the services the command line and the API share (cancel)."""

from jobtrack.runtime.app import App
from jobtrack.runtime.cancel import CancelOutcome, CancelResult, cancel_job
from jobtrack.runtime.embedded import EmbeddedRuntime, ScanOutcome
from jobtrack.runtime.settings import Settings, default_data_dir
from jobtrack.runtime.worker import Worker

__all__ = [
    "App",
    "CancelOutcome",
    "CancelResult",
    "EmbeddedRuntime",
    "ScanOutcome",
    "Settings",
    "Worker",
    "cancel_job",
    "default_data_dir",
]
