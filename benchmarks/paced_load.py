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
    OutputLog,
    _percentiles,
    _proc_stats,
    bench_producer,
    make_events,
    produce_paced,
    with_append_time,
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
            t0 = time.monotonic()
            if n:
                produce_paced(broker.bootstrap, topo.events.name, values, keys, args.rate, producer)
            else:
                time.sleep(args.seconds)
            span = time.monotonic() - t0
            worker_cpu = 100 * (_proc_stats(worker.pid)[0] - cpu_w) / span
            broker_cpu = 100 * (_proc_stats(broker.proc.pid)[0] - cpu_b) / span
            print(
                f"offered {args.rate:,.0f} events/s for {span:.1f} s: "
                f"worker CPU {worker_cpu:.1f} %, broker CPU {broker_cpu:.1f} %"
            )
            if n:
                answered = log.wait(marks, n, 120)
                lat = [v for _, v in log.read(marks, log.ends()) if v is not None]
                print(
                    f"answered {len(lat):,} of {n:,}{'' if answered else ' (timed out)'}; "
                    f"latency ms (to the {log.clock}) {_percentiles(lat)}"
                )
        finally:
            stop_process(worker)
            log.close()


if __name__ == "__main__":
    main()
