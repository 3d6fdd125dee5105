"""End to end on the embedded broker (see the report header for which): a recorded log with
invalid lines through a real worker process with RocksDB state; then the same log with
the worker SIGKILLed mid-replay and restarted."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streamrec.broker import BROKER_NAME
from streamrec.config import producer_config
from streamrec.events import validator
from streamrec.procs import (
    Supervised,
    free_port,
    kill_process,
    serving,
    start_worker,
    stop_process,
)
from streamrec.replay import replay
from streamrec.state import SessionState, read_table_files
from streamrec.topology import Topology

from .helpers import (
    REPLAY_LOG,
    Collector,
    answered_counts,
    changelog_states,
    collecting,
    dead_letter_payloads,
    explain_missing,
    fresh_topology,
    group_report,
    split_log,
    start_test_worker,
    wait_for,
)

pytestmark = pytest.mark.broker
ANSWER_TIMEOUT = 120.0


@dataclass
class Run:
    topo: Topology
    recs: list[dict]
    dead: list[dict]
    changelog: dict[str, SessionState]
    rocksdb: dict[str, SessionState]
    worker_log: Path


def _finish(
    topo: Topology,
    bootstrap: str,
    worker,
    recs: Collector,
    dead: Collector,
    data_dir: Path,
    log: Path,
    n_valid: int,
    n_invalid: int,
) -> Run:
    answered = recs.wait_count(n_valid, ANSWER_TIMEOUT)
    dead.wait_count(n_invalid, 30)
    recs.wait_quiet(2.0, 10)
    rc = stop_process(worker)
    assert answered, f"only {len(recs.docs)}/{n_valid} answered; worker log: {log}"
    assert rc == 0, f"worker exited with {rc}; see {log}"
    return Run(
        topo,
        recs.close(),
        dead.close(),
        changelog_states(topo, bootstrap),
        read_table_files(data_dir),
        log,
    )


SCRAPES: list[str] = []


def _replay_in_background(topo: Topology, broker: str, rate: float):
    """Replay the recorded log at ``rate`` from a thread; ``sent["summary"]`` at the end."""
    sent: dict = {}
    sender = threading.Thread(
        target=lambda: sent.update(
            summary=replay(REPLAY_LOG, topo.events.name, bootstrap=broker, rate=rate)
        )
    )
    sender.start()
    return sender, sent


@pytest.fixture(scope="module")
def reference_run(broker: str, small_model: Path, tmp_path_factory) -> Run:
    """The uninterrupted run every other expectation is compared with."""
    tmp = tmp_path_factory.mktemp("reference")
    topo, topo_file = fresh_topology(broker, tmp)
    contents = split_log()
    recs = collecting(topo.recommendations.name, broker)
    dead = collecting(topo.dead_letter.name, broker)
    log = tmp / "worker.log"
    port = free_port()
    worker = start_worker(
        model=small_model,
        data_dir=tmp / "state",
        bootstrap=broker,
        topology=topo_file,
        log=log,
        env={"STREAMREC_METRICS_PORT": str(port)},
    )
    summary = replay(REPLAY_LOG, topo.events.name, bootstrap=broker)
    assert summary.failed == 0 and summary.rejected_locally == 0, summary.errors
    recs.wait_count(len(contents.valid_ids), ANSWER_TIMEOUT)
    dead.wait_count(len(contents.invalid), 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        SCRAPES.append(page.read().decode())
    for probe in ("/healthz", "/ready"):  # a working worker is alive and ready
        status, body = _probe(f"http://127.0.0.1:{port}{probe}", within=10)
        assert status == 200, (probe, body)
    return _finish(
        topo,
        broker,
        worker,
        recs,
        dead,
        tmp / "state",
        log,
        len(contents.valid_ids),
        len(contents.invalid),
    )


def _probe(url: str, within: float) -> tuple[int, str]:
    """(status, body) of a probe, polled like Kubernetes does: the worker refreshes
    its probes on a 1 s heartbeat, so a fresh worker may need a moment."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                return page.status, page.read().decode()
        except urllib.error.HTTPError as err:
            if time.monotonic() > deadline:
                return err.code, err.read().decode()
            time.sleep(0.2)


def test_worker_metrics_are_scraped(reference_run: Run) -> None:
    """The worker's Prometheus endpoint counts what the reference run did."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(SCRAPES[-1]):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    contents = split_log()
    assert values[("streamrec_events_total", (("outcome", "valid"),))] == len(contents.valid_ids)
    assert values[("streamrec_events_total", (("outcome", "invalid"),))] == len(contents.invalid)
    assert values[("streamrec_recommendations_total", ())] == len(contents.valid_ids)
    assert values[("streamrec_batch_size_count", ())] > 0
    assert values[("streamrec_stage_seconds_count", (("stage", "process"),))] > 0
    assert values[("streamrec_event_to_recommendation_seconds_count", ())] >= 3000
    assert any(name == "streamrec_model_info" and v == 1 for (name, _), v in values.items())
    lags = [v for (name, _), v in values.items() if name == "streamrec_consumer_lag"]
    assert lags and all(v >= 0 for v in lags)  # scraped once everything was answered


def test_every_valid_event_answered_exactly_once(reference_run: Run) -> None:
    contents = split_log()
    counts = answered_counts(reference_run.recs)
    missing = set(contents.valid_ids) - set(counts)
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not missing, f"{len(missing)} valid events unanswered, e.g. {sorted(missing)[:5]}"
    assert not dupes, f"{len(dupes)} events answered more than once without a fault"
    assert set(counts) == set(contents.valid_ids)


def test_recommendations_match_schema_and_have_reasons(reference_run: Run) -> None:
    check = validator("recommendation")
    for doc in reference_run.recs:
        check(doc)
        assert len(doc["items"]) == 10
        assert all(item["reasons"] for item in doc["items"])
        ids = [item["item_id"] for item in doc["items"]]
        assert len(set(ids)) == len(ids)


def test_every_invalid_line_dead_lettered_with_reason(reference_run: Run) -> None:
    contents = split_log()
    check = validator("dead_letter")
    for doc in reference_run.dead:
        check(doc)
        assert doc["error"] and doc["topic"] == reference_run.topo.events.name
    got = sorted(dead_letter_payloads([d for d in reference_run.dead if not d["truncated"]]))
    want = sorted(x for x in contents.invalid if len(x) <= 65536)
    assert got == want
    oversized = [d for d in reference_run.dead if d["truncated"]]
    assert [d["error_code"] for d in oversized] == ["oversized"]
    assert len(reference_run.dead) == len(contents.invalid)


def test_state_in_rocksdb_matches_changelog_and_log(reference_run: Run) -> None:
    """The RocksDB files hold what the changelog holds, and that is the log, per user."""
    assert reference_run.rocksdb.keys() == reference_run.changelog.keys()
    for user, state in reference_run.changelog.items():
        assert reference_run.rocksdb[user].content() == state.content()
    # Rebuild the expected state of a few users straight from the log.
    from streamrec.datasets import iter_lines
    from streamrec.events import Rejected, decode_event

    expected: dict[str, list[str]] = {}
    for line in iter_lines(REPLAY_LOG):
        try:
            e = decode_event(line)
        except Rejected:
            continue
        expected.setdefault(e.user_id, []).append(e.event_id)
    assert set(expected) == set(reference_run.changelog)
    for user, ids in expected.items():
        state = reference_run.changelog[user]
        assert state.n_events == len(ids)
        assert [e[3] for e in state.entries] == ids[-50:]


def test_sigkill_mid_replay_loses_nothing(
    broker: str, small_model: Path, reference_run: Run, tmp_path: Path
) -> None:
    topo, topo_file = fresh_topology(broker, tmp_path)
    contents = split_log()
    recs = collecting(topo.recommendations.name, broker)
    dead = collecting(topo.dead_letter.name, broker)
    data_dir, log = tmp_path / "state", tmp_path / "worker.log"
    worker = start_worker(
        model=small_model, data_dir=data_dir, bootstrap=broker, topology=topo_file, log=log
    )
    sender, sent = _replay_in_background(topo, broker, rate=1000)
    assert recs.wait_count(800, 60), f"worker never got going; see {log}"
    kill_process(worker)
    killed, killed_at = time.monotonic(), len(recs.docs)
    time.sleep(1.0)
    worker = start_worker(
        model=small_model, data_dir=data_dir, bootstrap=broker, topology=topo_file, log=log
    )
    before_restart = len(recs.docs)
    wait_for(lambda: len(recs.docs) > before_restart, ANSWER_TIMEOUT)
    recovery_s = time.monotonic() - killed
    sender.join()
    assert sent["summary"].failed == 0
    run = _finish(
        topo,
        broker,
        worker,
        recs,
        dead,
        data_dir,
        log,
        len(contents.valid_ids),
        len(contents.invalid),
    )

    counts = answered_counts(run.recs)
    dupes = sum(v - 1 for v in counts.values())
    print(
        f"\n[restart, {BROKER_NAME}] killed after {killed_at} answers; "
        f"{len(counts)} events answered, {dupes} duplicate answers (at-least-once), "
        f"0 lost; answering again {recovery_s:.1f}s after the kill (1 s of it down)"
    )
    assert set(counts) == set(contents.valid_ids), "a valid event went unanswered"
    assert len(run.dead) >= len(contents.invalid)
    assert set(dead_letter_payloads([d for d in run.dead if not d["truncated"]])) == {
        x for x in contents.invalid if len(x) <= 65536
    }
    # State after crash + restart equals the uninterrupted run's, user by user.
    ref = {u: s.content() for u, s in reference_run.changelog.items()}
    assert {u: s.content() for u, s in run.changelog.items()} == ref
    assert {u: s.content() for u, s in run.rocksdb.items()} == ref


def test_events_with_wrong_key_are_rekeyed_and_answered(
    broker: str, small_model: Path, tmp_path: Path
) -> None:
    """Producers that key by something else (or nothing) still get answers, and each
    user's state stays in the partition its user_id hashes to."""
    topo, topo_file = fresh_topology(broker, tmp_path)
    recs = Collector(topo.recommendations.name, broker)
    recs.start()
    producer = Producer(producer_config(broker))
    ids = []
    for n in range(40):
        event = {
            "event_id": f"rk-{n}",
            "user_id": f"u{n % 8}",
            "item_id": f"i{n}",
            "event_type": "view",
            "timestamp": 1_700_000_000_000 + n,
        }
        ids.append(event["event_id"])
        key = None if n % 2 else b"not-the-user"
        producer.produce(topo.events.name, orjson.dumps(event), key)
    assert producer.flush(10) == 0
    worker, log = start_test_worker(broker, small_model, topo_file, tmp_path)
    try:
        assert recs.wait_count(len(ids), 60), f"{len(recs.docs)} answered; see {log}"
    finally:
        assert stop_process(worker) == 0
    assert sorted(answered_counts(recs.close())) == sorted(ids)
    states = changelog_states(topo, broker)
    assert sum(s.n_events for s in states.values()) == len(ids)


#: How long a group of workers may take to settle. noida-db now and then answers a join
#: only after the rebalance timeout (60 s); the worker that cannot decode what follows
#: stops and is started again (Supervised), and the group settles after that.
SETTLE_S = 150.0


def supervised_worker(
    broker: str, model: Path, topo_file: Path, tmp: Path, name: str, identity: str, port: int
) -> Supervised:
    """A worker with a static instance id, started again if it stops itself."""
    return Supervised(
        lambda: start_test_worker(
            broker,
            model,
            topo_file,
            tmp,
            name=f"-{name}",
            env={"STREAMREC_INSTANCE_ID": identity, "STREAMREC_METRICS_PORT": str(port)},
        )[0]
    )


def _wait_until_serving(
    group: str, broker: str, ports: dict[str, int], timeout: float, report: Callable[[], str]
) -> None:
    """Every worker is in the group and answers /ready (assigned, recovered, not
    rebalancing), so traffic starts after the group has settled."""
    settled = wait_for(lambda: serving(group, broker, ports.values()), timeout)
    assert settled, f"workers never settled in group {group}\n{report()}"


def _scrape_events(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "streamrec_events_total"
    )


def test_two_workers_split_partitions_and_a_replacement_takes_over(
    broker: str, small_model: Path, reference_run: Run, tmp_path: Path
) -> None:
    """Workers A and B share the group (4 partitions). B is SIGKILLed mid-replay and a
    replacement with B's identity but *no local state* (a new machine) takes over B's
    partitions, rebuilding their state from the changelog: nothing lost, every user's
    state equal to the uninterrupted run's. (A taking over B's partitions itself: the
    survivor test below.)"""
    topo, topo_file = fresh_topology(broker, tmp_path)
    contents = split_log()
    recs = collecting(topo.recommendations.name, broker)
    dead = collecting(topo.dead_letter.name, broker)
    ports = {name: free_port() for name in ("a", "b", "b2")}

    def worker(name: str, identity: str) -> Supervised:
        return supervised_worker(
            broker, small_model, topo_file, tmp_path, name, identity, ports[name]
        )

    a = worker("a", "worker-a")
    b = worker("b", "worker-b")
    b2 = None

    def report() -> str:
        return group_report(tmp_path, topo.app_id, broker, {"a": a, "b": b, "b2": b2})

    try:
        _wait_until_serving(
            topo.app_id, broker, {"a": ports["a"], "b": ports["b"]}, SETTLE_S, report
        )
        sender, sent = _replay_in_background(topo, broker, rate=400)
        assert recs.wait_count(900, 90), f"workers never got going; see {tmp_path}\n{report()}"
        split = {name: _scrape_events(ports[name]) for name in ("a", "b")}
        b.kill()
        killed = time.monotonic()
        b2 = worker("b2", "worker-b")
        sender.join()
        assert sent["summary"].failed == 0
        answered = recs.wait_count(len(contents.valid_ids), ANSWER_TIMEOUT)
        recovered_after = time.monotonic() - killed
        dead.wait_count(len(contents.invalid), 30)
        recs.wait_quiet(2.0, 10)
        assert answered, f"{len(recs.docs)} answered; see {tmp_path}\n{report()}"
        replacement = _scrape_events(ports["b2"])
        restarts = a.restarts + b.restarts + b2.restarts
        assert a.stop() == 0 and b2.stop() == 0
        b2 = None
        counts = answered_counts(recs.close())
        dead.close()
        print(
            f"\n[two workers, {BROKER_NAME}] events before the kill: A {split['a']:.0f}, "
            f"B {split['b']:.0f}; replacement B handled {replacement:.0f}; "
            f"{len(counts)}/{len(contents.valid_ids)} answered, "
            f"{sum(v - 1 for v in counts.values())} duplicates, 0 lost; all answered "
            f"{recovered_after:.1f}s after the kill; {restarts} restarts"
        )
        assert split["a"] > 0 and split["b"] > 0, "partitions were not split"
        assert replacement > 0, "the replacement never took over"
        missing = set(contents.valid_ids) - set(counts)
        assert not missing, explain_missing(topo, broker, missing, topo.app_id)
        ref = {u: s.content() for u, s in reference_run.changelog.items()}
        assert {u: s.content() for u, s in changelog_states(topo, broker).items()} == ref
        rebuilt = read_table_files(tmp_path / "state-b2")  # only B's partitions, recovered
        assert rebuilt and all(s.content() == ref[u] for u, s in rebuilt.items())
    finally:
        for proc in (a, b, b2):
            if proc is not None:
                proc.stop()


def test_survivor_takes_over_a_killed_workers_partitions(
    broker: str, small_model: Path, reference_run: Run, tmp_path: Path
) -> None:
    """Workers A and B share the group; B is SIGKILLed mid-replay and removed from the
    group (``streamrec group remove-member``: Kafka expires it by itself after the
    session timeout, noida-db never does). A takes over B's partitions, rebuilding their
    state from the changelog: nothing lost, state equal to the uninterrupted run's."""
    from streamrec.broker import group_members, remove_group_member

    topo, topo_file = fresh_topology(broker, tmp_path)
    contents = split_log()
    recs = collecting(topo.recommendations.name, broker)
    ports = {"a": free_port(), "b": free_port()}
    workers = {
        name: supervised_worker(broker, small_model, topo_file, tmp_path, name, f"w-{name}", port)
        for name, port in ports.items()
    }

    def report() -> str:
        return group_report(tmp_path, topo.app_id, broker, workers)

    try:
        _wait_until_serving(topo.app_id, broker, ports, SETTLE_S, report)
        sender, sent = _replay_in_background(topo, broker, rate=400)
        assert recs.wait_count(900, 90), f"workers never got going; see {tmp_path}\n{report()}"
        before = {name: _scrape_events(port) for name, port in ports.items()}
        workers["b"].kill()
        killed = time.monotonic()
        remove_group_member(topo.app_id, "w-b", broker)
        sender.join()
        assert sent["summary"].failed == 0
        answered = recs.wait_count(len(contents.valid_ids), ANSWER_TIMEOUT)
        recovered_after = time.monotonic() - killed
        recs.wait_quiet(2.0, 10)
        assert answered, f"{len(recs.docs)} answered; see {tmp_path}\n{report()}"
        after_a = _scrape_events(ports["a"])
        assert set(group_members(topo.app_id, broker)) == {"w-a"}
        restarts = sum(w.restarts for w in workers.values())
        assert workers["a"].stop() == 0
        counts = answered_counts(recs.close())
        print(
            f"\n[failover, {BROKER_NAME}] before the kill A {before['a']:.0f}, "
            f"B {before['b']:.0f} events; A alone after it {after_a - before['a']:.0f}; "
            f"{len(counts)}/{len(contents.valid_ids)} answered, "
            f"{sum(v - 1 for v in counts.values())} duplicates, 0 lost; all answered "
            f"{recovered_after:.1f}s after the kill; {restarts} restarts"
        )
        assert before["a"] > 0 and before["b"] > 0, "partitions were not split"
        missing = set(contents.valid_ids) - set(counts)
        assert not missing, explain_missing(topo, broker, missing, topo.app_id)
        ref = {u: s.content() for u, s in reference_run.changelog.items()}
        assert {u: s.content() for u, s in changelog_states(topo, broker).items()} == ref
        survivor = read_table_files(tmp_path / "state-a")  # all partitions now
        assert {u: s.content() for u, s in survivor.items()} == ref
    finally:
        for proc in workers.values():
            proc.stop()


def test_scale_out_under_traffic_loses_nothing(
    broker: str, small_model: Path, reference_run: Run, tmp_path: Path
) -> None:
    """A second worker joins while the first is answering a 400 events/s replay: the
    group rebalances under traffic, partitions and their state move, nothing is lost."""
    topo, topo_file = fresh_topology(broker, tmp_path)
    contents = split_log()
    recs = collecting(topo.recommendations.name, broker)
    ports = {"a": free_port(), "b": free_port()}

    def worker(name: str) -> Supervised:
        return supervised_worker(
            broker, small_model, topo_file, tmp_path, name, f"s-{name}", ports[name]
        )

    workers = {"a": worker("a")}

    def report() -> str:
        return group_report(tmp_path, topo.app_id, broker, workers)

    try:
        _wait_until_serving(topo.app_id, broker, {"a": ports["a"]}, SETTLE_S, report)
        sender, sent = _replay_in_background(topo, broker, rate=400)
        assert recs.wait_count(300, 60), f"worker never got going; see {tmp_path}\n{report()}"
        workers["b"] = worker("b")
        sender.join()
        assert sent["summary"].failed == 0
        answered = recs.wait_count(len(contents.valid_ids), ANSWER_TIMEOUT)
        recs.wait_quiet(2.0, 10)
        split = {name: _scrape_events(port) for name, port in ports.items()}
        counts = answered_counts(recs.close())
        print(
            f"\n[scale-out, {BROKER_NAME}] A {split['a']:.0f}, B {split['b']:.0f} events; "
            f"{len(counts)}/{len(contents.valid_ids)} answered, "
            f"{sum(v - 1 for v in counts.values())} duplicates; "
            f"{sum(w.restarts for w in workers.values())} restarts"
        )
        missing = set(contents.valid_ids) - set(counts)
        assert not missing, f"see {tmp_path}\n{report()}\n" + explain_missing(
            topo, broker, missing, topo.app_id
        )
        assert answered
        assert split["b"] > 0, "the new worker never got partitions"
        ref = {u: s.content() for u, s in reference_run.changelog.items()}
        assert {u: s.content() for u, s in changelog_states(topo, broker).items()} == ref
    finally:
        for proc in workers.values():
            proc.stop()
