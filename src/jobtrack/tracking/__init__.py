"""The tracking core: the consumer-facing ProgressTracker."""

from jobtrack.tracking.coalescer import Receipt
from jobtrack.tracking.tracker import ProgressTracker

__all__ = ["ProgressTracker", "Receipt"]
