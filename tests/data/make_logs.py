"""Regenerate the recorded logs in tests/data (deterministic): python tests/data/make_logs.py

replay_small.jsonl: 3,000 valid events with planted sequences (150 users, 200 items) and
a sprinkling of invalid lines of every kind the worker must dead-letter.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from streamrec.datasets import generate_log

HERE = Path(__file__).parent


def invalid_lines() -> list[bytes]:
    ok = {
        "event_id": "bad-0",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "view",
        "timestamp": 1_700_000_000_000,
    }

    def variant(n: int, **change: object) -> bytes:
        doc = {**ok, "event_id": f"bad-{n}", **change}
        return orjson.dumps({k: v for k, v in doc.items() if v is not None})

    # 2,000 levels: deeper than the JSON parser accepts (written by hand; encoders refuse)
    deep = (
        b'{"event_id":"bad-deep","user_id":"u1","item_id":"i1","event_type":"view",'
        b'"timestamp":1700000000000,"context":' + b'{"x":' * 2000 + b"1" + b"}" * 2001
    )
    return [
        b"not json at all",
        b'{"event_id": "bad-t", "user_id": "u1", ',
        b"\xff\xfe\x00garbage",
        b'{"event_id": "bad-u", "user_id": "u\xe9", "item_id": "i1"}',
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"event_id":"bad-nan","user_id":"u1","item_id":"i1","event_type":"rating",'
        b'"timestamp":1700000000000,"value":NaN}',
        variant(1, user_id=None),
        variant(2, user_id=123),
        variant(3, event_type="teleport"),
        variant(4, timestamp=1_700_000_000),  # seconds, not ms
        variant(5, timestamp=3_800_000_000_000),  # year 2090
        variant(6, timestamp=-5),
        variant(7, timestamp="yesterday"),
        variant(8, extra_field=1),
        variant(9, event_type="search", item_id=None),
        variant(10, item_id=""),
        variant(11, item_id=None),
        deep,
        variant(13, query="x" * 70_000),  # oversized
        variant(14, value="five"),
        variant(15, session_id=["a"]),
        b"{}",
        b"null",
    ]


def main() -> None:
    events, _ = generate_log(users=150, items=200, events_per_user=20, seed=11)
    lines = [orjson.dumps(e) for e in events]
    rng = random.Random(5)
    bad = invalid_lines()
    for line in bad:
        lines.insert(rng.randrange(len(lines)), line)
    (HERE / "replay_small.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    print(f"replay_small.jsonl: {len(events)} valid + {len(bad)} invalid lines")


if __name__ == "__main__":
    main()
