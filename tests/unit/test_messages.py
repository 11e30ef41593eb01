"""The item message decoder refuses what no store can hold (what the
collection scan's items travel in, as any job type's)."""

from __future__ import annotations

import json

import pytest

from jobtrack.errors import MalformedMessage
from jobtrack.jobs.messages import MAX_FIELD_LENGTH, ItemMessage, brief, decode_item, encode_item

GOOD: dict[str, str] = {
    "job_id": "j1",
    "job_type": "collection-scan",
    "stage": "thumbnail",
    "key": "i1",
}
NAMES = ("job_id", "job_type", "stage")


def body(**fields: object) -> bytes:
    return json.dumps(GOOD | fields).encode()


def test_a_good_message_round_trips() -> None:
    message = ItemMessage("j1", "collection-scan", "thumbnail", "i1")
    assert decode_item(encode_item(message)) == message


@pytest.mark.parametrize("field", sorted(GOOD))
def test_a_nul_byte_in_any_field_is_refused(field: str) -> None:
    with pytest.raises(MalformedMessage) as refused:
        decode_item(body(**{field: "a\x00b"}))
    name = "an item key" if field == "key" else field
    assert str(refused.value) == f"item message: {name} must not contain NUL characters"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\udc00b"])
def test_an_escaped_lone_surrogate_is_refused(escape: str) -> None:
    raw = body().replace(b'"j1"', f'"{escape}"'.encode())
    with pytest.raises(MalformedMessage, match=r"^malformed item message: JSON is malformed"):
        decode_item(raw)


@pytest.mark.parametrize("encoded", [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\xff"])
def test_invalid_utf8_inside_a_string_is_refused(encoded: bytes) -> None:
    raw = body().replace(b'"j1"', b'"' + encoded + b'"')
    with pytest.raises(MalformedMessage) as refused:
        decode_item(raw)
    assert str(refused.value).startswith("malformed item message: 'utf-8' codec can't decode")


@pytest.mark.parametrize("field", NAMES)
def test_a_field_past_the_length_bound_is_refused(field: str) -> None:
    assert decode_item(body(**{field: "x" * MAX_FIELD_LENGTH})).key == "i1"
    with pytest.raises(MalformedMessage) as refused:
        decode_item(body(**{field: "x" * (MAX_FIELD_LENGTH + 1)}))
    assert str(refused.value) == (
        f"item message whose {field} has {MAX_FIELD_LENGTH + 1} characters"
        f" (1 to {MAX_FIELD_LENGTH})"
    )


def test_a_huge_malformed_body_gives_a_short_reason() -> None:
    raw = b'{"job_id": "' + b"x" * 10_000_000 + b'\xff"}'
    with pytest.raises(MalformedMessage) as refused:
        decode_item(raw)
    assert len(str(refused.value)) < 200


def test_brief_bounds_any_text() -> None:
    assert brief("short") == "short"
    long = brief("x" * 10_000_000)
    assert len(long) == 300
    assert long.endswith("… (10000000 characters)")
