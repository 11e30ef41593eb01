"""Text of a message or an error, bounded before it is logged or sent on."""

from __future__ import annotations

__all__ = ["brief"]

_BRIEF_LENGTH = 300


def brief(text: str, limit: int = _BRIEF_LENGTH) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was:
    what is logged or sent on of a message's content or an error's text."""
    if len(text) <= limit:
        return text
    tail = f"… ({len(text)} characters)"
    return text[: max(limit - len(tail), 0)] + tail
