"""One worker under a fixed offered load (or none): its CPU, the broker's, and latency.

    python benchmarks/paced_load.py --model MODEL --rate 2400 --seconds 15
    python benchmarks/paced_load.py --model MODEL --rate 0 --seconds 10   # idle worker

``streamrec bench`` offers loads relative to each system's maximum; this holds the load
fixed, so two builds or two topologies can be compared at the same rate, and shows how
the machine's CPU is shared between the worker and the embedded broker while it runs.

It also splits each answer's latency at the moment the worker encoded it (the output's
``produced_at``): before it, the event waited to be fetched, for the agent to be free,
for the batch to fill (``linger_ms``) and for the batch's processing; after it, the
output waited to be sent and appended. With each batch's processing time and size, that
says which of them a change should shorten.

``--window S`` adds the same over time: per S seconds of the run, the events sent, the
latency p50 / p99 and the worker's and the broker's CPU — whether a bad p99 is spread
over the run or one stretch of it, and which process was busy then.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import orjson

from streamrec.bench import (
    BenchConfig,
    BenchError,
    OutputLog,
    _proc_stats,
    bench_producer,
    make_events,
    produce_paced,
    with_append_time,
)
from streamrec.broker import EmbeddedBroker, create_topology_topics
from streamrec.evaluate import percentile
from streamrec.procs import start_worker, stop_process
from streamrec.topology import load_topology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model dir (e.g. a bench model)")
    ap.add_argument("--rate", type=float, default=2400.0, help="events/s offered; 0: idle")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--topology", type=Path, help="topology YAML (default: packaged)")
    ap.add_argument("--window", type=float, help="also print latency and CPU per this many s")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamrec-paced-"))
    topo = load_topology(args.topology)
    topo = with_append_time(topo)
    with EmbeddedBroker(data_dir=work / "broker") as broker:
        create_topology_topics(topo, broker.bootstrap)
        topo_file = topo.dump(work / "topology.yaml")
        log = OutputLog(broker.bootstrap, topo.recommendations.name)
        worker = start_worker(
            model=args.model,
            data_dir=work / "state",
            bootstrap=broker.bootstrap,
            topology=topo_file,
            log=work / "worker.log",
        )
        try:
            warm, keys = make_events(BenchConfig(events=200), "warm-up")
            producer = bench_producer(broker.bootstrap)  # warm before the measured run
            marks = log.ends()
            produce_paced(broker.bootstrap, topo.events.name, warm, keys, 100, producer)
            if not log.wait(marks, len(warm), 120):
                raise SystemExit(f"the worker did not answer; see {work / 'worker.log'}")
            n = int(args.rate * args.seconds)
            values, keys = make_events(BenchConfig(events=max(n, 1)), "load")
            marks = log.ends()
            cpu_w, cpu_b = _proc_stats(worker.pid)[0], _proc_stats(broker.proc.pid)[0]
            sampler = CpuSampler((worker.pid, broker.proc.pid), args.window)
            t0 = time.monotonic()
            if n:
                produce_paced(broker.bootstrap, topo.events.name, values, keys, args.rate, producer)
            else:
                time.sleep(args.seconds)
            span = time.monotonic() - t0
            sampler.stop()
            worker_cpu = 100 * (_proc_stats(worker.pid)[0] - cpu_w) / span
            broker_cpu = 100 * (_proc_stats(broker.proc.pid)[0] - cpu_b) / span
            print(
                f"offered {args.rate:,.0f} events/s for {span:.1f} s: "
                f"worker CPU {worker_cpu:.1f} %, broker CPU {broker_cpu:.1f} %"
            )
            if n:
                answered = log.wait(marks, n, 120)
                parts = latency_parts(log, marks, log.ends())
                print(
                    f"answered {len(parts['latency']):,} of {n:,}"
                    f"{'' if answered else ' (timed out)'}; latency split (ms), "
                    "p50 / p90 / p99 of the answers:"
                )
                sent_at = parts.pop("sent at")
                for name, values in parts.items():
                    pct = " / ".join(f"{percentile(values, q):7.1f}" for q in (50, 90, 99))
                    print(f"  {name:<20} {pct}")
                if args.window:
                    print_windows(args.window, sent_at, parts["latency"], sampler.shares)
        finally:
            stop_process(worker)
            log.close()


def latency_parts(log: OutputLog, marks: dict[int, int], ends: dict[int, int]) -> dict:
    """Per answer: event -> output appended (the latency), event -> encoded by the worker,
    encoded -> appended, the time from its batch's start until it was made ("in batch":
    event -> encoded minus this is the wait before its batch began), its batch's size,
    and when its event was sent (epoch ms)."""
    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "latency",
            "event -> encoded",
            "encoded -> appended",
            "in batch ms",
            "batch size",
            "sent at",
        )
    }
    try:
        messages = list(log.messages(marks, ends))
    except BenchError as exc:  # a clear line, not a traceback
        raise SystemExit(str(exc)) from None
    for m in messages:
        doc = orjson.loads(m.value())
        appended, timings = m.timestamp()[1], doc["timings"]
        source = timings["source_ts"]
        for name, value in zip(
            parts,
            (
                appended - source,
                doc["produced_at"] - source,
                appended - doc["produced_at"],
                timings["batch_ms"],
                timings["batch_size"],
                source,
            ),
            strict=True,
        ):
            parts[name].append(value)
    return parts


class CpuSampler:
    """Each process's share of a core per ``every`` seconds, from /proc, in a thread."""

    def __init__(self, pids: tuple[int, ...], every: float | None) -> None:
        self.shares: list[tuple[float, ...]] = []  # (epoch s at the window's start, shares...)
        self._stop = threading.Event()
        self._thread = None
        if every:
            self._thread = threading.Thread(target=self._run, args=(pids, every), daemon=True)
            self._thread.start()

    def _run(self, pids: tuple[int, ...], every: float) -> None:
        last, at = [_proc_stats(p)[0] for p in pids], time.time()
        while not self._stop.wait(every):
            now, cpu = time.time(), [_proc_stats(p)[0] for p in pids]
            used = (c - b for c, b in zip(cpu, last, strict=True))
            self.shares.append((at, *(u / (now - at) for u in used)))
            last, at = cpu, now

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def print_windows(
    every: float, sent_at: list[float], latency: list[float], shares: list[tuple[float, ...]]
) -> None:
    """Latency p50 / p99 of the events sent in each window, beside the CPU sampled then."""
    if not sent_at:
        return
    start = min(sent_at) / 1000
    by_window: dict[int, list[float]] = {}
    for sent, lat in zip(sent_at, latency, strict=True):
        by_window.setdefault(int((sent / 1000 - start) // every), []).append(lat)
    print(f"per {every:g} s (by the time each event was sent):")
    print("  from s   events   p50 ms   p99 ms   worker CPU %   broker CPU %")
    for w in sorted(by_window):
        lats = by_window[w]
        mid = start + (w + 0.5) * every
        cpu = min(shares, key=lambda s: abs(s[0] + every / 2 - mid), default=None)
        cpus = f"{100 * cpu[1]:12.0f}   {100 * cpu[2]:12.0f}" if cpu else ""
        print(
            f"  {w * every:6.0f} {len(lats):8,} {percentile(lats, 50):8.0f} "
            f"{percentile(lats, 99):8.0f}   {cpus}"
        )


if __name__ == "__main__":
    main()
