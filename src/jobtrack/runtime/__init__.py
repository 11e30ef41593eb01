"""Wiring: builds store, broker, consumers and scanner from settings."""

from jobtrack.runtime.embedded import EmbeddedRuntime, ScanOutcome
from jobtrack.runtime.settings import Settings, default_data_dir
from jobtrack.runtime.worker import Worker

__all__ = ["EmbeddedRuntime", "ScanOutcome", "Settings", "Worker", "default_data_dir"]
