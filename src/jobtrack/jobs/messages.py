"""The item message: what travels on a job type's stage queue, one per item.

Versioned and validated on receipt; anything that does not decode is a
:class:`~jobtrack.errors.MalformedMessage`, for the dead-letter queue with
its reason. The decoder refuses what no store can hold (a NUL byte, a lone
surrogate, an id past :data:`MAX_FIELD_LENGTH`, a key past the store's
bound, an ``attempt`` past :data:`MAX_ATTEMPT`), so such a message never
reaches the tracker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from jobtrack.errors import MalformedMessage
from jobtrack.store.ledger import LedgerItem
from jobtrack.store.text import key_problem, text_problem

__all__ = [
    "ITEM_MESSAGE_VERSION",
    "MAX_ATTEMPT",
    "MAX_FIELD_LENGTH",
    "ItemMessage",
    "brief",
    "decode_item",
    "encode_item",
    "item_bodies",
]

ITEM_MESSAGE_VERSION = 1

MAX_FIELD_LENGTH = 200
"""The most characters a job id, job type or stage name of a message may have."""

MAX_ATTEMPT = 2**31 - 1
"""The highest ``attempt`` a message may carry: what a store's failure
record holds (PostgreSQL's ``integer``)."""

_BRIEF = 300


class ItemMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Do ``stage`` of the item ``key`` (its ``payload``) for one job."""

    job_id: str
    job_type: str
    stage: str
    key: str
    payload: Any = None
    attempt: int = 1
    v: int = ITEM_MESSAGE_VERSION


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ItemMessage)


def encode_item(message: ItemMessage) -> bytes:
    """The message as JSON bytes."""
    return _encoder.encode(message)


def decode_item(body: bytes) -> ItemMessage:
    """Decode and validate an item message.

    Raises:
        MalformedMessage: the body is not an item message of this version,
            or an id, stage or key is empty, holds a NUL byte or a lone
            surrogate, or is too long, its payload is nested deeper than
            the interpreter's recursion limit, or its ``attempt`` is not
            1 to :data:`MAX_ATTEMPT`; the reason is short whatever the
            body's size.
    """
    try:
        message = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"malformed item message: {brief(str(exc))}") from exc
    except RecursionError:  # msgspec recurses once per level of a payload's nesting
        raise MalformedMessage("malformed item message: its payload is nested too deep") from None
    if message.v != ITEM_MESSAGE_VERSION:
        raise MalformedMessage(f"unsupported item message version {message.v}")
    for name in ("job_id", "job_type", "stage"):
        value = getattr(message, name)
        if not value or len(value) > MAX_FIELD_LENGTH:
            raise MalformedMessage(
                f"item message whose {name} has {len(value)} characters (1 to {MAX_FIELD_LENGTH})"
            )
        problem = text_problem(value, name)
        if problem is not None:
            raise MalformedMessage(f"item message: {problem}")
    problem = key_problem(message.key)
    if problem is not None:
        raise MalformedMessage(f"item message: {problem}")
    if not 1 <= message.attempt <= MAX_ATTEMPT:
        raise MalformedMessage(
            f"item message with attempt {brief(str(message.attempt), 40)} (1 to {MAX_ATTEMPT})"
        )
    return message


def brief(text: str, limit: int = _BRIEF) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was:
    what is logged or sent on of a message's content or an error's text."""
    if len(text) <= limit:
        return text
    tail = f"… ({len(text)} characters)"
    return text[: max(limit - len(tail), 0)] + tail


def item_bodies(job_id: str, job_type: str, stage: str, items: Iterable[LedgerItem]) -> list[bytes]:
    """One encoded :class:`ItemMessage` per ledger item of ``stage``: what
    the producer, a handler's discovered work and the monitor's re-drive
    publish. Raises nothing."""
    return [encode_item(ItemMessage(job_id, job_type, stage, i.key, i.payload)) for i in items]
