"""The stage message: what the scanner publishes for each image and stage.

Versioned and validated on receipt; anything that does not decode is a
:class:`~jobtrack.errors.MalformedMessage`, for the dead-letter queue.
"""

from __future__ import annotations

import msgspec

from jobtrack.errors import MalformedMessage

__all__ = ["MESSAGE_VERSION", "StageMessage", "decode_message", "encode_message"]

MESSAGE_VERSION = 1


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
    """Decode and validate a message; MalformedMessage if it is not one."""
    try:
        message = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"malformed stage message: {exc}") from exc
    if message.v != MESSAGE_VERSION:
        raise MalformedMessage(f"unsupported message version {message.v}")
    if not (message.job_id and message.collection_id and message.image_id and message.stage):
        raise MalformedMessage("stage message with an empty id or stage")
    if message.attempt < 1:
        raise MalformedMessage(f"stage message with attempt {message.attempt}")
    return message
