"""The stage message: what the scanner publishes for each image and stage.

Versioned and validated on receipt; anything that does not decode is a
:class:`~jobtrack.errors.MalformedMessage`, for the dead-letter queue. The
decoder also refuses what no store can hold (a NUL byte, a lone surrogate,
a field past :data:`MAX_FIELD_LENGTH`), so that such a message is
dead-lettered with its reason before it reaches the catalog or the tracker,
where it would fail a write shared with other items.
"""

from __future__ import annotations

import msgspec

from jobtrack.errors import MalformedMessage

__all__ = [
    "MAX_FIELD_LENGTH",
    "MESSAGE_VERSION",
    "StageMessage",
    "brief",
    "decode_message",
    "encode_message",
]

MESSAGE_VERSION = 1

MAX_FIELD_LENGTH = 200
"""The most characters an id or stage name of a message may have (ids are
32 hex digits or fewer; the bound keeps keys indexable and log lines short)."""

_BRIEF_LENGTH = 300
_FIELDS = ("job_id", "collection_id", "image_id", "stage")


class StageMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Make ``stage``'s artifact of one image, for one job."""

    job_id: str
    collection_id: str
    image_id: str
    stage: str
    attempt: int = 1
    v: int = MESSAGE_VERSION

    @property
    def item_key(self) -> str:
        """The key that makes this item count once per job and stage."""
        return self.image_id


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StageMessage)


def encode_message(message: StageMessage) -> bytes:
    """The message as JSON bytes."""
    return _encoder.encode(message)


def decode_message(body: bytes) -> StageMessage:
    """Decode and validate a message.

    Raises:
        MalformedMessage: the body is not a stage message of this version, or
            a field is empty, holds a NUL byte or a lone surrogate, or is
            longer than :data:`MAX_FIELD_LENGTH`; the reason is short
            whatever the body's size.
    """
    try:
        message = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        # A UnicodeDecodeError's repr holds the whole body: only its text is used.
        raise MalformedMessage(f"malformed stage message: {brief(str(exc))}") from exc
    if message.v != MESSAGE_VERSION:
        raise MalformedMessage(f"unsupported message version {message.v}")
    for field in _FIELDS:
        _check_field(field, getattr(message, field))
    if message.attempt < 1:
        raise MalformedMessage(f"stage message with attempt {message.attempt}")
    return message


def _check_field(field: str, value: str) -> None:
    if not value:
        raise MalformedMessage("stage message with an empty id or stage")
    if len(value) > MAX_FIELD_LENGTH:
        raise MalformedMessage(
            f"stage message whose {field} has {len(value)} characters (at most {MAX_FIELD_LENGTH})"
        )
    if "\x00" in value:
        raise MalformedMessage(f"stage message with a NUL byte in {field}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise MalformedMessage(f"stage message with a lone surrogate in {field}") from None


def brief(text: str, limit: int = _BRIEF_LENGTH) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was:
    what is logged or sent on of a message's content or an error's text."""
    if len(text) <= limit:
        return text
    tail = f"… ({len(text)} characters)"
    return text[: max(limit - len(tail), 0)] + tail
