"""The tracking core: the consumer-facing ProgressTracker."""

from jobtrack.tracking.receipt import Outcome, Receipt
from jobtrack.tracking.tracker import ProgressTracker

__all__ = ["Outcome", "ProgressTracker", "Receipt"]
