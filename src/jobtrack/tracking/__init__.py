"""The tracking core: the consumer-facing ProgressTracker."""

from jobtrack.tracking.tracker import PendingIncrement, ProgressTracker

__all__ = ["PendingIncrement", "ProgressTracker"]
