"""Sending events: ``replay`` a recorded log and ``produce`` events from stdin/flags.

Both share :class:`EventSender`: murmur2-keyed by ``user_id`` (so a user's events and
state stay in one partition), delivery-checked, with local rejection counted and
reported. Replay sends recorded bytes as they are by default, bad lines included: a log
is a test fixture and the worker's dead-letter handling is part of what it tests.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from confluent_kafka import KafkaException, Producer

from .config import producer_config
from .datasets import count_lines, iter_lines
from .events import Rejected, decode_event, encode_event


@dataclass
class SendSummary:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    rejected_locally: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "rejected_locally": self.rejected_locally,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.rate, 1),
        }


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _key_of(doc: dict[str, Any] | None) -> bytes | None:
    user = doc.get("user_id") if doc else None
    return user.encode() if isinstance(user, str) else None


def user_key(value: bytes) -> bytes | None:
    """The Kafka key for an event: its user_id, or None if the bytes are not an event."""
    return _key_of(_json_object(value))


class EventSender:
    """A confluent-kafka producer with delivery accounting."""

    def __init__(self, topic: str, bootstrap: str | None = None, **conf: Any) -> None:
        self.topic = topic
        self.producer = Producer(producer_config(bootstrap, **conf))
        self.summary = SendSummary()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.summary.delivered += 1
        else:
            self.summary.failed += 1
            if len(self.summary.errors) < 20:
                self.summary.errors.append(str(err))

    def reject(self, reason: str) -> None:
        self.summary.rejected_locally += 1
        if len(self.summary.errors) < 20:
            self.summary.errors.append(reason)

    def send(self, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_delivery)
                self.summary.sent += 1
                break
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                self.reject(f"producer refused message: {exc.args[0].str()}")
                break
        self.producer.poll(0)

    def close(self, timeout: float = 60.0) -> SendSummary:
        left = self.producer.flush(timeout)
        if left:
            self.summary.failed += left
            self.summary.errors.append(f"{left} messages not delivered within {timeout}s")
        return self.summary


class Pacer:
    """Holds the sender to ``rate`` events/s, or to the log's own clock / ``speed``."""

    def __init__(self, rate: float | None = None, speed: float | None = None) -> None:
        if rate is not None and speed is not None:
            raise ValueError("give --rate or --speed, not both")
        if (rate is not None and rate <= 0) or (speed is not None and speed <= 0):
            raise ValueError("--rate and --speed must be positive")
        self.rate, self.speed = rate, speed
        self.start = time.perf_counter()
        self.first_ts: int | None = None
        self.n = 0

    def wait(self, ts: int | None) -> None:
        """``ts``: the event's own timestamp (ms), used with ``speed``."""
        if self.rate:
            due = self.start + self.n / self.rate
        elif self.speed and ts is not None:
            if self.first_ts is None:
                self.first_ts = ts
            due = self.start + (ts - self.first_ts) / 1000 / self.speed
        else:
            due = 0.0
        self.n += 1
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def replay(
    path: str | Path,
    topic: str,
    *,
    bootstrap: str | None = None,
    rate: float | None = None,
    speed: float | None = None,
    validate: bool = False,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SendSummary:
    """Send a recorded log (JSONL or JSONL.gz), one message per line, keyed by user_id.

    ``validate`` rejects invalid lines locally instead of sending them."""
    pacer = Pacer(rate, speed)
    sender = EventSender(topic, bootstrap)
    start = time.perf_counter()
    for n, line in enumerate(iter_lines(path)):
        if limit is not None and n >= limit:
            break
        if validate:
            try:
                decode_event(line)
            except Rejected as err:
                sender.reject(f"line {n + 1}: {err.message}")
                continue
        doc = _json_object(line)  # parsed once: for the key and the log's clock
        ts = doc.get("timestamp") if doc else None
        pacer.wait(ts if isinstance(ts, int) else None)
        sender.send(line, _key_of(doc))
        if progress and n % 500 == 0:
            progress(n)
    summary = sender.close()
    summary.elapsed_s = time.perf_counter() - start
    return summary


def complete_event(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill what a hand-written event may leave out: a fresh event_id and 'now'."""
    doc = dict(doc)
    doc.setdefault("event_id", uuid.uuid4().hex)
    doc.setdefault("timestamp", int(time.time() * 1000))
    return doc


def produce(
    docs: Iterable[bytes],
    topic: str,
    *,
    bootstrap: str | None = None,
    validate: bool = True,
    err: TextIO = sys.stderr,
) -> SendSummary:
    """Send events given as JSON lines; each is completed, validated and keyed."""
    sender = EventSender(topic, bootstrap)
    start = time.perf_counter()
    for n, line in enumerate(docs, start=1):
        line = line.strip()
        if not line:
            continue
        if not validate:
            sender.send(line, user_key(line))
            continue
        try:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise Rejected("not_json", f"not valid JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise Rejected("schema", "an event must be a JSON object")
            doc = complete_event(doc)
            value = encode_event(doc)
        except Rejected as exc:
            sender.reject(f"line {n}: {exc.message}")
            print(f"rejected line {n}: {exc.message}", file=err)
            continue
        sender.send(value, doc["user_id"].encode())  # the schema made it a string
    summary = sender.close()
    summary.elapsed_s = time.perf_counter() - start
    return summary


def total_lines(path: str | Path, limit: int | None) -> int:
    n = count_lines(path)
    return min(n, limit) if limit is not None else n
