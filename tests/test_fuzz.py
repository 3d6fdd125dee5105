"""Property-based fuzzing (hypothesis) of the decoder/validator and of the batch logic:
no input crashes them, every rejection has a reason, valid events in the same batch are
answered as if the bad ones were not there."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.baseline import CooccurrenceModel
from streamrec.events import EVENT_TYPES, Event, Rejected, decode_event, validator
from streamrec.pipeline import Record, process_batch
from streamrec.ranking import CooccurrenceRanker
from streamrec.topology import WorkerSpec

NOW = 1_800_000_000_000
# JSON encoders refuse integers past 64 bits; such literals are in BIG below instead.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=50),
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=20,
)
valid_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=20),
        "user_id": st.text(min_size=1, max_size=20),
        "item_id": st.text(min_size=1, max_size=20),
        "event_type": st.sampled_from([t for t in EVENT_TYPES if t != "search"]),
        "timestamp": st.integers(631152000000, NOW),
    },
    optional={
        "value": st.floats(-1e6, 1e6),
        "session_id": st.text(max_size=20),
        "context": st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
    },
)
FIELDS = [
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "timestamp",
    "value",
    "query",
    "context",
    "session_id",
    "surprise",
]


@st.composite
def mutated(draw) -> bytes:
    """A valid event with one field replaced, removed or added: wrong types, huge strings
    and arrays, deep nesting, far timestamps, unknown types."""
    doc = dict(draw(valid_events))
    field = draw(st.sampled_from(FIELDS))
    action = draw(st.sampled_from(["replace", "remove", "huge", "deep", "time"]))
    if action == "remove":
        doc.pop(field, None)
    elif action == "huge":
        doc[field] = draw(st.sampled_from(["x" * 100_000, list(range(20_000))]))
    elif action == "deep":
        deep: object = 1
        for _ in range(draw(st.integers(10, 3000))):
            deep = [deep]
        return (
            orjson.dumps({k: v for k, v in doc.items() if k != field})[:-1]
            + b',"'
            + field.encode()
            + b'":'
            + _nest(deep)
            + b"}"
        )
    elif action == "time":
        doc["timestamp"] = draw(st.sampled_from([-1, 0, 10**18, NOW * 10, 1_700_000_000]))
    else:
        doc[field] = draw(json_values)
    return orjson.dumps(doc)


def _nest(value: object) -> bytes:
    depth = 0
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    return b"[" * depth + b"1" + b"]" * depth


BIG = [
    b'{"event_id":"e","user_id":"u","item_id":"i","event_type":"view","timestamp":1'
    + b"0" * 30
    + b"}",
    b'{"value": 1e999}',
    b'{"value": -Infinity}',
    b'{"a":"\\ud800"}',
]
raw_inputs = st.one_of(
    st.sampled_from(BIG),
    st.binary(max_size=300),
    mutated(),
    valid_events.map(orjson.dumps),
    json_values.map(lambda v: orjson.dumps(v)),
)


def check(data: bytes) -> Event | None:
    try:
        event = decode_event(data, now_ms=NOW)
    except Rejected as err:
        assert err.code in {"not_utf8", "not_json", "schema", "timestamp", "oversized"}
        assert err.message
        return None
    validator("event")(event.raw)
    assert isinstance(event.user_id, str) and isinstance(event.timestamp, int)
    return event


@settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)
@given(raw_inputs)
def test_decoder_never_crashes(data: bytes) -> None:
    check(data)


@given(valid_events)
@settings(max_examples=500, deadline=None)
def test_valid_events_always_decode(doc: dict) -> None:
    assert check(orjson.dumps(doc)) is not None


@pytest.fixture(scope="module")
def ranker(small_model: Path) -> CooccurrenceRanker:
    return CooccurrenceRanker(CooccurrenceModel.load(small_model), top_k=5)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(
    st.lists(
        st.tuples(raw_inputs, st.one_of(st.none(), st.binary(max_size=8))), min_size=1, max_size=25
    )
)
def test_bad_records_never_disturb_good_ones(ranker, batch) -> None:
    """Mixed batches: every record is answered, dead-lettered or re-keyed, exactly once;
    valid, correctly keyed events get the answer they get in a batch of their own."""
    records = [Record(key, value, "events", 0, n) for n, (value, key) in enumerate(batch)]
    result = process_batch(records, lambda u, r: None, ranker, WorkerSpec(), now_ms=NOW)
    assert result.answered + result.invalid + len(result.rekeyed) == len(records)
    for _, letter in result.dead_letters:
        doc = orjson.loads(letter)
        validator("dead_letter")(doc)
        assert doc["error"]
    good = [r for r in records if _is_valid_for_key(r)]
    assert result.answered == len(good)
    alone = process_batch(good, lambda u, r: None, ranker, WorkerSpec(), now_ms=NOW)

    def strip(recs: list[tuple[bytes, bytes]]) -> list[dict]:
        timeless = ("produced_at", "timings")  # wall-clock and batch-size fields
        return [{k: v for k, v in orjson.loads(x).items() if k not in timeless} for _, x in recs]

    assert strip(result.recommendations) == strip(alone.recommendations)


def _is_valid_for_key(rec: Record) -> bool:
    try:
        event = decode_event(rec.value, now_ms=NOW)
    except Rejected:
        return False
    return rec.key == event.user_id.encode()
