"""``streamrec bench``: the full worker against the practical limits, same broker, same run.

Three systems consume the same generated events and publish one message per event:

* ``raw``   — a plain confluent-kafka consume -> decode -> produce loop (the limit);
* ``faust`` — a bare Faust pass-through agent (what the framework costs);
* ``worker`` — the full streamrec worker (validation, state, model, graph, publish).

For each: the maximum sustained rate (a backlog of events consumed as fast as possible,
timed between the first and last output), then event->output latency percentiles at
25 %, 50 % and 75 % of the worker's maximum, the worker's CPU and RSS, and for the worker
the time per stage (from its Prometheus metrics). Writes JSON and a PNG plot.

After each measured step the bench deletes the records its topics hold (Kafka's
DeleteRecords; the worker's changelog gets ``cleanup.policy=compact,delete``, which
allows it), and a system's topics once it is done, so every step runs against a
broker holding only that step's data. noida-db, the embedded broker, saves all of its
data as one JSON file, rewritten back to back: its CPU grows with what it holds — at a
constant 3,400 events/s from 26 % of a core to 106 % within 30 s on the 2-core dev
machine (``benchmarks/paced_load.py --window``) — and what it takes, the measured
system lacks. ``keep_records`` (``--keep-records``) measures without deleting.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

from .baseline import CooccurrenceModel
from .broker import (
    BROKER_NAME,
    BrokerError,
    EmbeddedBroker,
    create_topology_topics,
    delete_records,
    delete_topics,
    list_topics,
)
from .config import consumer_config, producer_config
from .datasets import generate_log
from .evaluate import percentile
from .procs import Supervised, free_port, start_worker, stop_process
from .topology import Topology, load_topology

SYSTEMS = ("raw", "faust", "worker")


class BenchError(RuntimeError):
    """A measured system did not answer: the message says which and where its log is."""


def read_ready(consumer: Consumer, wait_s: float = 0.05) -> list:
    """The messages waiting, as soon as there is one (at most ``wait_s`` for the first).

    ``consume(n, timeout)`` returns only when it has ``n`` messages or the timeout has
    passed, so under a light load every message waited up to the timeout: the bench's
    reader and raw loop added 0-50 ms (uniform) each to the latencies they measured."""
    first = consumer.poll(wait_s)
    return [] if first is None else [first, *consumer.consume(1000, 0)]


# -- the two reference systems, run as child processes --------------------------------
def echo(value: bytes, source_ts: int) -> bytes:
    """A reference system's output for an event: decoded, and just enough to time it
    like the worker's answers (``produced_at``, ``timings.source_ts``)."""
    return orjson.dumps(
        {
            "event_id": orjson.loads(value).get("event_id"),
            "produced_at": int(time.time() * 1000),
            "timings": {"source_ts": source_ts},
        }
    )


def run_raw_loop(bootstrap: str, source: str, sink: str, group: str) -> None:
    """(a) consume -> decode -> produce with confluent-kafka, batched both ways."""
    consumer = Consumer(
        consumer_config(
            bootstrap,
            **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": True},
        )
    )
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 1}))
    consumer.subscribe([source])
    while True:
        for m in read_ready(consumer):
            if m.error():
                continue
            out = echo(m.value(), m.timestamp()[1])
            while True:
                try:
                    producer.produce(sink, out, m.key())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)


def run_faust_passthrough(
    bootstrap: str, source: str, sink: str, group: str, batch: int, linger_ms: int
) -> None:
    """(b) a bare Faust agent: take a batch, decode, send each, no state or model."""
    import tempfile

    import faust

    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        datadir=tempfile.mkdtemp(prefix="streamrec-bench-faust-"),  # not the cwd
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10,
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    src = app.topic(source, **raw)

    # Faust's take() flushes a part-filled buffer only after ``within`` (with 0 it waits
    # for a full batch: a load step's last events were never answered), and it has no
    # natural batching: for the worker's linger_ms 0 it gets 20 ms, its best measured
    # (max 3,475-4,164 events/s against 2,388-3,043 with 1 ms, 2-core dev machine).
    within = (linger_ms or 20) / 1000

    @app.agent(src)
    async def passthrough(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            pending = []
            for ev in events:
                out = echo(ev.message.value, int(ev.message.timestamp * 1000))
                pending.append(await app.producer.send(sink, ev.message.key, out, None, None, None))
            await asyncio.gather(*pending)

    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", "warn"]
    app.main()


# -- measuring ------------------------------------------------------------------------
def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process from /proc (Linux); (0, 0) for one that
    has ended (a supervised worker between its exit and its restart)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except FileNotFoundError:
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), rss


def with_append_time(topo: Topology) -> Topology:
    """``topo`` with outputs stamped by the broker when it appends them (see OutputLog)."""
    out = topo.recommendations
    out = replace(out, config={**out.config, "message.timestamp.type": "LogAppendTime"})
    return replace(topo, topics={**topo.topics, "recommendations": out})


class OutputLog:
    """A system's output topic, read after each measured run, from offsets noted before.

    The bench creates it with ``message.timestamp.type=LogAppendTime``: each output's
    Kafka timestamp is when the broker appended it (when a subscriber could first read
    it), so latency is that minus the event's own timestamp, taken when the load
    generator handed it to its producer — and nothing reads while a system is measured.
    A live reader's librdkafka fetches spin against noida-db (it answers empty fetches
    at once): with it, the load generator's process took ~60 % of a core at 1,200-2,400
    events/s on the 2-core dev machine, without it ~11 % — CPU the measured system
    lacked. On a topic that keeps create times (an existing one, on a broker that
    ignores the setting) latency ends when the system created the output; ``clock``
    says which."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            consumer_config(
                bootstrap,
                **{"group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False},
            )
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.partitions = sorted(meta.partitions)
        self.clock = "broker append time"

    def ends(self) -> dict[int, int]:
        """Each partition's end offset now."""
        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)[1]
            for p in self.partitions
        }

    def written_since(self, marks: dict[int, int]) -> int:
        return sum(end - marks[p] for p, end in self.ends().items())

    def wait(self, marks: dict[int, int], n: int, timeout: float) -> bool:
        """Wait until ``n`` outputs were written after ``marks`` (end offsets only)."""
        deadline = time.monotonic() + timeout
        while self.written_since(marks) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def read(
        self, marks: dict[int, int], ends: dict[int, int], timeout: float = 120
    ) -> list[tuple[float, float | None]]:
        """(made, latency) in ms of every output from ``marks`` to ``ends``: when the system
        made it (its ``produced_at``: a rate is timed by these, not by append times, which
        a producer's start-up bunches) and the event->output latency (or None)."""
        rows: list[tuple[float, float | None]] = []
        for m in self.messages(marks, ends, timeout):
            kind, ts = m.timestamp()
            if kind != TIMESTAMP_LOG_APPEND_TIME:
                self.clock = "output create time"
            doc = orjson.loads(m.value())
            src = doc.get("timings", {}).get("source_ts")
            rows.append((doc.get("produced_at", ts), ts - src if src else None))
        return rows

    def messages(
        self, marks: dict[int, int], ends: dict[int, int], timeout: float = 120
    ) -> Iterator[Any]:
        """Every output message from ``marks`` to ``ends``; BenchError if some are not
        read within ``timeout``."""
        todo = {p: ends[p] for p in self.partitions if ends[p] > marks[p]}
        self.consumer.assign([TopicPartition(self.topic, p, marks[p]) for p in todo])
        deadline = time.monotonic() + timeout
        try:
            while todo and time.monotonic() < deadline:
                for m in read_ready(self.consumer, 0.5):
                    p = m.partition()
                    if m.error() or p not in todo or m.offset() >= todo[p]:
                        continue
                    if m.offset() == todo[p] - 1:
                        del todo[p]
                    yield m
        finally:
            self.consumer.unassign()  # no fetching (spinning) between runs
        if todo:
            raise BenchError(f"{self.topic}: outputs up to {todo} not read in {timeout:.0f} s")

    def close(self) -> None:
        self.consumer.close()


def bench_producer(bootstrap: str, **config: Any) -> Producer:
    return Producer(producer_config(bootstrap, **{"linger.ms": 2, **config}))


def produce_paced(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None],
    rate: float | None = None,
    producer: Producer | None = None,
    **config: Any,
) -> None:
    """Send ``values`` keyed by ``keys``, at ``rate`` messages/s (None: as fast as the
    producer takes them), and wait until the broker has them all.

    Pass a ``producer`` that has sent before when latency is measured: a new idempotent
    producer holds its first messages ~0.5 s while it gets its producer id (measured on
    noida-db), and their timestamps are taken when they are handed to it."""
    if producer is None:
        producer = bench_producer(bootstrap, **config)
    start = time.perf_counter()
    sent, total = 0, len(values)
    while sent < total:
        # Everything due now, then sleep at least 1 ms: a sleep per message costs the
        # load generator CPU that the measured system then lacks (timestamps are taken
        # at produce(), so a message sent late does not flatter the latency).
        due = total if not rate else min(total, int((time.perf_counter() - start) * rate) + 1)
        if due <= sent:
            time.sleep(max(0.001, start + sent / rate - time.perf_counter()))
            continue
        for n in range(sent, due):
            while True:
                try:
                    producer.produce(topic, values[n], keys[n])
                    break
                except BufferError:
                    producer.poll(0.01)
        sent = due
        producer.poll(0)
    producer.flush(60)


def _wait_outputs(
    log: OutputLog, marks: dict[int, int], n: int, procs: list, timeout: float
) -> float | None:
    """Wait until ``n`` outputs were written after ``marks``; the CPU share of ``procs``
    while they were written (from the last poll that found none to the one that found
    all: start-up left out), or None on timeout."""
    deadline = time.monotonic() + timeout

    def sample() -> tuple[float, float]:
        return time.monotonic(), sum(_proc_stats(p.pid)[0] for p in procs)

    first = sample()  # kept up to date until something is written
    while (written := log.written_since(marks)) < n:
        if time.monotonic() > deadline:
            return None
        if not written:
            first = sample()
        time.sleep(0.02)
    last = sample()
    return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else 0.0


#: A backlog answered faster than this is timed only roughly (timestamps are in ms).
MIN_SPAN_MS = 50


def max_rate(count: int, made_ms: list[int]) -> tuple[float, bool]:
    """Events/s over the outputs' timestamps (first to last) and whether the span was
    shorter than ``MIN_SPAN_MS``; a span under the 1 ms resolution counts as 1 ms (the
    raw loop answered 300 events within one millisecond, and the rate was infinite)."""
    span_ms = max(made_ms) - min(made_ms)
    return round(count / (max(span_ms, 1) / 1000), 1), span_ms < MIN_SPAN_MS


def _percentiles(values: list[float]) -> dict[str, float]:
    return {
        name: round(percentile(values, q), 2)
        for name, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9))
    }


@dataclass
class BenchConfig:
    events: int = 60000  # 20,000 ran ~3 s at max rate: runs varied ±20 %
    users: int = 5000
    items: int = 3706
    load_seconds: float = 5.0
    loads: tuple[float, ...] = (0.25, 0.5, 0.75)
    workdir: Path = Path(".streamrec/bench")
    bootstrap: str | None = None
    model: Path | None = None
    graph: Path | None = None
    systems: tuple[str, ...] = SYSTEMS
    topology: Topology | None = None  # default: the packaged topology (run_bench sets it)
    workers: int = 1  # worker processes in one group (e.g. sharing one GPU)
    keep_records: bool = False  # True: no deleting between steps (see the module doc)
    runs: int = 1  # >1: the same bench again on the same broker; medians reported


@dataclass
class SystemResult:
    max_rate: float = 0.0
    loads: list[dict[str, Any]] = field(default_factory=list)
    cpu_percent: float = 0.0
    rss_mb: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)
    latency_to: str = ""  # what ends a latency: OutputLog.clock
    restarts: int = 0  # worker processes started again after stopping themselves


def make_events(cfg: BenchConfig, tag: str) -> tuple[list[bytes], list[bytes]]:
    per_user = max(1, cfg.events // cfg.users + 1)
    events, _ = generate_log(users=cfg.users, items=cfg.items, events_per_user=per_user, seed=11)
    events = events[: cfg.events]
    now = int(time.time() * 1000)
    values = [
        orjson.dumps({**e, "event_id": f"{tag}-{n}", "timestamp": now})
        for n, e in enumerate(events)
    ]
    return values, [e["user_id"].encode() for e in events]


def _start(
    system: str,
    cfg: BenchConfig,
    topo: Topology,
    topo_file: Path,
    bootstrap: str,
    model: Path,
    port: int,
    log: Path,
    n: int = 0,
):
    import subprocess

    if system == "worker":
        # Supervised: a worker whose group coordination fails stops itself to be
        # restarted (four workers on the H100 did not finish without it, procs.py).
        return Supervised(
            lambda: start_worker(
                model=model,
                data_dir=cfg.workdir / f"state-{topo.app_id}-{n}",
                bootstrap=bootstrap,
                topology=topo_file,
                log=log,
                graph=cfg.graph,
                env={"STREAMREC_METRICS_PORT": str(port)},
            )
        )
    args = [
        sys.executable,
        "-m",
        "streamrec.bench",
        system,
        bootstrap,
        topo.events.name,
        topo.recommendations.name,
        topo.app_id,
        str(topo.worker.batch_size),
        str(topo.worker.linger_ms),
    ]
    return subprocess.Popen(
        args, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def bench_system(
    system: str,
    cfg: BenchConfig,
    bootstrap: str,
    model: Path,
    target_rate: float | None,
    progress: Callable[[str], None],
) -> SystemResult:
    """Max rate from a backlog, then latency at fractions of ``target_rate`` (or of this
    system's own max when None: the worker is measured first and sets the loads).
    ``cfg.topology`` is set (run_bench resolves the default)."""
    assert cfg.topology is not None
    result = SystemResult()
    namespace = f"bench{system}{uuid.uuid4().hex[:6]}"
    topo = cfg.topology.namespaced(namespace)
    if not cfg.keep_records:  # Kafka deletes records only where the policy has "delete"
        topo = replace(
            topo,
            sessions_config={
                **topo.sessions_config,
                "cleanup.policy": "compact,delete",
                "retention.ms": "-1",  # nothing by age: the bench deletes them itself
            },
        )
    topo = with_append_time(topo)
    topo_file = topo.dump(cfg.workdir / f"{topo.app_id}.yaml")
    create_topology_topics(topo, bootstrap)
    values, keys = make_events(cfg, f"{system}-max")
    producer = bench_producer(bootstrap)  # one for the run: warm for the latency steps
    produce_paced(bootstrap, topo.events.name, values, keys, producer=producer)  # backlog
    log = OutputLog(bootstrap, topo.recommendations.name)
    marks = log.ends()
    count = cfg.workers if system == "worker" else 1
    ports = [free_port() for _ in range(count)]
    procs = [
        _start(
            system,
            cfg,
            topo,
            topo_file,
            bootstrap,
            model,
            port,
            cfg.workdir / f"{system}{n or ''}.log",
            n,
        )
        for n, port in enumerate(ports)
    ]
    try:
        cpu_share = _wait_outputs(log, marks, len(values), procs, 300)
        if cpu_share is None:
            raise BenchError(
                f"{system}: {log.written_since(marks)}/{len(values)} outputs written; "
                f"see {cfg.workdir / (system + '.log')}"
            )
        made = [ts for ts, _ in log.read(marks, log.ends())]
        result.max_rate, too_short = max_rate(len(values), made)
        if too_short:
            progress(
                f"  ({system} answered the backlog within {max(made) - min(made)} ms, too "
                f"short to time at the outputs' 1 ms resolution: give it more --events)"
            )
        stats = [_proc_stats(p.pid) for p in procs]
        rss = sum(r for _, r in stats)
        result.cpu_percent = round(100 * cpu_share, 1)
        result.rss_mb = round(rss / 2**20, 1)
        progress(
            f"{system}{f' x{count}' if count > 1 else ''}: max {result.max_rate:,.0f} events/s "
            f"(CPU {result.cpu_percent:.0f} %, RSS {result.rss_mb:.0f} MB)"
        )
        _report_restarts(procs, result, progress)
        if not cfg.keep_records:
            _empty_topics(bootstrap, namespace, progress)
        base = target_rate or result.max_rate
        for frac in cfg.loads:
            rate = base * frac
            n = max(50, int(rate * cfg.load_seconds))
            vals, ks = make_events(
                BenchConfig(events=n, users=cfg.users, items=cfg.items), f"{system}-{frac}"
            )
            marks = log.ends()
            produce_paced(bootstrap, topo.events.name, vals, ks, rate, producer)
            if not log.wait(marks, n, 120):
                raise BenchError(
                    f"{system} at {rate:,.0f}/s: {log.written_since(marks)} of {n} events "
                    f"answered in 120 s; see {cfg.workdir / (system + '.log')}"
                )
            lat = [v for _, v in log.read(marks, log.ends()) if v is not None]
            if not cfg.keep_records:
                _empty_topics(bootstrap, namespace, progress)
            result.loads.append(
                {
                    "fraction": frac,
                    "offered_per_s": round(rate, 1),
                    "events": n,
                    **_percentiles(lat),
                }
            )
            progress(
                f"  {system} at {rate:,.0f}/s: p50 {result.loads[-1]['p50']} ms, "
                f"p99 {result.loads[-1]['p99']} ms, p99.9 {result.loads[-1]['p99.9']} ms"
            )
            _report_restarts(procs, result, progress)
        result.latency_to = log.clock
        if system == "worker":
            result.stages_ms = _stage_times(ports)
            progress(
                "  worker stages, ms per event: "
                + ", ".join(f"{k} {v:.3f}" for k, v in result.stages_ms.items())
            )
    finally:
        log.close()
        for p in procs:
            stop_process(p)
        if not cfg.keep_records:
            _drop_topics(bootstrap, namespace, progress)
    return result


def _report_restarts(procs: list, result: SystemResult, progress: Callable[[str], None]) -> None:
    """Count the restarts since the last report and say so: the step they fell in timed a
    worker that stopped and started again (its CPU share counts the new process only)."""
    total = sum(p.restarts for p in procs if isinstance(p, Supervised))
    if total > result.restarts:
        progress(
            f"  (a worker stopped itself and was started again, {total - result.restarts}x: "
            "the step above includes its restart; see its log)"
        )
        result.restarts = total


def _namespace_topics(bootstrap: str, namespace: str) -> list[str]:
    """A system's topics: its topology's and Faust's own (changelog, assignor)."""
    return [name for name in list_topics(bootstrap) if namespace in name]


def _empty_topics(bootstrap: str, namespace: str, progress: Callable[[str], None]) -> None:
    """Delete the records a measured step left (module doc); a failure is reported only."""
    try:
        delete_records(_namespace_topics(bootstrap, namespace), bootstrap)
    except (BrokerError, KafkaException) as exc:
        progress(f"  (could not delete the step's records, measuring on: {exc})")


def _drop_topics(bootstrap: str, namespace: str, progress: Callable[[str], None]) -> None:
    try:
        delete_topics(_namespace_topics(bootstrap, namespace), bootstrap)
    except (BrokerError, KafkaException) as exc:
        progress(f"  (could not delete the topics of {namespace}: {exc})")


# The worker's stages in pipeline order: process_batch's parts, process_batch itself
# (their sum plus a little), the RocksDB + changelog write, the wait for Kafka's ack.
STAGES = ("decode", "state", "model", "graph", "encode", "process", "state_write", "publish")


def _stage_times(ports: list[int]) -> dict[str, float]:
    """Mean ms per event and stage, from the workers' Prometheus histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    events = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "streamrec_stage_seconds_sum":
                    stage = s.labels["stage"]
                    sums[stage] = sums.get(stage, 0.0) + s.value
                elif s.name == "streamrec_batch_size_sum":
                    events += s.value
    if not events:
        return {}
    order = {stage: n for n, stage in enumerate(STAGES)}  # the pipeline's order, then others
    return {
        k: round(sums[k] / events * 1000, 4) for k in sorted(sums, key=lambda k: order.get(k, 99))
    }


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Bench ``cfg.systems`` ``cfg.runs`` times on one broker. With several runs the
    result's ``systems`` and ratios are the medians of the runs (each run's own are kept
    under ``runs``): one run's maximum moves ±20 % on a shared machine."""
    if cfg.topology is None:
        cfg = replace(cfg, topology=load_topology())
    partitions = cfg.topology.events.partitions
    if not 1 <= cfg.workers <= partitions:
        raise ValueError(f"--workers {cfg.workers}: the events topic has {partitions} partitions")
    if cfg.runs < 1:
        raise ValueError(f"--runs {cfg.runs}: at least one run")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    broker = None if cfg.bootstrap else EmbeddedBroker(log=cfg.workdir / "broker.log")
    runs: list[dict[str, Any]] = []
    try:
        bootstrap = cfg.bootstrap or broker.start()  # type: ignore[union-attr]
        model = cfg.model
        if model is None:
            events, catalog = generate_log(
                users=cfg.users, items=cfg.items, events_per_user=10, seed=5
            )
            model = CooccurrenceModel.from_log(events, catalog).save(cfg.workdir / "model")
        for n in range(cfg.runs):
            if cfg.runs > 1:
                progress(f"run {n + 1} of {cfg.runs}")
            runs.append(_run_once(cfg, bootstrap, model, progress))
    finally:
        if broker:
            broker.stop()
    out: dict[str, Any] = {
        "broker": BROKER_NAME if broker else cfg.bootstrap,
        "machine": f"{os.cpu_count()} CPUs",
        "config": {
            "batch_size": cfg.topology.worker.batch_size,
            "linger_ms": cfg.topology.worker.linger_ms,
            "events": cfg.events,
            "users": cfg.users,
            "items": cfg.items,
            "workers": cfg.workers,
            "load_seconds": cfg.load_seconds,
            "model": str(model),
            "graph": str(cfg.graph) if cfg.graph else None,
            "keep_records": cfg.keep_records,
            "runs": cfg.runs,
        },
        **(runs[0] if cfg.runs == 1 else median_of_runs(runs)),
    }
    if cfg.runs > 1:
        out["runs"] = runs
        for line in summary_lines(out):
            progress(line)
    (cfg.workdir / "bench.json").write_text(json.dumps(out, indent=2))
    plot(out, cfg.workdir / "bench.png")
    return out


def _run_once(
    cfg: BenchConfig, bootstrap: str, model: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """One run: each system in turn (the worker first: its maximum sets the loads)."""
    results: dict[str, SystemResult] = {}
    order = ["worker"] + [s for s in cfg.systems if s != "worker"]
    for system in order:
        if system not in cfg.systems:
            continue
        target = results["worker"].max_rate if "worker" in results else None
        results[system] = bench_system(system, cfg, bootstrap, model, target, progress)
    out: dict[str, Any] = {"systems": {k: v.__dict__ for k, v in results.items()}}
    w = results.get("worker")
    for ref in ("raw", "faust"):
        if w and ref in results and results[ref].max_rate:
            out[f"worker/{ref}"] = round(w.max_rate / results[ref].max_rate, 3)
    return out


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs, in one run's shape (``systems``, ratios).
    Latencies are medians per load step; a step's offered rate is a fraction of its
    own run's maximum, so the median offered rate is given beside them."""
    systems: dict[str, dict[str, Any]] = {}
    for name in runs[0]["systems"]:
        each = [r["systems"][name] for r in runs]
        loads = []
        for steps in zip(*(e["loads"] for e in each), strict=True):
            step = {"fraction": steps[0]["fraction"]}
            for key in ("offered_per_s", "events", "p50", "p99", "p99.9"):
                step[key] = _median([s[key] for s in steps])
            loads.append(step)
        stages = {
            stage: _median([e["stages_ms"][stage] for e in each if stage in e["stages_ms"]])
            for stage in each[0]["stages_ms"]
        }
        systems[name] = {
            "max_rate": _median([e["max_rate"] for e in each]),
            "loads": loads,
            "cpu_percent": _median([e["cpu_percent"] for e in each]),
            "rss_mb": _median([e["rss_mb"] for e in each]),
            "stages_ms": stages,
            "latency_to": each[0]["latency_to"],
            "restarts": sum(e.get("restarts", 0) for e in each),
        }
    out: dict[str, Any] = {"systems": systems}
    for ratio in ("worker/raw", "worker/faust"):
        if all(ratio in r for r in runs):
            out[ratio] = _median([r[ratio] for r in runs])
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The medians of a several-run bench, each with every run's figure in parentheses
    (the way to quote them: a median and its spread)."""
    runs = result["runs"]

    def each(get: Callable[[dict[str, Any]], float], fmt: str = "{:,.0f}") -> str:
        return " / ".join(fmt.format(get(r)) for r in runs)

    lines = [f"median of {len(runs)} runs (each run's figure in parentheses):"]
    for name, med in result["systems"].items():
        lines.append(
            f"{name}: max {med['max_rate']:,.0f} events/s "
            f"({each(lambda r, n=name: r['systems'][n]['max_rate'])}), "
            f"CPU {med['cpu_percent']:.0f} %, RSS {med['rss_mb']:.0f} MB"
        )
        if med["stages_ms"]:
            stages = ", ".join(f"{k} {v:.3f}" for k, v in med["stages_ms"].items())
            lines.append(f"  stages, ms per event: {stages}")
        for i, step in enumerate(med["loads"]):

            def p99(r: dict[str, Any], n: str = name, i: int = i) -> float:
                return r["systems"][n]["loads"][i]["p99"]

            lines.append(
                f"  at {step['fraction']:.0%} (~{step['offered_per_s']:,.0f}/s): "
                f"p50 {step['p50']:g} ms, p99 {step['p99']:g} ms ({each(p99, '{:g}')})"
            )
    for ratio in ("worker/raw", "worker/faust"):
        if ratio in result:
            lines.append(
                f"{ratio}: {result[ratio]:.3f} ({each(lambda r, k=ratio: r[k], '{:.3f}')})"
            )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in result["systems"].items():
        xs = [x["offered_per_s"] for x in r["loads"]]
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ax.plot(xs, [x[q] for x in r["loads"]], style, label=f"{name} {q}")
    ax.set_xlabel("offered load, events/s (25/50/75 % of the worker's max)")
    ax.set_ylabel("event -> output latency, ms")
    ax.set_yscale("log")
    runs = result.get("config", {}).get("runs", 1)
    medians = f", median of {runs} runs" if runs > 1 else ""
    ax.set_title(f"streamrec bench on {result['broker']} ({result['machine']}{medians})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # child-process entry points for the reference systems
    kind, bootstrap, source, sink, group, batch, linger = sys.argv[1:8]
    if kind == "raw":
        run_raw_loop(bootstrap, source, sink, group)
    else:
        run_faust_passthrough(bootstrap, source, sink, group, int(batch), int(linger))
