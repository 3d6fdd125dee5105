"""The Faust app: thin glue from the events topic to :func:`pipeline.process_batch`.

Per batch (``take_events``: ``batch_size`` events or ``linger_ms``, whichever first):
records -> process_batch -> session-table writes (RocksDB + changelog), recommendations,
dead letters -> wait until Kafka has them -> Faust acks the batch. Offsets are committed
only after the producer is flushed (Faust does that on commit), so delivery is
at-least-once and the state's own bookkeeping makes a redelivered event harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.streams import _current_event  # see _acting_for
from faust.types import EventT

from . import metrics
from .events import Rejected, decode_catalog
from .graph import GraphIndex, apply_catalog_update, load_index
from .join import GraphJoin, JoinSettings
from .pipeline import Record, dead_letter_for, process_batch
from .ranking import GraphRanker, ModelWatcher, Ranker, known_items
from .topology import Topology

log = logging.getLogger("streamrec.worker")


@dataclass(frozen=True)
class WorkerSettings:
    topology: Topology
    bootstrap: str
    model_path: Path
    data_dir: Path
    graph_path: Path | None = None
    metrics_port: int = 0
    # Static group membership (KIP-345): a worker restarted with the same id takes its
    # old place in the group at once instead of waiting for the broker to expire it.
    instance_id: str | None = None


@contextmanager
def _acting_for(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event while touching the table.

    A Faust table reads and writes the RocksDB partition (and changelog partition) of the
    *current event*. Inside a ``take_events`` batch that would be the batch's last
    event, whatever partition the user belongs to; setting it per record keeps every
    user's state in its own partition, so it follows the partition on rebalance.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def create_app(settings: WorkerSettings) -> faust.App:
    topo = settings.topology
    spec = topo.worker
    app = faust.App(
        topo.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://",  # rocksdict is installed, so Faust uses it
        datadir=str(settings.data_dir),
        topic_partitions=topo.events.partitions,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_commit_interval=1.0,  # bounds how much a crash makes us redo
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        stream_buffer_maxsize=max(4096, spec.batch_size * 4),
        web_enabled=False,
        consumer_group_instance_id=settings.instance_id,
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events = app.topic(topo.events.name, partitions=topo.events.partitions, **raw)
    sessions = app.Table(
        topo.sessions_table,
        partitions=topo.events.partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=topo.sessions_config,
    )
    # Tables take their codec from key/value *types* (json for non-models); our state is
    # already orjson bytes, so store and changelog them as they are.
    sessions.key_serializer = sessions.value_serializer = "raw"
    metrics.serve(settings.metrics_port)
    index = load_index(settings.graph_path) if settings.graph_path else GraphIndex()
    # With the join on, the model proposes `candidates` and the join keeps top_k.
    candidates = max(spec.top_k, topo.join.candidates) if topo.join.enabled else spec.top_k
    models = ModelWatcher(settings.model_path, top_k=candidates, wrap=_joiner(topo, index))
    if topo.join.enabled:
        log.info("graph join on: graph %s, %d items", index.version, len(index.titles))

    @app.timer(interval=1.0)
    async def heartbeat() -> None:
        """Feeds /healthz (the loop turns) and /ready (recovered, not rebalancing)."""
        metrics.HEALTH.beat = time.monotonic()
        recovered = app.tables.recovery.completed.is_set()
        metrics.HEALTH.ready = recovered and not app.rebalancing
        metrics.HEALTH.reason = (
            "ready"
            if metrics.HEALTH.ready
            else "rebalancing"
            if app.rebalancing
            else "recovering state"
        )

    @app.task
    async def follow_catalog() -> None:
        """Every worker applies every catalog change (an agent would share the topic's
        partitions across the group), from the start of the compacted topic, in order;
        a change is live for the next batch. Bad messages are dead-lettered."""
        await read_catalog(app, topo, settings.bootstrap, index)

    log.info(
        "ranking with model %s from %s; group instance id %s",
        models.ranker.version,
        settings.model_path,
        settings.instance_id,
    )

    def load_state(user_id: str, rec: Record) -> bytes | None:
        with _acting_for(rec.source):
            return sessions.get(user_id.encode())

    @app.agent(events, concurrency=1)
    async def recommend(stream: faust.StreamT) -> None:
        producer = app.producer
        async for batch in stream.take_events(spec.batch_size, within=spec.linger_ms / 1000):
            records = [
                Record(
                    key=ev.message.key,
                    value=ev.message.value,
                    topic=ev.message.topic,
                    partition=ev.message.partition,
                    offset=ev.message.offset,
                    timestamp=int(ev.message.timestamp * 1000) if ev.message.timestamp else None,
                    source=ev,
                )
                for ev in batch
            ]
            # A new model version takes over between batches: none lost, none answered twice.
            ranker = models.poll()
            t0 = time.perf_counter()
            result = process_batch(records, load_state, ranker, spec)
            t1 = time.perf_counter()
            for user, (value, rec) in result.state_writes.items():
                with _acting_for(rec.source):
                    sessions[user.encode()] = value
            t2 = time.perf_counter()
            pending = await send_batched(
                producer,
                topo.recommendations.name,
                topo.recommendations.partitions,
                result.recommendations,
            )
            for topic, messages in (
                (topo.dead_letter.name, result.dead_letters),
                (topo.events.name, result.rekeyed),
            ):
                for key, value in messages:
                    pending.append(await producer.send(topic, key, value, None, None, None))
            await asyncio.gather(*pending)
            done = time.time()
            metrics.record_batch(
                result, records, ranker.version, t1 - t0, t2 - t1, time.perf_counter() - t2, done
            )
            if result.invalid or result.redelivered or result.rekeyed:
                log.info(
                    "batch of %d: %d answered, %d dead-lettered, %d redelivered, %d re-keyed",
                    len(records),
                    result.answered,
                    result.invalid,
                    result.redelivered,
                    len(result.rekeyed),
                )

    return app


_partitioner = DefaultPartitioner()


async def send_batched(
    producer, topic: str, partitions: int, messages: list[tuple[bytes, bytes]]
) -> list:
    """Publish keyed messages as one record batch per partition.

    Per-message ``send`` costs ~0.2 ms of Python per message in aiokafka (measured with
    ``streamrec bench``); appending to a batch builder costs a few µs. Keys are hashed
    with murmur2 like every other client here, so a user's recommendations keep their
    partition. Returns the delivery futures to await."""
    kafka = producer._ensure_producer()  # Faust's aiokafka driver: the AIOKafkaProducer
    everything = list(range(partitions))
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in messages:
        p = _partitioner(key, everything, everything)
        by_partition.setdefault(p, []).append((key, value))
    futures = []
    for p, msgs in by_partition.items():
        batch = kafka.create_batch()
        for key, value in msgs:
            if batch.append(key=key, value=value, timestamp=None) is None:  # batch full
                futures.append(await kafka.send_batch(batch, topic, partition=p))
                batch = kafka.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await kafka.send_batch(batch, topic, partition=p))
    return futures


def _joiner(topo: Topology, index: GraphIndex):
    """Wrap each loaded model with the graph join (or not, per the topology)."""
    j = topo.join
    if not j.enabled:
        return None
    settings = JoinSettings(
        top_k=topo.worker.top_k,
        short_history=j.short_history,
        attribute=j.attribute,
        max_per_value=j.max_per_value,
    )

    def wrap(base: Ranker) -> Ranker:
        return GraphRanker(base, GraphJoin(index, settings, known=known_items(base)))

    return wrap


async def read_catalog(app: faust.App, topo: Topology, bootstrap: str, index: GraphIndex) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topo.catalog.name) or set()
        tps = [TopicPartition(topo.catalog.name, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        applied = 0
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, messages in batches.items():
                for msg in messages:
                    try:
                        apply_catalog_update(index, decode_catalog(msg.value))
                        applied += 1
                        metrics.CATALOG_UPDATES.inc()
                    except Rejected as err:
                        rec = Record(msg.key, msg.value, tp.topic, tp.partition, msg.offset)
                        await app.producer.send(
                            topo.dead_letter.name,
                            msg.key,
                            dead_letter_for(rec, err),
                            None,
                            None,
                            None,
                        )
            if batches:
                log.info("catalog: %d changes applied so far", applied)
    finally:
        await consumer.stop()


def default_instance_id(data_dir: Path) -> str:
    """One worker per state directory, so host + directory identify it across restarts."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}-{digest}"


def run_worker(settings: WorkerSettings, loglevel: str = "info") -> None:
    """Run the Faust worker in the foreground (SIGTERM/Ctrl-C stop it cleanly)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app = create_app(settings)
    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", loglevel]
    app.main()
