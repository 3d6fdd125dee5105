"""Per-batch latency of an exported model: CUDA vs CPU execution provider, side by side.

    python benchmarks/ort_latency.py --model models/CURRENT-or-version [--batches 1 64 1024]

Times exactly the call the worker makes once per batch (``SequentialModel.run``): B users,
each with a cached hidden state and one new event, ``--exclude`` seen items masked, the
top ``--k`` inside the graph (the worker asks for its join's ``candidates``, 30; a model
exported before K was an input gives its own K, 100, whatever is asked). Host↔device
copies are included, as the worker pays them. Prints p50/p99 ms per batch and events/s
per provider; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from streamrec.model.runtime import ModelError, SequentialModel


def inputs(model: SequentialModel, batch: int, exclude: int, rng: np.random.Generator) -> tuple:
    n = len(model.items)
    items = rng.integers(1, n + 1, size=(batch, 1), dtype=np.int64)
    h0 = (rng.standard_normal((batch, model.dim)) * 0.1).astype(np.float32)
    gather = np.arange(batch, dtype=np.int64) * 2 + 1  # each user's state after its event
    seen = rng.integers(1, n + 1, size=(batch, exclude), dtype=np.int64)
    return items, h0, gather, seen


def time_batches(
    model: SequentialModel, args: tuple, repeat: int, warmup: int, k: int
) -> list[float]:
    for _ in range(warmup):
        model.run(*args, k=k)
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        model.run(*args, k=k)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a model version directory")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=1, help="CPU provider threads (worker: 1)")
    ap.add_argument("--exclude", type=int, default=50, help="seen items masked per user")
    ap.add_argument("--k", type=int, default=30, help="top items per answer (worker: 30)")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for device in a.devices:
        try:
            model = SequentialModel(a.model, device=device, threads=a.threads)
        except ModelError as exc:
            print(f"{device}: skipped ({exc})")
            continue
        print(f"{a.model.name}: {len(model.items):,} items, dim {model.dim}, {model.providers[0]}")
        for batch in a.batches:
            args = inputs(model, batch, a.exclude, rng)
            # Large batches on one CPU thread are slow; fewer repeats keep the run short.
            repeat = a.repeat if device != "cpu" or batch <= 64 else max(10, a.repeat // 10)
            ms = time_batches(model, args, repeat, min(a.warmup, repeat), a.k)
            p50, p99 = np.percentile(ms, [50, 99])
            row = {
                "device": device,
                "provider": model.providers[0],
                "items": len(model.items),
                "batch": batch,
                "k": model.top_count(a.k),
                "p50_ms": round(float(p50), 3),
                "p99_ms": round(float(p99), 3),
                "events_per_s": round(batch / (float(p50) / 1000)),
                "runs": repeat,
            }
            rows.append(row)
            print(
                f"  batch {batch:5d}: p50 {p50:8.3f} ms  p99 {p99:8.3f} ms  "
                f"{row['events_per_s']:>10,} events/s"
            )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
