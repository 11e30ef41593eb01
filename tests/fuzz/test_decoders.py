"""Every decoder of what arrives from outside, fuzzed: the item message
(what every job type's consumers decode, the collection scan's included),
the integrations' task reference (a Celery header, a Dramatiq option, an RQ
job's meta) and ledger payload, and the stream's ``Last-Event-ID``.

Whatever the input, a decoder returns a valid value or raises its documented
error (for a message, :class:`MalformedMessage`: what the consumer
dead-letters), never anything else; a valid value encodes back to itself.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jobtrack.api.stream import since_header
from jobtrack.errors import InvalidRequest, MalformedMessage
from jobtrack.integrations.tasks import TaskCall, TaskRef
from jobtrack.jobs.messages import (
    ITEM_MESSAGE_VERSION,
    MAX_ATTEMPT,
    MAX_FIELD_LENGTH,
    ItemMessage,
    decode_item,
    encode_item,
)
from jobtrack.store import ChangeCursor
from jobtrack.store.text import key_problem, text_problem
from tests.fuzz.strategies import (
    any_text,
    dumps,
    edge_integers,
    fuzz_settings,
    item_messages,
    json_values,
    keys,
    names,
    nested,
    plain_json,
    storable_chars,
)

GOOD: dict[str, Any] = {
    "job_id": "j1",
    "job_type": "collection-scan",
    "stage": "thumbnail",
    "key": "i1",
    "payload": {"image_id": "i1"},
    "attempt": 1,
    "v": ITEM_MESSAGE_VERSION,
}
FIELDS = sorted(GOOD)
DEEP = 100_000  # levels of nesting: past the interpreter's recursion limit


def assert_valid(message: ItemMessage) -> None:
    """What the decoder promises of a message it returns."""
    assert isinstance(message, ItemMessage)
    assert message.v == ITEM_MESSAGE_VERSION
    for name in ("job_id", "job_type", "stage"):
        value = getattr(message, name)
        assert 1 <= len(value) <= MAX_FIELD_LENGTH
        assert text_problem(value, name) is None
    assert key_problem(message.key) is None
    assert 1 <= message.attempt <= MAX_ATTEMPT
    again = decode_item(encode_item(message))  # what a retry republishes decodes again
    assert again == message


def decoded_or_refused(body: bytes) -> None:
    refused: MalformedMessage | None = None
    try:
        message = decode_item(body)
    except MalformedMessage as exc:
        refused = exc
    if refused is not None:
        assert 0 < len(str(refused)) <= 400  # a dead letter's reason, short whatever the body
        return
    assert_valid(message)


def deep_payload(depth: int) -> bytes:
    return dumps({k: v for k, v in GOOD.items() if k != "payload"})[:-1] + (
        b', "payload": ' + b"[" * depth + b"]" * depth + b"}"
    )


@fuzz_settings(max_examples=400)
@given(body=st.binary(max_size=300))
@example(body=b"")
@example(body=b"\xef\xbb\xbf" + dumps(GOOD))
@example(body=dumps(GOOD)[:-1] + b',"job_id":"again"}')
def test_arbitrary_bytes_decode_or_are_refused(body: bytes) -> None:
    decoded_or_refused(body)


mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), json_values),
    st.tuples(st.just("set"), st.sampled_from(FIELDS), edge_integers),
    st.tuples(st.just("set"), st.sampled_from(FIELDS), any_text),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("add"), any_text, json_values),
)


def mutated(changes: list[tuple[str, str, Any]]) -> dict[str, Any]:
    fields = dict(GOOD)
    for kind, name, value in changes:
        if kind == "drop":
            fields.pop(name, None)
        else:
            fields[name] = value
    return fields


@fuzz_settings(max_examples=250)
@given(changes=st.lists(mutation, min_size=1, max_size=4))
@example(changes=[("set", "attempt", 2**40)])  # was accepted: the failure record overflowed
@example(changes=[("set", "attempt", 10**30)])
@example(changes=[("set", "attempt", 0)])
@example(changes=[("set", "v", 2**70)])
@example(changes=[("set", "payload", float("nan"))])
@example(changes=[("set", "key", "\ud800")])
@example(changes=[("set", "job_id", "a\x00b")])
@example(changes=[("add", "extra", 1)])
def test_near_valid_messages_decode_or_are_refused(changes: list[tuple[str, str, Any]]) -> None:
    decoded_or_refused(dumps(mutated(changes)))


@fuzz_settings(max_examples=60)
@given(depth=st.integers(min_value=1, max_value=DEEP))
@example(depth=DEEP)  # raised RecursionError, not MalformedMessage
def test_a_nested_payload_decodes_or_is_refused(depth: int) -> None:
    decoded_or_refused(deep_payload(depth))


def test_a_payload_nested_past_the_recursion_limit_is_malformed() -> None:
    with pytest.raises(MalformedMessage) as refused:
        decode_item(deep_payload(DEEP))
    assert str(refused.value) == "malformed item message: its payload is nested too deep"


@pytest.mark.parametrize("attempt", [2**31, 2**40, 2**63 - 1])
def test_an_attempt_past_what_a_store_records_is_malformed(attempt: int) -> None:
    with pytest.raises(MalformedMessage) as refused:
        decode_item(dumps(GOOD | {"attempt": attempt}))
    assert str(refused.value) == f"item message with attempt {attempt} (1 to {MAX_ATTEMPT})"
    assert decode_item(dumps(GOOD | {"attempt": MAX_ATTEMPT})).attempt == MAX_ATTEMPT


@fuzz_settings(max_examples=200)
@given(message=item_messages)
def test_valid_messages_round_trip(message: ItemMessage) -> None:
    body = encode_item(message)
    decoded = decode_item(body)
    assert decoded == message
    assert encode_item(decoded) == body
    assert decode_item(encode_item(msgspec.structs.replace(decoded, attempt=2))).attempt == 2


# -- the integrations' task reference and ledger payload --------------------

ref_fields = st.fixed_dictionaries(
    {},
    optional={
        "job": json_values | names | any_text,
        "stage": json_values | names | any_text,
        "key": json_values | keys | any_text,
    },
)
headers = st.one_of(
    json_values,
    ref_fields,
    ref_fields.map(lambda fields: json.dumps(fields, allow_nan=True)),
    st.binary(max_size=40),
    st.text(max_size=60),
)


def assert_valid_ref(ref: TaskRef) -> None:
    for value, what in ((ref.job_id, "job"), (ref.stage, "stage")):
        assert 1 <= len(value) <= MAX_FIELD_LENGTH
        assert text_problem(value, what) is None
    assert key_problem(ref.key) is None
    assert TaskRef.from_header(ref.header()) == ref
    assert TaskRef.from_header(json.dumps(ref.header())) == ref


@fuzz_settings(max_examples=300)
@given(value=headers)
@example(value="[" * DEEP)  # json.loads raised RecursionError
@example(value=nested(DEEP // 10))
@example(value={"job": "j\x00", "stage": "s", "key": "k"})  # was taken: no store keeps it
@example(value={"job": "j" * (MAX_FIELD_LENGTH + 1), "stage": "s", "key": "k"})
@example(value={"job": "j", "stage": "\ud800", "key": "k"})
@example(value="9" * 5000)
def test_a_task_reference_is_valid_or_none(value: Any) -> None:
    ref = TaskRef.from_header(value)
    if ref is not None:
        assert_valid_ref(ref)


@fuzz_settings(max_examples=200)
@given(job_id=names, stage=names, key=keys)
def test_task_references_round_trip(job_id: str, stage: str, key: str) -> None:
    assert_valid_ref(TaskRef(job_id, stage, key))


payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"task": any_text},
        optional={
            "args": json_values,
            "kwargs": json_values,
            "options": json_values,
            "id": json_values | any_text,
        },
    ),
)


@fuzz_settings(max_examples=150)
@given(payload=payloads)
@example(payload={"task": "t", "args": nested(DEEP // 10)})
def test_a_ledger_payload_is_a_task_call_or_refused(payload: Any) -> None:
    refused: InvalidRequest | None = None
    try:
        call = TaskCall.from_payload(payload)
    except InvalidRequest as exc:
        refused = exc
    if refused is not None:
        assert str(refused).startswith("not a task's ledger payload: ")
        assert len(str(refused)) <= 260
        return
    assert isinstance(call.task, str)
    assert isinstance(call.task_id, str)


@fuzz_settings(max_examples=100)
@given(
    task=st.text(storable_chars, min_size=1),
    args=st.lists(plain_json, max_size=3),
    kwargs=st.dictionaries(st.text(storable_chars), plain_json, max_size=3),
    options=st.dictionaries(st.text(storable_chars), plain_json, max_size=3),
    task_id=st.text(storable_chars),
)
def test_task_calls_round_trip(
    task: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any], task_id: str
) -> None:
    call = TaskCall(task, tuple(args), kwargs, options, task_id)
    try:
        payload = call.payload()
    except InvalidRequest:  # what the ledger cannot keep (a NUL inside a value, say)
        return
    assert TaskCall.from_payload(json.loads(json.dumps(payload))) == call


# -- the stream's Last-Event-ID -----------------------------------------------

cursor_texts = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"[0-9]{1,25}(-[0-9]{1,25}:[0-9]{1,25}:([0-9]{1,25}(,[0-9]{1,25}){0,4})?)?"),
    st.text(st.sampled_from("0123456789-:,"), max_size=40),
)


@fuzz_settings(max_examples=200)
@given(text=cursor_texts)
@example(text="9" * 5000)
@example(text="1-" + "9" * 5000 + ":1:")
@example(text="1-1:2:" + ",".join(["1"] * 20_000))
def test_a_last_event_id_is_a_cursor_or_none(text: str) -> None:
    cursor = since_header(text)
    if cursor is not None:
        assert isinstance(cursor, ChangeCursor)
        assert 0 <= cursor.seq < 2**63
        assert since_header(str(cursor)) == cursor
