"""Batched output of the agent: record batches to topics, WriteBatches to the state.

Faust's per-message APIs cost the worker most of its time (``streamrec bench`` +
py-spy): ``producer.send`` is ~0.2 ms of aiokafka Python per message, and a table
write is a RocksDB put, a changelog send and, once delivered, another RocksDB put of
the persisted offset — per key. Here one agent batch becomes one record batch per
topic partition and, for the sessions table, one RocksDB ``WriteBatch`` per partition
plus one persisted-offset write per partition once the changelog has the batch.

The table stays a Faust table: its changelog topic, its RocksDB files (one per
partition, the changelog offset stored beside the data) and Faust's recovery, which
replays the changelog after that offset on start-up and rebalance, are unchanged. The
helpers touch Faust's RocksDB store below its public API (``_db_for_partition``),
which is why faust-streaming is pinned.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

Messages = list[tuple[bytes | None, bytes]]
_partitioner = DefaultPartitioner()


@functools.lru_cache(maxsize=65_536)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``. aiokafka's murmur2 is
    Python, ~4 µs a key (timeit), one per recommendation; a user sends many events, so
    the answers are kept for the 65,536 most recent keys (~10 MB)."""
    everything = list(range(partitions))
    return _partitioner(key, everything, everything)


def by_key(messages: Iterable[tuple[bytes | None, bytes]], partitions: int) -> dict[int, Messages]:
    """Group keyed messages by the partition Kafka's default partitioner (murmur2, as
    every client here uses) gives their key, so a user's messages keep one partition.
    A message without a key (a dead letter of a keyless event) goes to any."""
    out: dict[int, Messages] = {}
    for key, value in messages:
        if key is None:
            everything = list(range(partitions))
            part = _partitioner(key, everything, everything)
        else:
            part = partition_of(key, partitions)
        out.setdefault(part, []).append((key, value))
    return out


async def send_batches(
    producer: Any, topic: str, by_partition: dict[int, Messages]
) -> list[tuple[int, int, asyncio.Future]]:
    """Append to one record batch per partition (a few µs a message) and hand the
    batches to aiokafka. Returns (partition, messages, delivery future) per batch; the
    future's result is the batch's first offset."""
    kafka = producer._ensure_producer()  # Faust's aiokafka driver: the AIOKafkaProducer
    out = []
    for p, msgs in by_partition.items():
        batch, count = kafka.create_batch(), 0
        for key, value in msgs:
            if batch.append(key=key, value=value, timestamp=None) is None:  # batch full
                out.append((p, count, await kafka.send_batch(batch, topic, partition=p)))
                batch, count = kafka.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        out.append((p, count, await kafka.send_batch(batch, topic, partition=p)))
    return out


class SessionTable:
    """The sessions table, read per key and written per batch.

    ``write`` puts the batch's states into each partition's RocksDB in one WriteBatch
    and returns them grouped for the changelog partition of the same number (Faust's
    layout: state partition = events partition = changelog partition).
    ``confirm`` records, after delivery, the last changelog offset the RocksDB files
    reflect, so recovery resumes after it. A crash between the two leaves RocksDB ahead
    of the changelog; recovery then replays the changelog over it and the events past
    the committed offset are processed again (state is idempotent per event).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.store = table.data  # faust.stores.rocksdb.Store

    def get(self, key: bytes, partition: int) -> bytes | None:
        return self.store._db_for_partition(partition).get(key)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic_name

    def write(self, writes: Iterable[tuple[bytes, bytes, int]]) -> dict[int, Messages]:
        """Write each partition's states in one WriteBatch; returns the changelog
        messages per partition, for the caller to send (delivery.py)."""
        from rocksdict import WriteBatch

        grouped: dict[int, Messages] = {}
        for key, value, partition in writes:
            grouped.setdefault(partition, []).append((key, value))
        for partition, items in grouped.items():
            wb = WriteBatch(raw_mode=True)
            for key, value in items:
                wb.put(key, value)
            self.store._db_for_partition(partition).write(wb)
        return grouped

    def confirm(self, sent: list[tuple[int, int, asyncio.Future]]) -> None:
        """After the changelog batches are delivered: store each partition's last offset."""
        last: dict[int, int] = {}
        for partition, count, future in sent:
            meta = future.result()
            last[partition] = max(last.get(partition, -1), meta.offset + count - 1)
        for partition, offset in last.items():
            self.store.set_persisted_offset(TP(self.table.changelog_topic_name, partition), offset)
