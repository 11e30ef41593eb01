"""Shared fixtures: a frozen, steppable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest


class SteppingClock:
    """A clock tests move by hand; every reading is 1 ms after the last."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 28, 14, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


class FrozenClock(SteppingClock):
    """A clock that only moves when told to."""

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> SteppingClock:
    """A clock that starts at a fixed moment."""
    return SteppingClock()
