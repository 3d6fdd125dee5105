"""Session state at scale: bytes per user in RocksDB and RSS as users grow to 1 M.

    python benchmarks/state_scale.py --users 1000000

Runs the worker's batch logic (``pipeline.process_batch`` with the co-occurrence ranker
and the join) over events from ``--users`` distinct users, ``--events-per-user`` each,
and writes every batch's states the way the worker does (one RocksDB WriteBatch per
partition, see streamrec/sink.py) into RocksDB files opened with Faust's
``RocksDBOptions`` and the topology's memory settings. Kafka is left out: this measures
what grows with users — the state store and the process — not the broker. Prints RSS
every 10 % and, at the end, bytes per user on disk (after a flush and compaction) and
the mean encoded state size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import orjson
from faust.stores.rocksdb import RocksDBOptions
from rocksdict import WriteBatch

from streamrec.app import _joiner, tune_gc
from streamrec.baseline import CooccurrenceModel
from streamrec.datasets import generate_log
from streamrec.graph import GraphIndex
from streamrec.pipeline import Record, process_batch
from streamrec.ranking import load_ranker
from streamrec.sink import by_key
from streamrec.topology import load_topology


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--events-per-user", type=int, default=2)
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--dir", type=Path, help="where to put the RocksDB files (default: tmp)")
    args = ap.parse_args()
    topo = load_topology()
    spec, parts = topo.worker, topo.events.partitions
    root = args.dir or Path(tempfile.mkdtemp(prefix="streamrec-state-"))
    options = RocksDBOptions(**topo.sessions_rocksdb, use_rocksdict=True)
    dbs = [options.open(root / f"sessions-{p}.db") for p in range(parts)]
    train, catalog = generate_log(users=5000, items=args.items, events_per_user=10)
    model = CooccurrenceModel.from_log(train, catalog).save(root / "model")
    wrap = _joiner(topo, GraphIndex())
    base = load_ranker(model, max(spec.top_k, topo.join.candidates))
    ranker = wrap(base) if wrap else base
    tune_gc()
    print(f"{args.users:,} users x {args.events_per_user} events, RocksDB in {root}")
    print(f"RocksDB per partition: {topo.sessions_rocksdb}; start RSS {rss_mb():.0f} MB")
    now = int(time.time() * 1000)
    state_bytes = states = 0
    started = time.perf_counter()
    step = max(1, args.users // 10)
    offset = 0
    for first in range(0, args.users, args.batch):
        users = range(first, min(args.users, first + args.batch))
        for k in range(args.events_per_user):
            records = []
            for u in users:
                user = f"user-{u}".encode()
                doc = {
                    "event_id": f"e{u}-{k}",
                    "user_id": user.decode(),
                    "item_id": f"i{(u * 7 + k) % args.items}",
                    "event_type": "view",
                    "timestamp": now - 1000 + k,
                }
                offset += 1
                records.append(Record(user, orjson.dumps(doc), "events", 0, offset, now))
            part_of: dict[bytes, int] = {}
            for p, msgs in by_key(((r.key, b"") for r in records), parts).items():
                part_of.update((key, p) for key, _ in msgs)

            def load(user_id: str, rec: Record, part_of: dict = part_of) -> bytes | None:
                return dbs[part_of[rec.key]].get(rec.key)

            result = process_batch(records, load, ranker, spec, now)
            batches: dict[int, WriteBatch] = {}
            for user_id, (value, _) in result.state_writes.items():
                key = user_id.encode()
                wb = batches.setdefault(part_of[key], WriteBatch(raw_mode=True))
                wb.put(key, value)
                state_bytes += len(value)
                states += 1
            for p, wb in batches.items():
                dbs[p].write(wb)
        done = users.stop
        if done % step < args.batch or done == args.users:
            print(
                f"{done:>9,} users: RSS {rss_mb():6.0f} MB, "
                f"{done * args.events_per_user / (time.perf_counter() - started):,.0f} events/s"
            )
    for db in dbs:
        db.flush()
        db.compact_range(None, None)
    disk = sum(du(root / f"sessions-{p}.db") for p in range(parts))
    print(
        f"on disk: {disk / 2**20:.0f} MB = {disk / args.users:.0f} bytes/user; "
        f"encoded state {state_bytes / states:.0f} bytes/user (after {args.events_per_user} "
        f"events); final RSS {rss_mb():.0f} MB"
    )
    for db in dbs:
        db.close()
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    os._exit(0)  # skip interpreter teardown of a large heap


if __name__ == "__main__":
    main()
