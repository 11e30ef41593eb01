"""Wiring: builds store, broker, consumers and scanner from settings."""

from jobtrack.runtime.embedded import EmbeddedRuntime, ScanOutcome
from jobtrack.runtime.settings import Settings, default_data_dir

__all__ = ["EmbeddedRuntime", "ScanOutcome", "Settings", "default_data_dir"]
