"""Subscribers read whatever backlog the topic holds."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from streamrec.broker import create_topics
from streamrec.config import producer_config
from streamrec.offsets import first_offset_from
from streamrec.subscribe import consume
from streamrec.topology import TopicSpec


@pytest.mark.broker
def test_a_backlog_larger_than_one_fetch_response_limit_is_read(broker: str) -> None:
    """The embedded broker answers a fetch with everything after the offset, whatever
    fetch.max.bytes says; librdkafka refused such a response over 100 MB and retried
    forever, so a subscriber that fell that far behind never read again (found by a
    150,000-event ``streamrec bench``)."""
    create_topics([TopicSpec("big-backlog", 1, {})], broker)
    producer = Producer(producer_config(broker, **{"linger.ms": 50}))
    value, count = b"x" * 900_000, 125  # ~112 MB in one partition
    for n in range(count):
        producer.produce("big-backlog", value=value, key=b"%d" % n)
        producer.poll(0)
    assert producer.flush(60) == 0
    read = consume(
        "big-backlog", bootstrap=broker, from_beginning=True, limit=count, idle_timeout=20
    )
    assert [int(r.key) for r in read] == list(range(count))
    assert first_offset_from(broker, "big-backlog", 0, 3) == 3
