"""Time and identity: the two things every store needs from outside."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "new_id", "utc_now"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new random job id (32 hex digits)."""
    return uuid.uuid4().hex
