"""Quality, measured: leave-one-out split, full-ranking NDCG/HR, baselines in one run.

Protocol (the one RecBole and the SASRec/GRU4Rec papers use): each user's events are
ordered by time; the last item is the test target, the second-last validates, the rest
trains. Every item in the catalog is ranked (no sampled negatives) and the items the
user already interacted with are masked out.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .baseline import CooccurrenceModel
from .datasets import training_events

Seq = list[tuple[str, str, int]]  # (item_id, event_type, timestamp), oldest first


def load_sequences(path: str | Path) -> dict[str, Seq]:
    """Per-user sequences from a log (valid events with an item), stable-sorted by time."""
    seqs: dict[str, Seq] = defaultdict(list)
    for user, item, etype, ts in training_events(path):
        seqs[user].append((item, etype, ts))
    for s in seqs.values():
        s.sort(key=lambda e: e[2])
    return dict(seqs)


@dataclass
class Split:
    train: dict[str, Seq]  # everything but the last two events
    valid: dict[str, tuple[Seq, str]]  # (history, target) = (s[:-2], s[-2])
    test: dict[str, tuple[Seq, str]]  # (s[:-1], s[-1])

    def train_rows(self) -> list[tuple[str, str, str, int]]:
        return [(u, i, t, ts) for u, s in self.train.items() for i, t, ts in s]


def leave_one_out(seqs: dict[str, Seq], min_len: int = 3) -> Split:
    split = Split({}, {}, {})
    for user, s in seqs.items():
        if len(s) < min_len:
            split.train[user] = list(s)  # too short to evaluate: training data only
            continue
        split.train[user] = s[:-2]
        split.valid[user] = (s[:-2], s[-2][0])
        split.test[user] = (s[:-1], s[-1][0])
    return split


@dataclass
class Metrics:
    ks: tuple[int, ...] = (10, 20)
    n: int = 0
    ndcg: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    hr: dict[int, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, ranked: Sequence[str], target: str) -> None:
        self.n += 1
        try:
            rank = list(ranked).index(target)
        except ValueError:
            return
        for k in self.ks:
            if rank < k:
                self.hr[k] += 1.0
                self.ndcg[k] += 1.0 / math.log2(rank + 2)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"users": self.n}
        for k in self.ks:
            out[f"NDCG@{k}"] = round(self.ndcg[k] / self.n, 4) if self.n else 0.0
            out[f"HR@{k}"] = round(self.hr[k] / self.n, 4) if self.n else 0.0
        return out


Recommender = Callable[[list[tuple[Seq, str]]], list[list[str]]]


def score(
    recommend: Recommender, cases: dict[str, tuple[Seq, str]], k: int = 20, chunk: int = 256
) -> dict[str, float]:
    """Run ``recommend`` on (history, target) cases in chunks; full-ranking metrics."""
    metrics = Metrics()
    items = list(cases.values())
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        for ranked, (_, target) in zip(recommend(part), part, strict=True):
            metrics.add(ranked[:k], target)
    return metrics.summary()


def popularity_recommender(
    train_rows: Iterable[tuple[str, str, str, int]], k: int = 20
) -> Recommender:
    counts: dict[str, int] = defaultdict(int)
    for _, item, _, _ in train_rows:
        counts[item] += 1
    ranked = sorted(counts, key=lambda i: (-counts[i], i))

    def recommend(cases: list[tuple[Seq, str]]) -> list[list[str]]:
        out = []
        for hist, _ in cases:
            seen = {e[0] for e in hist}
            out.append([i for i in ranked[: k + len(seen)] if i not in seen][:k])
        return out

    return recommend


def cooccurrence_recommender(model: CooccurrenceModel, k: int = 20) -> Recommender:
    def recommend(cases: list[tuple[Seq, str]]) -> list[list[str]]:
        return [
            [
                r.item_id
                for r in model.recommend(
                    [(e[0], e[1]) for e in hist], k=k, exclude={e[0] for e in hist}
                )
            ]
            for hist, _ in cases
        ]

    return recommend


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def evaluate_offline(events: str | Path, model_dir: str | Path) -> dict[str, dict[str, float]]:
    """The served model (through onnxruntime) against popularity and co-occurrence,
    all on the same leave-one-out split, in one run."""
    from .model.runtime import SequentialModel
    from .ranking import resolve_model_dir

    split = leave_one_out(load_sequences(events))
    rows = split.train_rows()
    model = SequentialModel(resolve_model_dir(model_dir))
    cooc = CooccurrenceModel.fit(rows)

    def seq(cases: list[tuple[Seq, str]]) -> list[list[str]]:
        return model.recommend_histories([[e[0] for e in h] for h, _ in cases], k=20)

    return {
        f"model {model.version}": score(seq, split.test),
        "most popular": score(popularity_recommender(rows), split.test),
        "co-occurrence": score(cooccurrence_recommender(cooc), split.test),
    }


def evaluate_stream(
    events: str | Path,
    model_dir: str | Path,
    workdir: Path,
    bootstrap: str | None = None,
    progress: Callable[[str], None] = print,
    join: bool = False,
    graph: Path | None = None,
) -> dict[str, dict[str, float]]:
    """The same split through the live pipeline: every event but each user's last is
    replayed through a real broker and worker; the list published in answer to a user's
    second-last event is scored against their last one (leave-one-out, as served), and
    every published list against the user's next real event (next-event)."""
    from .broker import EmbeddedBroker, create_topology_topics
    from .datasets import iter_lines
    from .events import Rejected, decode_event
    from .procs import start_worker, stop_process
    from .replay import replay
    from .subscribe import consume
    from .topology import load_topology

    lines = []
    per_user: dict[str, list[tuple[str, str]]] = defaultdict(list)  # (event_id, item)
    for line in iter_lines(events):
        try:
            e = decode_event(line, max_future_skew_ms=None)
        except Rejected:
            continue
        if e.item_id is not None:
            lines.append((e.user_id, e.event_id, line))
            per_user[e.user_id].append((e.event_id, e.item_id))
    test_ids = {s[-1][0] for s in per_user.values() if len(s) >= 3}
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "stream-eval.jsonl"
    log_path.write_bytes(b"".join(line + b"\n" for _, eid, line in lines if eid not in test_ids))
    longest = max(len(s) for s in per_user.values())
    topo = load_topology().namespaced(f"eval{int(time.time())}")
    # The session window holds whole histories so "seen" items are masked as offline.
    topo = replace(
        topo,
        worker=replace(topo.worker, session_length=max(50, longest), top_k=20),
        join=replace(topo.join, enabled=join),
    )
    topo_file = topo.dump(workdir / "topology.yaml")
    state_dir = workdir / f"state-{topo.app_id}"
    broker = None if bootstrap else EmbeddedBroker(log=workdir / "broker.log")
    worker = None
    try:
        address = bootstrap or broker.start()  # type: ignore[union-attr]
        create_topology_topics(topo, address)
        worker = start_worker(
            model=Path(model_dir),
            # Faust names its RocksDB files by table, not by app: a state directory left
            # by an earlier run (another namespace) would hand this one its offsets.
            data_dir=state_dir,
            bootstrap=address,
            topology=topo_file,
            log=workdir / "worker.log",
            graph=graph if join else None,
        )
        sent = replay(log_path, topo.events.name, bootstrap=address)
        progress(f"replayed {sent.sent:,} events in {sent.elapsed_s:.1f}s; collecting answers")
        answers: dict[str, list[str]] = {}
        for msg in consume(
            topo.recommendations.name,
            bootstrap=address,
            from_beginning=True,
            limit=sent.delivered,
            idle_timeout=60,
        ):
            answers[msg.doc["event_id"]] = [i["item_id"] for i in msg.doc["items"]]
        progress(f"{len(answers):,} answers for {sent.delivered:,} events")
        exited = worker.poll() is not None
        if exited or not answers:
            raise RuntimeError(
                f"the worker {'exited' if exited else 'answered nothing'}"
                f"; see {workdir / 'worker.log'}"
            )
    finally:
        stop_process(worker)
        if broker:
            broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)  # scratch state of this run only
    loo, nxt = Metrics(), Metrics()
    for s in per_user.values():
        for (eid, _), (next_id, next_item) in itertools.pairwise(s):
            if next_id in test_ids:
                if eid in answers:
                    loo.add(answers[eid], next_item)
                else:
                    loo.n += 1  # unanswered counts as a miss
            elif eid in answers:
                nxt.add(answers[eid], next_item)
    return {"stream leave-one-out": loo.summary(), "stream next-event": nxt.summary()}


def evaluate_join(
    events: str | Path,
    model_dir: str | Path,
    graph_dir: str | Path,
    top_k: int = 10,
    candidates: int = 50,
) -> dict[str, dict[str, float]]:
    """The served ranker with the graph join off and on, same split, same run: accuracy,
    catalog coverage, intra-list diversity, and the cold-start slices (users seen with
    only their first two events; test items the model never saw in training)."""
    from .graph import load_index
    from .join import GraphJoin, JoinSettings
    from .ranking import GraphRanker, RankRequest, known_items, load_ranker
    from .state import SessionState

    seqs = load_sequences(events)
    split = leave_one_out(seqs)
    index = load_index(graph_dir)
    base = load_ranker(model_dir, top_k=candidates)  # as the worker asks (topology join)
    join = GraphJoin(index, JoinSettings(top_k=top_k), known=known_items(base), titles=base.titles)
    joined = GraphRanker(base, join)
    trained = {e[0] for s in split.train.values() for e in s}
    slices = {
        "all users": list(split.test.values()),
        "cold users (2 events)": [(s[:2], s[2][0]) for s in seqs.values() if len(s) >= 3],
        "cold items (unseen in training)": [c for c in split.test.values() if c[1] not in trained],
    }

    def genre(item: str) -> str | None:
        return next(
            (t for t in index.item_links.get(item, {}) if t.startswith("attr:genre:")), None
        )

    out: dict[str, dict[str, float]] = {}
    for name, cases in slices.items():
        for label, ranker in (("join off", base), ("join on", joined)):
            m, shown, ild = Metrics(ks=(10,)), set(), []
            for start in range(0, len(cases), 256):
                part = cases[start : start + 256]
                reqs = [
                    RankRequest(
                        f"u{n}",
                        SessionState(
                            entries=[[i, t, ts, f"e{k}"] for k, (i, t, ts) in enumerate(h)],
                            n_events=len(h),
                        ),
                    )
                    for n, (h, _) in enumerate(part)
                ]
                for items, (_, target) in zip(ranker.rank_batch(reqs).items, part, strict=True):
                    ids = [i["item_id"] for i in items[:top_k]]
                    m.add(ids, target)
                    shown.update(ids)
                    gs = [genre(i) for i in ids]
                    pairs = [(a, b) for x, a in enumerate(gs) for b in gs[x + 1 :]]
                    if pairs:
                        ild.append(sum(a != b or a is None for a, b in pairs) / len(pairs))
            res = m.summary()
            res["coverage"] = round(len(shown) / max(1, len(index.titles)), 4)
            res["diversity"] = round(sum(ild) / max(1, len(ild)), 4)
            out[f"{name}: {label}"] = res
    return out
