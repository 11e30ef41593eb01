"""The fallback monitor: finds stuck jobs, reconciles them against the
ground truth, re-drives what is missing and fails what cannot finish."""

from jobtrack.monitor.base import Reconciler, Truth
from jobtrack.monitor.monitor import CycleReport, Monitor, describe_changes

__all__ = ["CycleReport", "Monitor", "Reconciler", "Truth", "describe_changes"]
