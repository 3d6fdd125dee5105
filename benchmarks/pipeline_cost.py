"""Per-event CPU cost of the worker's batch logic, without Kafka or Faust.

    python benchmarks/pipeline_cost.py                       # co-occurrence model, generated data
    python benchmarks/pipeline_cost.py --model models --graph graph --events data/ml/events.jsonl

Runs ``pipeline.process_batch`` (decode, validate, state, rank + join, encode) over
batches of real event bytes with an in-memory dict as the state store, so the figure is
what our code costs per event; ``streamrec bench`` adds the broker and Faust around it.
Prints µs/event for the whole batch function and for ranking alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson

from streamrec.app import _joiner, tune_gc
from streamrec.baseline import CooccurrenceModel
from streamrec.datasets import generate_log
from streamrec.graph import GraphIndex, load_index
from streamrec.pipeline import Record, process_batch
from streamrec.ranking import load_ranker
from streamrec.topology import load_topology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="model dir or root (default: co-occurrence)")
    ap.add_argument("--graph", type=Path, help="graph dir (default: join with an empty graph)")
    ap.add_argument("--events", type=Path, help="event log .jsonl (default: generated)")
    ap.add_argument("--n", type=int, default=20000, help="events to time")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--no-gc-tuning", action="store_true", help="measure without tune_gc()")
    ap.add_argument("--candidates", type=int, help="model candidates for the join (topology)")
    args = ap.parse_args()
    topo = load_topology()
    spec = topo.worker
    if args.events:
        with args.events.open() as f:
            docs = [orjson.loads(line) for _, line in zip(range(args.n), f, strict=False)]
    else:
        per_user = args.n // args.users + 1
        docs, _ = generate_log(users=args.users, items=args.items, events_per_user=per_user)
        docs = docs[: args.n]
    now = int(time.time() * 1000)
    for n, d in enumerate(docs):
        d["timestamp"], d["event_id"] = now, f"cost-{n}"
    model_path = args.model
    if model_path is None:
        train, catalog = generate_log(users=args.users, items=args.items, events_per_user=10)
        model = CooccurrenceModel.from_log(train, catalog)
        model_path = model.save(Path(tempfile.mkdtemp()) / "model")
    index = load_index(args.graph) if args.graph else GraphIndex()
    wrap = _joiner(topo, index)
    asked = args.candidates or topo.join.candidates
    candidates = max(spec.top_k, asked) if topo.join.enabled else spec.top_k
    base = load_ranker(model_path, candidates)
    ranker = wrap(base) if wrap else base
    records = [
        Record(d["user_id"].encode(), orjson.dumps(d), "events", 0, n, now)
        for n, d in enumerate(docs)
    ]
    store: dict[str, bytes] = {}
    if not args.no_gc_tuning:
        tune_gc()  # as the worker does after loading
    total = rank = 0.0
    original = ranker.rank_batch

    def timed_rank(requests):
        nonlocal rank
        t = time.perf_counter()
        out = original(requests)
        rank += time.perf_counter() - t
        return out

    ranker.rank_batch = timed_rank  # type: ignore[method-assign]
    for start in range(0, len(records), args.batch):
        batch = records[start : start + args.batch]
        t = time.perf_counter()
        result = process_batch(batch, lambda user, _rec: store.get(user), ranker, spec, now)
        for user, (value, _) in result.state_writes.items():
            store[user] = value
        total += time.perf_counter() - t
    n = len(records)
    print(
        f"{n:,} events, batch {args.batch}, model {ranker.version}: "
        f"process_batch {total / n * 1e6:.1f} µs/event "
        f"(ranking + join {rank / n * 1e6:.1f}, the rest {(total - rank) / n * 1e6:.1f})"
    )


if __name__ == "__main__":
    main()
