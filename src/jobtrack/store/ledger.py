"""The item ledger's types: what a job must do, item by item.

Every item added to a job is recorded with its key and its JSON payload
(:meth:`~jobtrack.store.base.JobStore.add_items`); the ledger against the
counted keys tells which items are missing, and the payloads let the
monitor publish exactly those again. A failed item's error is kept beside
it (:meth:`~jobtrack.store.base.JobStore.record_failure`), so that a retry
re-drives the failed items alone. Rows go when their job has ended and the
retention has passed (:meth:`~jobtrack.store.base.JobStore.purge_ledger`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobtrack.errors import InvalidRequest
from jobtrack.store.text import MAX_KEY_LENGTH, key_problem

__all__ = [
    "MAX_LEDGER_BATCH",
    "MAX_PAYLOAD_BYTES",
    "ItemFailure",
    "LedgerItem",
    "LedgerTally",
    "check_items",
    "check_outcomes",
    "encode_payload",
    "storable_error",
]

#: The most items one :meth:`~jobtrack.store.base.JobStore.add_items` call takes.
MAX_LEDGER_BATCH = 10_000
#: The largest payload an item may carry, as compact JSON in UTF-8.
MAX_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LedgerItem:
    """One item of a job's stage: its key (what makes it count once) and its
    payload (any JSON value: what a handler needs to do it)."""

    key: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class LedgerTally:
    """One stage's ledger against its counts: ``items`` recorded, of which
    ``counted`` have their key counted (done or failed) or their outcome
    recorded (:meth:`~jobtrack.store.base.JobStore.record_outcomes`), of
    which ``failed`` failed (counted with a failure recorded, or recorded as
    failed); ``recorded`` of the counted are known by their outcome alone
    (their key not counted: the consumers' progress was off). Counted keys
    are known while the job is active only (an ended job's keys are
    dropped); outcomes stay with the ledger."""

    items: int
    counted: int
    failed: int
    recorded: int = 0

    @property
    def missing(self) -> int:
        """Items recorded but not counted."""
        return self.items - self.counted


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Why an item failed: its stage and key, the error, how many attempts
    it had, when it failed, and its payload from the ledger (None when the
    item is not in the ledger)."""

    stage: str
    key: str
    error: str
    attempts: int
    failed_at: datetime
    payload: Any = None


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _fast_encode() -> Callable[[Any], str]:
    """``_ENCODER.encode`` without its cost per call (a C encoder built
    each time, a third of a small payload's encoding): the C encoder built
    once, as ``json`` builds it, without circular-reference markers (a
    circular payload ends in RecursionError). ``_ENCODER.encode`` itself
    where the C encoder is missing or does not give the same text."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    try:
        chunks = make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            False,
            False,
            False,
        )

        def encode(payload: Any) -> str:
            return "".join(chunks(payload, 0))

        sample = {"k": [1, 2.5, None, True, "é\n"], "": {}}
        if encode(sample) != _ENCODER.encode(sample):
            return _ENCODER.encode
    except Exception:  # another Python's C encoder: the plain one
        return _ENCODER.encode
    return encode


_encode = _fast_encode()
# A NUL character in JSON text: the escape \u0000 not itself escaped (after
# an even number of backslashes); a raw NUL cannot occur, json escapes it.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def encode_payload(payload: Any) -> str:
    """The payload as compact JSON text.

    Raises:
        InvalidRequest: the payload is not JSON (a set, a float NaN, an
            object with non-string keys...), holds a NUL character, or is
            over :data:`MAX_PAYLOAD_BYTES`.
    """
    try:
        text = _encode(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"an item payload must be JSON: {exc}") from None
    if "\\u0000" in text and _NUL.search(text):
        raise InvalidRequest("an item payload must not contain NUL characters")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise InvalidRequest("an item payload must not contain lone surrogates") from None
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidRequest(
            f"an item payload must not exceed {MAX_PAYLOAD_BYTES} bytes of JSON ({size})"
        )
    return text


def check_items(items: Sequence[LedgerItem]) -> list[str]:
    """Check a batch for :meth:`~jobtrack.store.base.JobStore.add_items`;
    the payloads as JSON text, in order.

    Raises:
        InvalidRequest: more than :data:`MAX_LEDGER_BATCH` items, a key no
            store can hold, a key twice in the batch, or a payload that
            :func:`encode_payload` refuses; nothing of the batch is written.
    """
    if len(items) > MAX_LEDGER_BATCH:
        raise InvalidRequest(f"at most {MAX_LEDGER_BATCH} items a batch, not {len(items)}")
    if not _plain_keys([item.key for item in items]):
        seen: set[str] = set()
        for item in items:
            key = item.key
            problem = key_problem(key) if isinstance(key, str) else "an item key must be text"
            if problem is not None:
                raise InvalidRequest(problem)
            if key in seen:
                raise InvalidRequest(f"item key {key[:100]!r} is twice in the batch")
            seen.add(key)
    return [encode_payload(item.payload) for item in items]


def check_outcomes(done_keys: Collection[str], failed_keys: Collection[str]) -> list[str]:
    """Check the keys of a :meth:`~jobtrack.store.base.JobStore.record_outcomes`
    call; every key, done ones first, each once.

    Raises:
        InvalidRequest: more than :data:`MAX_LEDGER_BATCH` keys, a key no
            store can hold, or a key both done and failed.
    """
    done = list(dict.fromkeys(done_keys))
    failed = list(dict.fromkeys(failed_keys))
    keys = done + failed
    if len(keys) > MAX_LEDGER_BATCH:
        raise InvalidRequest(f"at most {MAX_LEDGER_BATCH} outcomes a call, not {len(keys)}")
    if not _plain_keys(keys):
        seen: set[str] = set()
        for key in keys:
            problem = key_problem(key) if isinstance(key, str) else "an item key must be text"
            if problem is not None:
                raise InvalidRequest(problem)
            if key in seen:
                raise InvalidRequest(f"item key {key[:100]!r} is both done and failed")
            seen.add(key)
    return keys


def _plain_keys(keys: list[str]) -> bool:
    """True when every key is storable text and none is twice, told in a few
    passes over the whole batch; False: look at each key."""
    if not keys:
        return True
    if not all(type(key) is str for key in keys) or len(set(keys)) != len(keys):
        return False
    if min(map(len, keys)) == 0 or max(map(len, keys)) > MAX_KEY_LENGTH:
        return False
    text = "".join(keys)
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def storable_error(error: str, limit: int) -> str:
    """A failure's error as every backend keeps it: NUL characters (which
    PostgreSQL text refuses) as U+FFFD, lone surrogates (not UTF-8) as
    ``?``, cut to ``limit`` characters. Raises nothing."""
    cleaned = error.replace("\x00", "\ufffd")
    try:
        cleaned.encode()
    except UnicodeEncodeError:
        cleaned = cleaned.encode(errors="replace").decode()
    return cleaned[:limit]
