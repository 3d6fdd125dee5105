"""Per-event model cost against history length: cached GRU state vs recomputing history.

    python benchmarks/model_cost.py --model models [--batch 256]

For users whose history is H events long, times one worker batch (``--batch`` events
from distinct users) through the served ranker twice: with each user's cached hidden
state (what the worker does: one GRU step per event) and with the state dropped, which
forces a rebuild from the session window (what a model without a cache must do per
event; without the window's bound it would be the whole history).
"""

from __future__ import annotations

import argparse
import random
import time

from streamrec.ranking import RankRequest, SequentialRanker, load_ranker
from streamrec.state import SessionState


def requests_for(
    ranker: SequentialRanker, users: int, length: int, window: int, rng: random.Random
) -> list[RankRequest]:
    """Users with ``length`` events so far; the session keeps the last ``window``."""
    items = ranker.model.items
    out = []
    for u in range(users):
        entries = [
            [rng.choice(items), "view", n, f"e{u}-{n}"]
            for n in range(max(0, length - window), length)
        ]
        out.append(RankRequest(f"u{u}", SessionState(entries=entries, n_events=length)))
    return out


def timed(ranker: SequentialRanker, reqs: list[RankRequest], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        ranker.rank_batch(reqs)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 10, 50, 200, 1000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--window", type=int, default=50, help="session_length of the topology")
    args = ap.parse_args()
    ranker = load_ranker(args.model, top_k=10)
    assert isinstance(ranker, SequentialRanker), "needs a sequential model"
    rng = random.Random(0)
    print(f"model {ranker.version} on {ranker.model.providers[0]}, batch of {args.batch} users")
    print(f"{'history':>8} {'cached µs/event':>16} {'recomputed µs/event':>20}")
    for length in args.lengths:
        cold = requests_for(ranker, args.batch, length, args.window, rng)
        # Warm the cache as the worker would have: state after all but the last event.
        result = ranker.rank_batch(
            [
                RankRequest(
                    r.user_id, SessionState(entries=r.state.entries[:-1], n_events=length - 1)
                )
                for r in cold
            ]
        )
        warm = []
        for r in cold:
            h, hv, hn = result.model_states.get(r.user_id, (None, None, 0))
            s = SessionState(entries=r.state.entries, n_events=length, h=h, hv=hv, hn=hn)
            warm.append(RankRequest(r.user_id, s))
        cached = timed(ranker, warm, args.repeat) / args.batch * 1e6
        full = timed(ranker, cold, args.repeat) / args.batch * 1e6
        print(f"{length:8d} {cached:16.1f} {full:20.1f}")


if __name__ == "__main__":
    main()
