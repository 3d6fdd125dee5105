"""Codec and validation against the JSON Schemas in schemas/."""

from __future__ import annotations

import base64

import fastjsonschema
import orjson
import pytest

from streamrec.events import (
    EVENT_TYPES,
    Rejected,
    decode_event,
    encode_dead_letter,
    encode_event,
    encode_recommendation,
    load_schema,
    validator,
)

NOW = 1_800_000_000_000
GOOD = {
    "event_id": "e1",
    "user_id": "u1",
    "item_id": "i1",
    "event_type": "view",
    "timestamp": 1_700_000_000_000,
}


def enc(**change) -> bytes:
    doc = {**GOOD, **change}
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def code_of(data: bytes, **kw) -> str:
    with pytest.raises(Rejected) as info:
        decode_event(data, now_ms=NOW, **kw)
    assert info.value.message
    return info.value.code


def test_valid_event_decodes() -> None:
    e = decode_event(enc(value=4.5, session_id="s", context={"page": "home"}), now_ms=NOW)
    assert (e.event_id, e.user_id, e.item_id, e.event_type) == ("e1", "u1", "i1", "view")
    assert e.value == 4.5 and e.raw["context"] == {"page": "home"}


def test_every_event_type_in_schema_is_accepted() -> None:
    assert tuple(load_schema("event")["properties"]["event_type"]["enum"]) == EVENT_TYPES
    for t in EVENT_TYPES:
        extra = {"query": "shoes", "item_id": None} if t == "search" else {}
        assert decode_event(enc(event_type=t, **extra), now_ms=NOW).event_type == t


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "not_json"),
        (b'{"value": NaN}', "not_json"),
        (b"[1]", "schema"),
        (b"null", "schema"),
        (enc(user_id=None), "schema"),
        (enc(user_id=7), "schema"),
        (enc(event_type="teleport"), "schema"),
        (enc(timestamp=1_700_000_000), "schema"),  # seconds instead of ms
        (enc(timestamp=-1), "schema"),
        (enc(timestamp=1.5e12 + 0.5), "schema"),  # fractional ms
        (enc(surprise=True), "schema"),
        (enc(item_id=None), "schema"),  # only searches may omit item_id
        (enc(event_type="search", item_id=None), "schema"),  # ... but need a query
        (enc(value="5"), "schema"),
        (enc(timestamp=NOW + 2 * 86_400_000), "timestamp"),
    ],
)
def test_invalid_events_are_rejected_with_a_code(data: bytes, code: str) -> None:
    assert code_of(data) == code


def test_oversized_and_null_messages() -> None:
    assert code_of(enc(query="x" * 1000), max_bytes=500) == "oversized"
    assert code_of(None) == "schema"  # type: ignore[arg-type]


def test_deep_nesting_is_rejected_not_crashing() -> None:
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    assert code_of(deep) == "not_json"


def test_future_skew_is_configurable() -> None:
    data = enc(timestamp=NOW + 2 * 86_400_000)
    assert decode_event(data, now_ms=NOW, max_future_skew_ms=None).timestamp > NOW


def test_encode_event_validates() -> None:
    assert orjson.loads(encode_event(GOOD)) == GOOD
    with pytest.raises(Rejected):
        encode_event({**GOOD, "event_type": "nope"})


def test_recommendation_and_dead_letter_match_their_schemas() -> None:
    rec = orjson.loads(
        encode_recommendation(
            user_id="u1",
            event_id="e1",
            model_version="m1",
            source_ts=1,
            batch_size=3,
            batch_ms=1.5,
            items=[{"item_id": "i2", "score": 0.5, "reasons": ["because"]}],
        )
    )
    validator("recommendation")(rec)
    payload = b"\xff" * 100
    dead = orjson.loads(
        encode_dead_letter(
            error=Rejected("not_utf8", "bad bytes"),
            topic="t",
            partition=2,
            offset=9,
            key=b"k",
            value=payload,
            max_payload=40,
        )
    )
    validator("dead_letter")(dead)
    assert dead["truncated"] and dead["original_size"] == 100
    assert base64.b64decode(dead["value_b64"]) == payload[:40]
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("t", 2, 9)


def test_catalog_schema_compiles_and_checks() -> None:
    check = validator("catalog")
    check({"item_id": "i1", "title": "T", "attributes": {"genre": ["a", "b"], "year": 1999}})
    with pytest.raises(Exception, match=r"attributes\.genre"):
        check({"item_id": "i1", "attributes": {"genre": {"nested": 1}}})


def _outcome(validate, doc) -> str:
    try:
        validate(doc)
    except fastjsonschema.JsonSchemaException as exc:
        return f"rejected: {exc.message}"
    return "valid"


def test_the_event_validator_judges_exactly_as_the_whole_schema_compiled() -> None:
    """The event schema's if/then/else is checked outside fastjsonschema (events.py):
    every combination of type, item and query gets the same verdict and message."""
    whole = fastjsonschema.compile(load_schema("event"))
    split = validator("event")
    assert split.__name__ == "validate"  # the condition was split off, not compiled
    docs = []
    for event_type in (*EVENT_TYPES, "unknown", 5, None, "absent"):
        for item in ("i1", "", 7, None, "absent"):
            for query in ("shoes", 3, None, "absent"):
                doc = {**GOOD, "event_type": event_type, "item_id": item, "query": query}
                docs.append({k: v for k, v in doc.items() if v != "absent"})
    docs += [{**GOOD, "extra": 1}, {"event_type": "search"}, {}, [], "x"]
    outcomes = {(repr(d), _outcome(whole, d)) for d in docs}
    assert outcomes == {(repr(d), _outcome(split, d)) for d in docs}
    verdicts = {o for _, o in outcomes}
    assert "valid" in verdicts
    assert "rejected: data must contain ['item_id'] properties" in verdicts
    assert "rejected: data must contain ['query'] properties" in verdicts
