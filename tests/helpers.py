"""Helpers for the tests: run a worker, collect what it published; count candidates."""

from __future__ import annotations

import base64
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.baseline import Recommendation
from streamrec.broker import create_topology_topics
from streamrec.datasets import iter_lines
from streamrec.events import Rejected, decode_event
from streamrec.procs import start_worker
from streamrec.state import SessionState
from streamrec.subscribe import consume
from streamrec.topology import Topology, load_topology

REPLAY_LOG = Path(__file__).parent / "data" / "replay_small.jsonl"


@dataclass
class LogContents:
    valid_ids: list[str] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)


def split_log(path: Path = REPLAY_LOG) -> LogContents:
    out = LogContents()
    for line in iter_lines(path):
        try:
            out.valid_ids.append(decode_event(line).event_id)
        except Rejected:
            out.invalid.append(line)
    return out


class Collector(threading.Thread):
    """Reads a topic from the beginning in the background, keeping every message."""

    def __init__(self, topic: str, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.topic, self.bootstrap = topic, bootstrap
        self.docs: list[dict] = []
        self._stop_flag = threading.Event()

    def run(self) -> None:
        for msg in consume(
            self.topic, bootstrap=self.bootstrap, from_beginning=True, stop=self._stop_flag.is_set
        ):
            self.docs.append(msg.doc)

    def wait_count(self, n: int, timeout: float) -> bool:
        return wait_for(lambda: len(self.docs) >= n, timeout)

    def wait_quiet(self, seconds: float, timeout: float) -> None:
        """Wait until nothing new arrived for ``seconds`` (catch late duplicates)."""
        deadline = time.monotonic() + timeout
        last, since = len(self.docs), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < seconds:
            time.sleep(0.1)
            if len(self.docs) != last:
                last, since = len(self.docs), time.monotonic()

    def close(self) -> list[dict]:
        self._stop_flag.set()
        self.join(10)
        return self.docs


def collecting(topic: str, bootstrap: str) -> Collector:
    """A started :class:`Collector`."""
    collector = Collector(topic, bootstrap)
    collector.start()
    return collector


def start_test_worker(
    broker: str, model: Path, topo_file: Path, tmp: Path, name: str = "", **extra
) -> tuple[subprocess.Popen, Path]:
    """A worker process with its state in ``tmp/state<name>``; returns it and its log."""
    log = tmp / f"worker{name}.log"
    worker = start_worker(
        model=model,
        data_dir=tmp / f"state{name}",
        bootstrap=broker,
        topology=topo_file,
        log=log,
        **extra,
    )
    return worker, log


def fresh_topology(bootstrap: str, tmp: Path, suffix: str | None = None) -> tuple[Topology, Path]:
    """The default topology with unique names, its topics created, and its YAML file."""
    topo = load_topology().namespaced(suffix or uuid.uuid4().hex[:8])
    create_topology_topics(topo, bootstrap)
    return topo, topo.dump(tmp / "topology.yaml")


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def changelog_states(topo: Topology, bootstrap: str) -> dict[str, SessionState]:
    """Each user's latest state as published to the sessions changelog topic."""
    states: dict[str, SessionState] = {}
    for msg in consume(
        topo.sessions_changelog.name, bootstrap=bootstrap, from_beginning=True, idle_timeout=3.0
    ):
        states[msg.key.decode()] = SessionState.from_bytes(msg.value)
    return states


def answered_counts(recs: list[dict]) -> Counter:
    return Counter(r["event_id"] for r in recs)


def dead_letter_payloads(dead: list[dict]) -> list[bytes]:
    return [base64.b64decode(d["value_b64"]) for d in dead]


def explain_missing(topo: Topology, bootstrap: str, missing: set[str], group: str) -> str:
    """Where unanswered events went, to tell a lost answer from a skipped event: is the
    answer in the output topic after all (the live reader missed it), is the event in
    its user's state (processed, answer lost), and where it sits vs the group's commit."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from streamrec.broker import admin

    reread = {
        m.doc.get("event_id")
        for m in consume(
            topo.recommendations.name, bootstrap=bootstrap, from_beginning=True, idle_timeout=5
        )
    }
    in_state = {
        e[3] for s in changelog_states(topo, bootstrap).values() for e in s.entries
    } & missing
    where: dict[str, tuple[int, int]] = {}
    for m in consume(topo.events.name, bootstrap=bootstrap, from_beginning=True, idle_timeout=5):
        if isinstance(m.doc, dict) and m.doc.get("event_id") in missing:
            where[m.doc["event_id"]] = (m.partition, m.offset)
    tps = [TopicPartition(topo.events.name, p) for p in range(topo.events.partitions)]
    try:
        request = [ConsumerGroupTopicPartitions(group, tps)]
        futures = admin(bootstrap).list_consumer_group_offsets(request, request_timeout=10)
        result = futures[group].result(timeout=15)
        committed: object = {tp.partition: tp.offset for tp in result.topic_partitions}
    except Exception as exc:  # diagnostics must not hide the failure they explain
        committed = repr(exc)
    lines = [
        f"{len(missing)} unanswered: {sorted(missing)[:10]}",
        f"  in the output topic on a re-read: {sorted(missing & reread)[:10]}",
        f"  in their user's state (processed): {sorted(in_state)[:10]}",
        f"  (partition, offset) of each: {[where.get(i) for i in sorted(missing)[:10]]}",
        f"  group committed offsets: {committed}",
    ]
    return "\n".join(lines)


def group_report(tmp: Path, group: str, bootstrap: str, workers: dict, lines: int = 20) -> str:
    """What a stalled group looked like: its state and members, each worker process
    (running or its exit code, restarts) and the end of each worker log under ``tmp``.
    In the assertion message, so a failed CI run keeps it (pytest removes old tmp dirs)."""
    from streamrec.broker import admin

    try:
        client = admin(bootstrap)  # kept alive until the answer is in
        desc = client.describe_consumer_groups([group])[group].result(15)
        members = [(m.group_instance_id, m.member_id) for m in desc.members]
        out = [f"group {group}: {desc.state}, members {members}"]
    except Exception as exc:  # diagnostics must not hide the failure they explain
        out = [f"group {group}: {exc!r}"]
    for name, proc in workers.items():
        if proc is not None:
            rc = proc.poll()
            state = "running" if rc is None else f"exited {rc}"
            out.append(f"worker {name}: {state}, {getattr(proc, 'restarts', 0)} restarts")
    for log in sorted(tmp.glob("worker*.log")):
        logged = [line for line in log.read_text(errors="replace").splitlines() if line[:1] == "["]
        out += [f"--- {log.name}, last {lines} lines:", *logged[-lines:]]
    return "\n".join(out)


def count_made_candidates(monkeypatch, module: str) -> list[str]:
    """Make ``module``'s Recommendation record each candidate it makes (their item ids,
    in order): how the tests see that rankers and the join make only what they read."""
    made: list[str] = []

    class Counted(Recommendation):
        __slots__ = ()

        def __init__(self, item_id: str, score: float, reasons: list[str] | None) -> None:
            made.append(item_id)
            super().__init__(item_id, score, reasons)

    monkeypatch.setattr(f"{module}.Recommendation", Counted)
    return made
