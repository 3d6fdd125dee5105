"""Property-based fuzzing of the live worker through the broker: 10,000 generated
messages (valid, mutated, garbage, huge, deeply nested, wrongly keyed, and 10 % sent
twice: duplicate event ids) in batches of 100. Property, per batch: every valid message
is answered exactly once (wrongly keyed ones after re-keying; a duplicate is answered
again but not applied twice), every other message is in the dead-letter topic at its
own partition/offset with the decoder's reason; the worker never stops."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.config import producer_config
from streamrec.events import Rejected, decode_event
from streamrec.procs import start_worker, stop_process

from .helpers import Collector, fresh_topology
from .test_fuzz import BIG, json_values, mutated, valid_events

pytestmark = pytest.mark.broker
BATCH, BATCHES = 100, 100
SENT: list[int] = []  # messages sent by the property test, for the coverage check

live_valid = valid_events.map(lambda d: {**d, "timestamp": d["timestamp"] % 1_700_000_000_000})
live_inputs = st.one_of(
    st.sampled_from(BIG),
    st.binary(max_size=300),
    mutated(),
    live_valid.map(orjson.dumps),
    live_valid.map(orjson.dumps),  # twice: half the traffic should be answerable
    json_values.map(lambda v: orjson.dumps(v)),
)
keying = st.sampled_from(["user", "user", "user", "none", "other"])


@pytest.fixture(scope="module")
def live(broker: str, small_model: Path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-broker")
    topo, topo_file = fresh_topology(broker, tmp)
    recs = Collector(topo.recommendations.name, broker)
    dead = Collector(topo.dead_letter.name, broker)
    recs.start()
    dead.start()
    worker = start_worker(
        model=small_model,
        data_dir=tmp / "state",
        bootstrap=broker,
        topology=topo_file,
        log=tmp / "worker.log",
    )
    producer = Producer(producer_config(broker, **{"linger.ms": 5}))
    yield topo, worker, recs, dead, producer, tmp / "worker.log"
    producer.flush(10)
    stop_process(worker)
    recs.close()
    dead.close()


def _expected(value: bytes, spec) -> tuple[str, str] | str:
    """(user_id, event_id) for an event the worker must answer, else the reject code."""
    try:
        event = decode_event(
            value,
            max_bytes=spec.max_event_bytes,
            max_future_skew_ms=spec.max_future_skew_ms,
            now_ms=int(time.time() * 1000),
        )
    except Rejected as err:
        return err.code
    return event.user_id, event.event_id


def _key(value: bytes, how: str) -> bytes | None:
    if how == "none":
        return None
    if how == "other":
        return b"someone-else"
    try:
        user = orjson.loads(value).get("user_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return user.encode() if isinstance(user, str) else None


@settings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    st.lists(st.tuples(live_inputs, keying), min_size=BATCH - 10, max_size=BATCH - 10),
    st.lists(st.integers(0, BATCH - 11), min_size=10, max_size=10),
)
def test_worker_accounts_for_every_fuzzed_message(live, batch, again) -> None:
    topo, worker, recs, dead, producer, log = live
    batch = batch + [batch[n] for n in again]  # duplicates: same bytes, same event_id
    spec = topo.worker
    answers_before, dead_before = len(recs.docs), len(dead.docs)
    offsets: list[tuple[int, int] | None] = [None] * len(batch)

    def delivered(n: int):
        def callback(err, msg) -> None:
            assert err is None, err
            offsets[n] = (msg.partition(), msg.offset())

        return callback

    for n, (value, how) in enumerate(batch):
        producer.produce(topo.events.name, value, _key(value, how), on_delivery=delivered(n))
    producer.flush(30)
    expect = [_expected(value, spec) for value, _ in batch]
    answers = Counter(e for e in expect if isinstance(e, tuple))
    rejects = {offsets[n]: code for n, code in enumerate(expect) if isinstance(code, str)}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (
        len(recs.docs) - answers_before < sum(answers.values())
        or len(dead.docs) - dead_before < len(rejects)
    ):
        assert worker.poll() is None, f"worker died; see {log}"
        time.sleep(0.05)
    got_answers = Counter((r["user_id"], r["event_id"]) for r in recs.docs[answers_before:])
    got_dead = {(d["partition"], d["offset"]): d["error_code"] for d in dead.docs[dead_before:]}
    assert got_answers == answers
    assert got_dead == rejects
    assert all(d["topic"] == topo.events.name and d["error"] for d in dead.docs[dead_before:])
    SENT.append(len(batch))


def test_fuzzing_covered_ten_thousand_messages_and_the_worker_lives(live) -> None:
    _, worker, recs, dead, _, log = live
    assert sum(SENT) >= 10_000, f"only {sum(SENT)} fuzzed messages went through the broker"
    assert worker.poll() is None, f"worker stopped; see {log}"
    assert recs.docs and dead.docs
