"""One worker under a fixed offered load (or none): its CPU, the broker's, and latency.

    python benchmarks/paced_load.py --model MODEL --rate 2400 --seconds 15
    python benchmarks/paced_load.py --model MODEL --rate 0 --seconds 10   # idle worker

``streamrec bench`` offers loads relative to each system's maximum; this holds the load
fixed, so two builds or two topologies can be compared at the same rate, and shows how
the machine's CPU is shared between the worker and the embedded broker while it runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from streamrec.bench import (
    BenchConfig,
    OutputReader,
    _percentiles,
    _proc_stats,
    make_events,
    produce_paced,
)
from streamrec.broker import EmbeddedBroker, create_topology_topics
from streamrec.procs import start_worker, stop_process
from streamrec.topology import load_topology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model dir (e.g. a bench model)")
    ap.add_argument("--rate", type=float, default=2400.0, help="events/s offered; 0: idle")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--topology", type=Path, help="topology YAML (default: packaged)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamrec-paced-"))
    topo = load_topology(args.topology)
    with EmbeddedBroker(data_dir=work / "broker") as broker:
        create_topology_topics(topo, broker.bootstrap)
        topo_file = topo.dump(work / "topology.yaml")
        reader = OutputReader(broker.bootstrap, topo.recommendations.name)
        reader.start()
        worker = start_worker(
            model=args.model,
            data_dir=work / "state",
            bootstrap=broker.bootstrap,
            topology=topo_file,
            log=work / "worker.log",
        )
        try:
            warm, keys = make_events(BenchConfig(events=200), "warm-up")
            produce_paced(broker.bootstrap, topo.events.name, warm, keys, 100)
            if not reader.wait(len(warm), 120):
                raise SystemExit(f"the worker did not answer; see {work / 'worker.log'}")
            n = int(args.rate * args.seconds)
            values, keys = make_events(BenchConfig(events=max(n, 1)), "load")
            before = len(reader.latencies)
            cpu_w, cpu_b = _proc_stats(worker.pid)[0], _proc_stats(broker.proc.pid)[0]
            t0 = time.monotonic()
            if n:
                produce_paced(broker.bootstrap, topo.events.name, values, keys, args.rate)
            else:
                time.sleep(args.seconds)
            span = time.monotonic() - t0
            worker_cpu = 100 * (_proc_stats(worker.pid)[0] - cpu_w) / span
            broker_cpu = 100 * (_proc_stats(broker.proc.pid)[0] - cpu_b) / span
            answered = reader.wait(len(warm) + n, 120) if n else True
            lat = [v for _, v in reader.latencies[before:]]
            print(
                f"offered {args.rate:,.0f} events/s for {span:.1f} s: "
                f"worker CPU {worker_cpu:.1f} %, broker CPU {broker_cpu:.1f} %"
            )
            if n:
                print(
                    f"answered {len(lat):,} of {n:,}{'' if answered else ' (timed out)'}; "
                    f"latency ms {_percentiles(lat)}"
                )
        finally:
            stop_process(worker)
            reader.stop.set()


if __name__ == "__main__":
    main()
