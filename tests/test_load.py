"""Under load, through a real broker and worker: a flood of invalid and oversized
messages does not hold up valid traffic, and catalog updates arriving during a replay
neither fail nor lose events. Figures are printed (run with -s); the assertions are
about correctness, with generous liveness bounds, not speed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from streamrec.bench import produce_paced
from streamrec.datasets import generate_log
from streamrec.procs import stop_process

from .helpers import answered_counts, collecting, fresh_topology, start_test_worker

pytestmark = pytest.mark.broker


def _send(broker: str, topic: str, messages, rate: float | None = None, **config) -> None:
    produce_paced(broker, topic, [v for _, v in messages], [k for k, _ in messages], rate, **config)


def _event(n: int, user: str, item: str) -> tuple[bytes, bytes]:
    doc = {
        "event_id": f"v{n}",
        "user_id": user,
        "item_id": item,
        "event_type": "view",
        "timestamp": 1_700_000_000_000 + n,
    }
    return user.encode(), orjson.dumps(doc)


def test_invalid_flood_does_not_stall_valid_events(
    broker: str, small_model: Path, tmp_path: Path
) -> None:
    topo, topo_file = fresh_topology(broker, tmp_path)
    recs = collecting(topo.recommendations.name, broker)
    dead = collecting(topo.dead_letter.name, broker)
    worker, log = start_test_worker(broker, small_model, topo_file, tmp_path)
    try:
        _send(broker, topo.events.name, [_event(0, "u0", "i1")])
        assert recs.wait_count(1, 90), f"worker not answering; see {log}"
        junk = [(os.urandom(4), os.urandom(64 + n % 200)) for n in range(20_000)]
        huge = [(b"big", b'{"event_id": "' + b"x" * 300_000 + b'"}') for _ in range(30)]
        flood = junk[:10_000] + huge + junk[10_000:]
        valid = [_event(n, f"u{n % 50}", f"i{n % 150}") for n in range(1, 401)]
        flooder = threading.Thread(
            target=_send,
            args=(broker, topo.events.name, flood),
            kwargs={"message.max.bytes": 2_000_000},
        )
        t0 = time.time()
        flooder.start()
        _send(broker, topo.events.name, valid, 100.0)  # 100 valid events/s during it
        flooder.join()
        assert recs.wait_count(1 + len(valid), 120), f"{len(recs.docs)} answered; see {log}"
        assert dead.wait_count(len(flood), 180), f"{len(dead.docs)} dead-lettered; see {log}"
        recs.wait_quiet(2.0, 10)
        counts = answered_counts(recs.docs)
        assert all(counts[f"v{n}"] == 1 for n in range(1, 401))
        ids = {f"v{n}" for n in range(1, 401)}
        lags = sorted(  # event's Kafka timestamp -> its recommendation
            (d["produced_at"] - d["timings"]["source_ts"]) / 1000
            for d in recs.docs
            if d["event_id"] in ids
        )
        codes = {d["error_code"] for d in dead.docs}
        assert codes <= {"not_utf8", "not_json", "schema", "oversized"}, codes
        assert sum(d["error_code"] == "oversized" for d in dead.docs) == len(huge)
        assert all(
            d["original_size"] > 65536 and d["truncated"]
            for d in dead.docs
            if d["error_code"] == "oversized"
        )
        last_dead = max(d["received_at"] for d in dead.docs) / 1000
        print(
            f"\n[flood] {len(flood):,} invalid ({len(huge)} of 300 kB) + {len(valid)} valid: "
            f"all valid answered once, all invalid dead-lettered; valid answer lag "
            f"p50 {lags[len(lags) // 2]:.2f}s, max {lags[-1]:.2f}s; "
            f"flood drained in {last_dead - t0:.1f}s"
        )
        assert worker.poll() is None
    finally:
        assert stop_process(worker) == 0, f"see {log}"
        recs.close()
        dead.close()


def test_catalog_updates_under_load(broker: str, small_model: Path, tmp_path: Path) -> None:
    """3,000 events at ~600/s while 300 catalog updates flip availability and add new
    items: every event answered once, nothing dead-lettered, and after the last update
    no unavailable item is recommended."""
    topo, topo_file = fresh_topology(broker, tmp_path)
    events, _ = generate_log(users=150, items=200, events_per_user=20, seed=3)
    recs = collecting(topo.recommendations.name, broker)
    dead = collecting(topo.dead_letter.name, broker)
    worker, log = start_test_worker(broker, small_model, topo_file, tmp_path)
    try:
        updates = []
        for n in range(300):
            item = f"i{(n * 37) % 200}"
            if n % 3 == 2:
                updates.append({"item_id": f"new-{n}", "title": f"New {n}", "available": True})
            else:
                updates.append({"item_id": item, "available": n % 3 == 1})
        unavailable = {}
        for u in updates:
            unavailable[u["item_id"]] = not u["available"]
        blocked = {i for i, off in unavailable.items() if off}
        cat = [(u["item_id"].encode(), orjson.dumps(u)) for u in updates]
        evs = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
        catalog_sender = threading.Thread(target=_send, args=(broker, topo.catalog.name, cat, 60.0))
        catalog_sender.start()
        _send(broker, topo.events.name, evs, 600.0)
        catalog_sender.join()
        assert recs.wait_count(len(events), 120), f"{len(recs.docs)} answered; see {log}"
        # After the last update has surely been applied, probe every user once more.
        time.sleep(2.0)
        probes = [_event(10_000 + n, f"u{n}", "i3") for n in range(150)]
        _send(broker, topo.events.name, probes)
        assert recs.wait_count(len(events) + len(probes), 60), f"see {log}"
        recs.wait_quiet(2.0, 10)
        counts = answered_counts(recs.docs)
        assert len(counts) == len(events) + len(probes)
        assert set(counts.values()) == {1}
        dead.wait_quiet(1.0, 5)
        assert dead.docs == []
        probe_ids = {f"v{10_000 + n}" for n in range(150)}
        shown = {i["item_id"] for d in recs.docs if d["event_id"] in probe_ids for i in d["items"]}
        assert not shown & blocked, shown & blocked
        print(
            f"\n[catalog under load] {len(events):,} events at 600/s + {len(updates)} catalog "
            f"updates: {len(counts):,} answered once, 0 dead letters, "
            f"{len(blocked)} unavailable items absent from {len(probes)} probes"
        )
    finally:
        assert stop_process(worker) == 0, f"see {log}"
        recs.close()
        dead.close()
