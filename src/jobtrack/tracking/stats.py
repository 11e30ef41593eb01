"""What this process's progress writes did, for metrics: every tracker in
the process adds to one ``WRITE_STATS``."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS", "WRITE_STATS", "WriteStats"]

#: Upper bounds (seconds) of the write-latency histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class WriteStats:
    """Progress writes: how many, how many items, how many failed, and a
    histogram of their latency (one write: a flush, or one item's increment)."""

    writes: int = 0
    items: int = 0
    failed_writes: int = 0
    latency_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def record(self, seconds: float, items: int) -> None:
        """One write that stored ``items`` items in ``seconds``."""
        self.writes += 1
        self.items += items
        self.latency_sum += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def failed(self) -> None:
        """One write the store did not take."""
        self.failed_writes += 1


WRITE_STATS = WriteStats()
