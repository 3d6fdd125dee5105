"""Reading recommendations (and dead letters) as they arrive."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from .config import consumer_config


@dataclass(frozen=True, slots=True)
class Received:
    key: bytes | None
    value: bytes
    doc: dict[str, Any]
    partition: int
    offset: int
    received_ms: int


def consume(
    topic: str,
    *,
    bootstrap: str | None = None,
    from_beginning: bool = False,
    group: str | None = None,
    key: bytes | None = None,
    limit: int | None = None,
    idle_timeout: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[Received]:
    """Yield decoded messages from ``topic``. Without ``group`` a fresh, uncommitted
    group is used so every subscriber sees every message. Stops after ``limit``
    messages, ``idle_timeout`` seconds without one, or when ``stop()`` is true."""
    conf = consumer_config(
        bootstrap,
        **{
            "group.id": group or f"streamrec-subscribe-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": group is not None,
            "fetch.wait.max.ms": 100,
        },
    )
    consumer = Consumer(conf)
    consumer.subscribe([topic], on_assign=_on_assign(from_beginning, group))
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            if stop and stop():
                return
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"consumer error: {msg.error()}")
            last = time.monotonic()
            if key is not None and msg.key() != key:
                continue
            value = msg.value() or b""
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                doc = {"_undecodable": value[:200].decode(errors="replace")}
            seen += 1
            yield Received(
                msg.key(), value, doc, msg.partition(), msg.offset(), int(time.time() * 1000)
            )
    finally:
        consumer.close()


def _on_assign(from_beginning: bool, group: str | None) -> Callable:
    def assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A fresh subscriber group has no offsets: make "from the beginning" explicit so a
        # group that did commit earlier (named --group) still starts at the beginning.
        if from_beginning and group is None:
            for p in partitions:
                p.offset = -2  # OFFSET_BEGINNING
        consumer.assign(partitions)

    return assign


def format_recommendation(doc: dict[str, Any], now_ms: int | None = None) -> str:
    """Human-readable lines: who, which event, and each item with its reasons."""
    timings = doc.get("timings") or {}
    latency = ""
    src = timings.get("source_ts")
    if src and now_ms:
        latency = f" · {now_ms - src} ms after the event"
    head = (
        f"user {doc.get('user_id')} · answers {doc.get('event_id')} · "
        f"model {doc.get('model_version')}{latency}"
    )
    lines = [head]
    for n, item in enumerate(doc.get("items", []), start=1):
        name = item.get("title") or item.get("item_id")
        reasons = "; ".join(item.get("reasons", []))
        score = item.get("score", 0.0)
        lines.append(f"  {n:2d}. {name} [{item.get('item_id')}] {score:.4g} — {reasons}")
    return "\n".join(lines)
