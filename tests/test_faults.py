"""Faults beyond a worker crash: the broker itself restarts (durable data dir)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamrec.broker import BROKER_NAME, EmbeddedBroker
from streamrec.datasets import generate_log, write_jsonl
from streamrec.procs import stop_process
from streamrec.replay import replay

from .helpers import Collector, answered_counts, fresh_topology, start_test_worker

pytestmark = pytest.mark.broker


def test_broker_restart_workers_reconnect_and_resume(small_model: Path, tmp_path: Path) -> None:
    events, _ = generate_log(users=150, items=200, events_per_user=20, seed=3)
    write_jsonl(tmp_path / "a.jsonl", events[:1500])
    write_jsonl(tmp_path / "b.jsonl", events[1500:])
    broker = EmbeddedBroker(data_dir=tmp_path / "broker", log=tmp_path / "broker.log")
    bootstrap = broker.start()
    worker = None
    try:
        topo, topo_file = fresh_topology(bootstrap, tmp_path, "restart")
        worker, log = start_test_worker(
            bootstrap, small_model, topo_file, tmp_path, env={"STREAMREC_METRICS_PORT": "0"}
        )
        replay(tmp_path / "a.jsonl", topo.events.name, bootstrap=bootstrap)
        recs = Collector(topo.recommendations.name, bootstrap)
        recs.start()
        assert recs.wait_count(1500, 90), f"{len(recs.docs)} answered; see {log}"
        recs.close()

        broker.stop()  # SIGINT: noida-db saves its data
        stopped = time.monotonic()
        broker = EmbeddedBroker(
            port=int(bootstrap.rsplit(":", 1)[1]),
            data_dir=tmp_path / "broker",
            log=tmp_path / "broker.log",
        )
        assert broker.start() == bootstrap
        summary = replay(tmp_path / "b.jsonl", topo.events.name, bootstrap=bootstrap)
        assert summary.failed == 0
        recs = Collector(topo.recommendations.name, bootstrap)
        recs.start()
        done = recs.wait_count(len(events), 120)
        recs.wait_quiet(2.0, 10)
        counts = answered_counts(recs.close())
        print(
            f"\n[{BROKER_NAME} restart] {len(counts)}/{len(events)} answered, "
            f"{sum(counts.values()) - len(counts)} duplicates, resumed within "
            f"{time.monotonic() - stopped:.0f}s of the broker stopping"
        )
        assert done and set(counts) == {e["event_id"] for e in events}, f"see {log}"
        assert worker.poll() is None, "the worker died with the broker"
    finally:
        assert stop_process(worker) == 0
        broker.stop()
