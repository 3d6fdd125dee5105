"""Per-event cost of the knowledge-graph join on a large generated catalog.

    python benchmarks/join_cost.py --items 100000

Builds a graph (category hierarchy, brand, tags, co-bought edges from generated
events), the capped index, then times GraphJoin.join for random users with a
``--history``-long session and ``--candidates`` model candidates, with and without
candidate expansion (cold users). ``--unavailable F`` marks that share of the catalog
unavailable first (out of stock), as catalog updates do.
"""

from __future__ import annotations

import argparse
import random
import time

from streamrec.baseline import Recommendation
from streamrec.graph import GraphIndex, build_graph, summary
from streamrec.join import GraphJoin, JoinSettings
from streamrec.state import SessionState


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--unavailable", type=float, default=0.0, help="share of items unavailable")
    args = ap.parse_args()
    rng = random.Random(0)
    n = args.items
    catalog = [
        {
            "item_id": f"i{k}",
            "title": f"Item {k}",
            "attributes": {
                "category": [f"d{k // 5000}", f"d{k // 5000}/c{k // 100}"],
                "brand": f"b{k % 500}",
                "tags": [f"t{rng.randrange(2000)}" for _ in range(3)],
            },
        }
        for k in range(n)
    ]
    events = []
    for u in range(args.events // 10):
        base = rng.randrange(n)
        for s in range(10):
            events.append((f"u{u}", f"i{(base + rng.randrange(50)) % n}", "purchase", s))
    t = time.perf_counter()
    g = build_graph(catalog, events=events)
    built = time.perf_counter() - t
    t = time.perf_counter()
    index = GraphIndex.from_graph(g)
    indexed = time.perf_counter() - t
    s = summary(g)
    print(
        f"graph: {s['n_nodes']:,} nodes, {s['n_edges']:,} edges; build {built:.1f}s, "
        f"index {indexed:.1f}s"
    )
    index.unavailable.update(f"i{k}" for k in rng.sample(range(n), int(args.unavailable * n)))
    if index.unavailable:
        print(f"{len(index.unavailable):,} items unavailable")
    known = {f"i{k}" for k in range(n)}
    join = GraphJoin(index, JoinSettings(top_k=10, short_history=2), known=known)
    states, cands = [], []
    for _ in range(args.users):
        items = [f"i{rng.randrange(n)}" for _ in range(args.history)]
        states.append(
            SessionState(
                entries=[[i, "view", k, f"e{k}"] for k, i in enumerate(items)], n_events=len(items)
            )
        )
        cands.append(
            [Recommendation(f"i{rng.randrange(n)}", 1.0, ["m"]) for _ in range(args.candidates)]
        )
    for label, sts in (
        ("warm users", states),
        (
            "cold users (1 event, expansion)",
            [SessionState(entries=s.entries[:1], n_events=1) for s in states],
        ),
    ):
        t = time.perf_counter()
        for st, c in zip(sts, cands, strict=True):
            join.join(st, c)
        per = (time.perf_counter() - t) / len(sts) * 1e6
        print(f"{label:34s} {per:8.1f} µs/event")


if __name__ == "__main__":
    main()
