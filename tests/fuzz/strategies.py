"""Hypothesis settings and strategies the fuzz tests share: JSON values of
every kind a peer could send (huge integers, NaN, lone surrogates, deep
nesting), and the text every store can hold."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jobtrack.jobs.messages import MAX_ATTEMPT, MAX_FIELD_LENGTH, ItemMessage
from jobtrack.store.text import MAX_KEY_LENGTH


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic runs (the same examples every time, no example
    database), no deadline: a fuzz test is a regression test. For a longer
    hunt, ``JOBTRACK_FUZZ_SCALE=10`` runs ten times the examples."""
    return settings(
        max_examples=max_examples * int(os.environ.get("JOBTRACK_FUZZ_SCALE", "1")),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


#: Text every store can hold: no NUL, no lone surrogate.
storable_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")

#: Integers past every fixed width a decoder or a database might assume.
edge_integers = st.one_of(
    st.integers(),
    st.sampled_from(
        [0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 2**70, 10**30, -(10**30)]
    ),
)

#: Any text, lone surrogates and NUL included.
any_text = st.one_of(
    st.text(),
    st.lists(
        st.sampled_from(["\x00", "\ud800", "\udfff", "é", "😀", "..", "/", "\\", '"', "%"]),
        max_size=8,
    ).map("".join),
    st.text(min_size=MAX_FIELD_LENGTH - 2, max_size=MAX_FIELD_LENGTH + 2),
)

#: Any JSON value Python's ``json`` writes, NaN and infinities included.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | edge_integers
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)

#: JSON values every encoder takes back: no NaN, no lone surrogate, 64-bit integers.
plain_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(storable_chars),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(storable_chars), children, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``depth`` lists: past any recursion limit."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def dumps(value: Any) -> bytes:
    """JSON bytes, as a careless peer writes them: NaN as ``NaN``, lone
    surrogates escaped, deep nesting kept."""
    return json.dumps(value, allow_nan=True).encode()


names = st.text(storable_chars, min_size=1, max_size=MAX_FIELD_LENGTH)
keys = st.text(storable_chars, min_size=1, max_size=40) | st.text(
    storable_chars, min_size=MAX_KEY_LENGTH, max_size=MAX_KEY_LENGTH
)

#: Valid item messages.
item_messages = st.builds(
    ItemMessage,
    job_id=names,
    job_type=names,
    stage=names,
    key=keys,
    payload=plain_json,
    attempt=st.integers(min_value=1, max_value=MAX_ATTEMPT),
)
