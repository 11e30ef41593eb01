"""Text every backend can store: the checks on job ids, stage names and item keys."""

from __future__ import annotations

__all__ = ["MAX_KEY_LENGTH", "key_problem", "text_problem"]

MAX_KEY_LENGTH = 1000


def text_problem(text: str, what: str) -> str | None:
    """Why ``text`` (a job id, a stage name, an item key: ``what``) cannot be
    stored as text by every backend, or None: PostgreSQL refuses NUL
    characters, and no engine takes a lone surrogate (it is not UTF-8)."""
    if "\x00" in text:
        return f"{what} must not contain NUL characters"
    try:
        text.encode()
    except UnicodeEncodeError:
        return f"{what} must be valid Unicode, not a lone surrogate"
    return None


def key_problem(key: str) -> str | None:
    """Why an item key cannot be stored by every backend, or None."""
    if not key:
        return "an item key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"an item key must not exceed {MAX_KEY_LENGTH} characters"
    return text_problem(key, "an item key")
