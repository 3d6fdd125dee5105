"""Per-event CPU cost of the worker's batch logic, without Kafka or Faust.

    python benchmarks/pipeline_cost.py                       # co-occurrence model, generated data
    python benchmarks/pipeline_cost.py --model models --graph graph --events data/ml/events.jsonl
    python benchmarks/pipeline_cost.py --against HEAD        # this tree against a commit

Runs ``pipeline.process_batch`` (decode, validate, state, rank + join, encode) over
batches of real event bytes with an in-memory dict as the state store, so the figure is
what our code costs per event; ``streamrec bench`` adds the broker and Faust around it.
Prints µs/event for the whole batch function and for ranking alone.

``--against REF`` loads that commit's ``streamrec`` package beside this one and runs the
two on the same batches, alternating batch by batch in one process (CPU time): this
machine's speed drifts ±20 % between runs, more than most changes, so compare a change
as this ratio, not as two separate runs (a commit against itself read 0.97-1.00 in
four runs). It also says whether their answers differ.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import orjson

import streamrec.metrics
from streamrec.app import tune_gc
from streamrec.baseline import CooccurrenceModel
from streamrec.datasets import generate_log


class Side:
    """One ``streamrec`` package's batch logic, its own state store and timings."""

    def __init__(
        self,
        name: str,
        pkg: str,
        args: argparse.Namespace,
        model_path: Path,
        topology: Path | None = None,
    ) -> None:
        mod = {m: importlib.import_module(f"{pkg}.{m}") for m in _MODULES}
        topo = mod["topology"].load_topology(topology)
        graph = mod["graph"]
        index = graph.load_index(args.graph) if args.graph else graph.GraphIndex()
        wrap = mod["app"]._joiner(topo, index)
        asked = args.candidates or topo.join.candidates
        candidates = max(topo.worker.top_k, asked) if topo.join.enabled else topo.worker.top_k
        base = mod["ranking"].load_ranker(model_path, candidates)
        self.name, self.spec = name, topo.worker
        self.ranker = wrap(base) if wrap else base
        self.process_batch, self.record = mod["pipeline"].process_batch, mod["pipeline"].Record
        self.store: dict[str, bytes] = {}
        self.total = self.rank = 0.0
        self.answers: list[bytes] = []
        self.clock = time.perf_counter

    def run(self, batch: list, now: int, keep: bool) -> None:
        t = self.clock()
        result = self.process_batch(
            batch, lambda user, _rec: self.store.get(user), self.ranker, self.spec, now
        )
        for user, (value, _) in result.state_writes.items():
            self.store[user] = value
        self.total += self.clock() - t
        # The batch function's own split (wall clock): a ranker may join as its answers
        # are read (RankResult.items), so timing its call alone would miss the join.
        self.rank += result.stages.get("model", 0.0) + result.stages.get("graph", 0.0)
        if keep:  # the items only (each answer has its own time and id), as a digest:
            # kept objects the GC tracks made its collections land on one side (a
            # comparison of a commit with itself read 0.86-0.93; as digests, 0.97-1.00).
            items = [orjson.loads(v)["items"] for _, v in result.recommendations]
            self.answers.append(hashlib.sha256(orjson.dumps(items)).digest())

    def line(self, n: int, batch: int) -> str:
        return (
            f"{n:,} events, batch {batch}, {self.name} model {self.ranker.version}: "
            f"process_batch {self.total / n * 1e6:.1f} µs/event "
            f"(ranking + join {self.rank / n * 1e6:.1f}, "
            f"the rest {(self.total - self.rank) / n * 1e6:.1f})"
        )


_MODULES = ("app", "graph", "pipeline", "ranking", "topology")


def load_ref(ref: str) -> tuple[str, Path]:
    """Extract ``ref``'s ``streamrec/`` as package ``streamrec_ref`` and return it with
    the path of ``ref``'s default topology (this tree's may have settings ``ref`` does
    not know); its metrics module is this one's (Prometheus refuses the same metric
    names registered twice)."""
    root = Path(__file__).resolve().parent.parent
    tar = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "streamrec", "topologies"],
        capture_output=True,
        check=False,
    )
    if tar.returncode:
        sys.exit(f"--against {ref}: git archive failed: {tar.stderr.decode().strip()}")
    dest = Path(tempfile.mkdtemp(prefix="pipeline-cost-"))
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(dest, filter="data")
    (dest / "streamrec").rename(dest / "streamrec_ref")
    sys.path.insert(0, str(dest))
    sys.modules["streamrec_ref.metrics"] = streamrec.metrics
    return "streamrec_ref", dest / "topologies" / "default.yaml"


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
    ap.add_argument("--against", metavar="REF", help="also run this git commit's code, paired")
    args = ap.parse_args()
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
    sides = [Side("this tree", "streamrec", args, model_path)]
    if args.against:
        pkg, topology = load_ref(args.against)
        sides.append(Side(args.against, pkg, args, model_path, topology))
        for side in sides:  # two processes' worth of work in one: CPU time, not wall
            side.clock = time.process_time
    records = [
        (d["user_id"].encode(), orjson.dumps(d), "events", 0, n, now) for n, d in enumerate(docs)
    ]
    if not args.no_gc_tuning:
        tune_gc()  # as the worker does after loading
    for b, start in enumerate(range(0, len(records), args.batch)):
        chunk = records[start : start + args.batch]
        for side in sides if b % 2 else sides[::-1]:  # neither always goes first
            side.run([side.record(*r) for r in chunk], now, keep=len(sides) > 1)
    n = len(records)
    for side in sides:
        print(side.line(n, args.batch))
    if len(sides) > 1:
        new, ref = sides
        same = new.answers == ref.answers
        print(
            f"this tree / {args.against}: process_batch {new.total / ref.total:.3f}, "
            f"ranking + join {new.rank / ref.rank:.3f}; "
            f"answers {'identical' if same else 'DIFFER'}"
        )


if __name__ == "__main__":
    main()
