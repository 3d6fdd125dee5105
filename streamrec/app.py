"""The Faust app: thin glue from the events topic to :func:`pipeline.process_batch`.

Events arrive through the batch intake (intake.py: Faust's consumer hands over whole
fetches), are cut into a batch when the agent is free (what came meanwhile, at most
``batch_size`` events, ``linger_ms`` more to fill it) and reach the agent as one
channel event per batch. Per batch: records ->
process_batch -> session-table writes (one RocksDB WriteBatch per partition, sink.py)
-> changelog, recommendations, dead letters sent as record batches per partition ->
once Kafka has all of it (delivery.py, in order, while the agent goes on with the next
batch) the changelog offsets are stored and the batch's offsets acked for Faust's
commit. So delivery is at-least-once and the state's own bookkeeping makes a
redelivered event harmless. Every batch also passes the offset guard (offsets.py: no
event of a partition may skip the agent), and a batch that fails is retried, never
skipped.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial, wraps
from pathlib import Path

import faust
from faust.types import TP

from . import metrics
from .config import aiokafka_security, faust_credentials
from .delivery import Backoff, Deliveries, Outgoing
from .events import Rejected, decode_catalog
from .graph import GraphIndex, apply_catalog_update, load_index
from .intake import BatchConsumer, Intake, still_assigned
from .join import GraphJoin, JoinSettings
from .offsets import Hole, OffsetGuard, first_offset_from
from .pipeline import Consumed, Record, dead_letter_for, process_batch
from .ranking import CandidateRanker, GraphRanker, ModelWatcher, Ranker, known_items
from .sink import SessionTable, by_key
from .topology import Topology

log = logging.getLogger("streamrec.worker")
# One agent batch's messages for a partition fit one record batch. aiokafka keeps one
# produce request in flight per broker, with at most one record batch per partition, so
# with Faust's default 16 KiB (~13 recommendations) a batch of 500 took ~10 round trips
# to publish; at 512 KiB it takes one. Max rate 6,470 -> ~7,590 events/s (medians of
# three alternating `bench --systems worker` runs each, 2026-12-02). Kafka's default
# topic limit (max.message.bytes) is 1 MiB; a single larger message still goes alone.
PRODUCER_BATCH_BYTES = 512 * 1024
CATALOG_IDLE_S = 0.5  # how long the catalog reader rests once caught up
# STREAMREC_TRACE_OFFSETS=1 logs each batch's offsets per partition (where did an event go?)
TRACE_OFFSETS = os.environ.get("STREAMREC_TRACE_OFFSETS", "") not in ("", "0")


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
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        web_enabled=False,
        consumer_group_instance_id=settings.instance_id,
        broker_credentials=faust_credentials(),  # STREAMREC_KAFKA_SECURITY_PROTOCOL etc.
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events = app.topic(topo.events.name, partitions=topo.events.partitions, **raw)
    # The events topic skips Faust's per-message stream (intake.py); the consumer class
    # must be in place before anything asks the app for its consumer.
    app.transport.Consumer = BatchConsumer
    intake = Intake(topo.events.name, capacity=max(4096, spec.batch_size * 4))
    app.consumer.intake = intake
    app.topics.add(events)  # subscribe: no agent's stream does it for us
    sessions = app.Table(
        topo.sessions_table,
        partitions=topo.events.partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=topo.sessions_config,
        options=dict(topo.sessions_rocksdb),  # Faust's RocksDBOptions, per partition
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
    @essential(app)
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

    table = SessionTable(sessions)

    def load_state(user_id: str, rec: Consumed) -> bytes | None:
        # A user's state lives in the partition of their events (events are keyed by
        # user_id; others are re-keyed first), so the record says where to look.
        return table.get(user_id.encode(), rec.partition)

    tune_gc()

    async def answer(records: list[Consumed], ranker: Ranker) -> None:
        """One batch: rank, write state, send it all (``deliveries`` sees it delivered)."""
        t0 = time.perf_counter()
        result = process_batch(records, load_state, ranker, spec)
        t1 = time.perf_counter()
        changelog = table.write(
            (user.encode(), value, rec.partition)
            for user, (value, rec) in result.state_writes.items()
        )
        t2 = time.perf_counter()
        topics = [(table.changelog_topic, changelog)]
        for topic, messages, partitions in (
            (topo.recommendations.name, result.recommendations, topo.recommendations),
            (topo.dead_letter.name, result.dead_letters, topo.dead_letter),
            (topo.events.name, result.rekeyed, topo.events),
        ):
            if messages:
                topics.append((topic, by_key(messages, partitions.partitions)))
        info = (result, ranker.version, t1 - t0, t2 - t1)
        await deliveries.send(Outgoing(records, topics, info))

    def finish(out: Outgoing) -> None:
        """Kafka has the whole batch: store the changelog offsets, ack for the commit."""
        result, version, process_s, state_s = out.info
        table.confirm(out.sent_to(table.changelog_topic))
        app.consumer.ack_records(out.records)
        intake.done()
        publish_s = time.perf_counter() - out.sent_at
        metrics.record_batch(
            result, out.records, version, process_s, state_s, publish_s, time.time()
        )
        _record_lag(app, out.records)
        if result.invalid or result.redelivered or result.rekeyed:
            log.info(
                "batch of %d: %d answered, %d dead-lettered, %d redelivered, %d re-keyed",
                len(out.records),
                result.answered,
                result.invalid,
                result.redelivered,
                len(result.rekeyed),
            )

    owned = still_assigned(app.consumer.assignment)
    deliveries = Deliveries(
        lambda: app.producer, spec.in_flight, finish, lambda out: intake.done(), owned
    )

    @app.task
    @essential(app)
    async def deliver() -> None:
        """Finishes sent batches in order as Kafka confirms them (delivery.py)."""
        await deliveries.run()

    guard = OffsetGuard(lambda tp: app.consumer._committed_offset.get(TP(*tp)))

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: set[TP], **_: object) -> None:
        guard.revoked((tp.topic, tp.partition) for tp in revoked)

    async def seek_back(holes: dict[tuple[str, int], Hole]) -> None:
        """Re-read each partition from its first missing offset (see offsets.py)."""
        loop = asyncio.get_running_loop()
        for (topic, partition), hole in holes.items():
            tp = TP(topic, partition)
            if hole.repeated:  # again right after seeking back: real, or truly absent?
                first = await loop.run_in_executor(
                    None, first_offset_from, settings.bootstrap, topic, partition, hole.missing
                )
                if first is not None and first >= hole.seen:
                    log.info(
                        "%s[%d]: offsets %d..%d do not exist (read from the broker)",
                        topic, partition, hole.missing, hole.seen - 1,
                    )  # fmt: skip
                    guard.skip((topic, partition), hole.seen)
                    app.consumer._gap[tp].addi(hole.missing, hole.seen)  # done, for commits
                    await app.consumer.seek(tp, hole.seen)  # the held-back records
                    continue
            log.warning(
                "%s[%d]: offsets %d..%d never reached the agent; re-reading from %d",
                topic, partition, hole.missing, hole.seen - 1, hole.missing,
            )  # fmt: skip
            metrics.OFFSET_HOLES.inc()
            gaps = app.consumer._gap.get(tp)
            if gaps:  # filed for this hole when it proved absent before; it is back
                gaps.chop(hole.missing, hole.seen)
            await app.consumer.seek(tp, hole.missing)

    # Whole batches, not messages, travel through Faust's stream to the agent (a bounded
    # in-memory channel: the intake fills the next batch while the agent works).
    batches = app.channel(maxsize=2)

    @app.task
    @essential(app)
    async def batch_events() -> None:
        """Cuts the intake into batches when the agent is free: what came meanwhile, at
        most ``batch_size`` events, waiting at most ``linger_ms`` for more."""
        while True:
            await intake.wait_for_agent()
            batch = await intake.take(spec.batch_size, spec.linger_ms / 1000)
            if not batch:
                continue
            # An in-memory channel hands a value to the streams iterating it *now* and
            # to nobody else: wait until the agent's stream is there (start-up).
            waited = 0
            while not batches.subscriber_count:
                if waited % 100 == 0:
                    log.info("holding a batch of %d until the agent subscribes", len(batch))
                waited += 1
                await asyncio.sleep(0.01)
            intake.handed()
            await batches.send(value=batch)

    @app.agent(batches, concurrency=1)
    async def recommend(stream: faust.StreamT) -> None:
        """The agent: one batch at a time, in order per partition, answered once."""
        serving = models.ranker

        async def one(batch: list[Consumed]) -> None:
            nonlocal serving
            intake.begin()  # a rebalance now waits for this batch (intake.py)
            admitted = guard.admit(batch)
            if TRACE_OFFSETS:
                log.info("offsets: %s", offset_ranges(admitted.records))
            if admitted.holes:
                await seek_back(admitted.holes)
            records = admitted.records
            if not records:
                intake.done()
                return
            # A new model version takes over between batches: none lost, none
            # answered twice.
            ranker = models.poll()
            if ranker is not serving:
                serving = ranker
                tune_gc()  # the new model's arrays join the frozen heap
            # A batch that fails before it is sent (a bug, RocksDB, a full producer)
            # is retried until it is sent: its offsets are acked only once Kafka has
            # it, so the partitions stall loudly instead of losing events. Retries
            # are safe: state writes are idempotent and a re-answered event keeps its
            # event_id. Once a rebalance took a partition away, the batch is left to
            # be read again from the committed offsets.
            if not await retry_until_done(partial(answer, records, ranker), records, owned):
                intake.done()

        async for batch in stream:
            try:
                await one(batch)
            finally:
                intake.agent_free()  # processed (its delivery may be pending): cut the next

    return app


def essential(app: faust.App):
    """For the worker's long-running tasks: one that stops is logged at once and stops
    the worker (exit code non-zero, so it is restarted and re-reads from the committed
    offsets). Faust keeps such an exception in the task's future, unseen, while the
    worker stays up without the task — and, with the batcher or the deliveries gone,
    idle."""

    def wrap(fn):
        @wraps(fn)
        async def run() -> None:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                log.critical("%s stopped: %r; stopping the worker", fn.__name__, exc, exc_info=True)
                await app.crash(exc)
                raise

        return run

    return wrap


async def retry_until_done(
    attempt,
    records: list[Consumed],
    owned: Callable[[list[Consumed]], bool] = lambda records: True,
    first_wait: float = 0.5,
    max_wait: float = 30.0,
) -> bool:
    """Run ``attempt()`` until it succeeds (True), or until ``owned(records)`` says a
    rebalance took their partitions away (False: the next owner re-reads them)."""
    backoff = Backoff(first_wait, max_wait)
    while True:
        try:
            await attempt()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures = backoff.failed()
            if not owned(records):
                log.warning(
                    "batch of %d events failed (%r) and its partitions were reassigned; "
                    "their next owner answers them",
                    len(records),
                    exc,
                )
                return False
            parts = sorted({(r.topic, r.partition) for r in records})
            log.error(
                "batch of %d events (%s) failed, attempt %d; retrying in %.1fs: %r",
                len(records),
                ", ".join(f"{t}[{p}]" for t, p in parts),
                failures,
                backoff.wait,
                exc,
                exc_info=failures == 1,
            )
            await backoff.retry()


def offset_ranges(records: list[Consumed]) -> str:
    """'p0 10-14,17 p3 5-9': each partition's offsets in arrival order, runs collapsed."""
    runs: dict[int, list[list[int]]] = {}
    for rec in records:
        part = runs.setdefault(rec.partition, [])
        if part and rec.offset == part[-1][1] + 1:
            part[-1][1] = rec.offset
        else:
            part.append([rec.offset, rec.offset])
    return " ".join(
        f"p{p} " + ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in r)
        for p, r in sorted(runs.items())
    )


def _record_lag(app: faust.App, records: list[Consumed]) -> None:
    """Consumer lag per partition from the fetcher's high watermark (no broker call)."""
    last: dict[tuple[str, int], int] = {}
    for rec in records:
        last[(rec.topic, rec.partition)] = rec.offset
    for (topic, partition), offset in last.items():
        try:
            high = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned any more (rebalance): nothing to report
            continue
        if high is not None:
            metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, high - offset - 1))


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

    def wrap(base: CandidateRanker) -> Ranker:
        join = GraphJoin(index, settings, known=known_items(base), titles=base.titles)
        return GraphRanker(base, join)

    return wrap


async def read_catalog(app: faust.App, topo: Topology, bootstrap: str, index: GraphIndex) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        **aiokafka_security(),
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
                continue
            # Caught up. noida-db answers an empty fetch at once (it ignores
            # fetch.max.wait.ms), so a resumed idle partition makes aiokafka's fetcher
            # spin: py-spy put it at ~6 % of the worker's loop even when it rested 0.5 s
            # between 0.2 s looks. Rest with the partitions paused and resume only when
            # the broker's end offsets (one request) say there is something to read.
            consumer.pause(*tps)
            while True:
                await asyncio.sleep(CATALOG_IDLE_S)
                ends = await consumer.end_offsets(tps)
                behind = [tp for tp in tps if ends[tp] > await consumer.position(tp)]
                if behind:
                    consumer.resume(*behind)
                    break
    finally:
        await consumer.stop()


def tune_gc() -> None:
    """Keep Python's cyclic GC from scanning the long-lived heap on every batch.

    Profiled (benchmarks/pipeline_cost.py): full collections walked the loaded model,
    graph index and framework objects ~every 600 events and took ~45 % of the batch
    time. Objects alive now (code, models, graph) are frozen out of collection and the
    young generation is collected less often; the per-batch objects have no cycles and
    are freed by reference counting anyway. Call again after loading new artifacts.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


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
