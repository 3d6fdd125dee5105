"""Every event of a partition reaches the agent, in offset order: a guard against holes.

Found by the scale-out test (2,995 of 3,000 answered; the 5 missing never processed):
in faust-streaming 0.15.3 a record from a fetch that was in flight when a rebalance
re-assigned the partition can arrive *after* the consumer was sought back to the
committed offset. Faust's fetch loop then (1) records the offsets between the committed
one and the stale record as a "gap" (offsets that do not exist, as in a compacted
topic) that its commit treats as done, and (2) moves its read offset past them, so the
re-fetched records there are dropped as already read; and when the partition is revoked
before the agent sees a later record, that commit hands the next owner an offset past
events nobody processed. So the worker (app.py) keeps holes open: an offset counts as
done only when the agent processed it or a direct read proved it absent (a transaction
marker, compaction); and the agent holds back a partition's records from a hole on,
seeks back to the first missing offset and re-reads them in order (at-least-once;
duplicates carry their ``event_id``). A hole that comes back right after its seek is
checked by reading the partition directly, never assumed absent: stale in-flight records
can repeat a hole that is real.

The guard is plain bookkeeping: :meth:`OffsetGuard.admit` says which records to process
now and where to seek; the agent (app.py) seeks, and :func:`first_offset_from` is the
direct read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from .config import consumer_config
from .pipeline import Consumed

TP = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class Hole:
    missing: int  # the first offset the agent did not get
    seen: int  # the offset it got instead
    repeated: bool  # the same hole right after seeking back for it


@dataclass
class Admitted:
    records: list[Consumed]  # to process now, in arrival order
    holes: dict[TP, Hole] = field(default_factory=dict)


class OffsetGuard:
    """Per partition, the next offset the agent must see.

    ``committed(tp)`` is the group's committed offset as the consumer knows it at
    assignment (where a fresh assignment starts reading), or None when unknown.
    """

    def __init__(self, committed: Callable[[TP], int | None]) -> None:
        self.committed = committed
        self.next: dict[TP, int] = {}
        self._sought: dict[TP, tuple[int, int]] = {}

    def revoked(self, tps: Iterable[TP]) -> None:
        """A revoked partition starts again from its committed offset when it returns."""
        for tp in tps:
            self.next.pop(tp, None)
            self._sought.pop(tp, None)

    def admit(self, records: Sequence[Consumed]) -> Admitted:
        out = Admitted(records=[])
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp in out.holes:
                continue  # after a hole: these come again, in order, after the seek
            expected = self.next.get(tp)
            if expected is None:
                expected = self.committed(tp)
            if expected is not None and rec.offset > expected:
                pair = (expected, rec.offset)
                out.holes[tp] = Hole(expected, rec.offset, self._sought.get(tp) == pair)
                self._sought[tp] = pair
                continue
            out.records.append(rec)
            if expected is None or rec.offset >= expected:
                self.next[tp] = rec.offset + 1
        return out

    def skip(self, tp: TP, to: int) -> None:
        """Offsets below ``to`` proved not to exist (a transaction marker, compaction):
        the partition goes on from ``to``."""
        self.next[tp] = to
        self._sought.pop(tp, None)


def first_offset_from(
    bootstrap: str, topic: str, partition: int, start: int, timeout: float = 10.0
) -> int | None:
    """The offset of the first record at or after ``start`` (None: none there yet).

    A blocking read with a throw-away consumer (no group, nothing committed), for the
    rare hole that needs proof; run it off the event loop."""
    consumer = Consumer(
        consumer_config(
            bootstrap,
            **{
                "group.id": "streamrec-offset-check",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        if high <= start:
            return None
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return None
                raise KafkaException(msg.error())
            return msg.offset()
        raise TimeoutError(f"{topic}[{partition}]: no answer from offset {start} in {timeout}s")
    finally:
        consumer.close()
