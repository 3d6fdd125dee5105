"""How long a group of workers takes to settle when they start together, and how often
the embedded broker's join race strikes.

    python benchmarks/group_join.py --model MODEL --delays 0,0.1,0.2,0.3,0.4 --trials 2

For each trial and delay, ``--workers`` workers start ``delay`` seconds apart in a new
group (static instance ids, supervised as the bench's are) on one embedded broker; the
script waits until every worker is a member of the group and answers ``/ready``. It
prints each group's time to settle and its restarts, then how many groups were slow.

Why: noida-db 0.2.3 now and then answers a join only after the rebalance timeout (60 s)
and then sends the leader an assignment aiokafka cannot decode; the leader stops itself,
is started again, and the group settles (README, "The embedded broker"). Session 21's
test failures with the numba build were this race; in session 22, 1 of 10 pairs of
workers started 0-0.4 s apart hit it. On Apache Kafka every group settles in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from streamrec.broker import EmbeddedBroker, create_topology_topics
from streamrec.procs import Supervised, free_port, serving, start_worker
from streamrec.topology import load_topology

#: A group that took longer than this to settle waited for a rebalance timeout.
SLOW_S = 30.0


def settle(
    bootstrap: str, model: Path, work: Path, workers: int, delay: float, timeout: float
) -> tuple[float | None, int]:
    """Start ``workers`` workers ``delay`` s apart in a new group; seconds until all serve
    (None: not within ``timeout``) and the restarts that took."""
    topo = load_topology().namespaced(uuid.uuid4().hex[:8])
    create_topology_topics(topo, bootstrap)
    topo_file = topo.dump(work / "topology.yaml")
    ports = [free_port() for _ in range(workers)]
    procs: list[Supervised] = []
    started = time.monotonic()
    try:
        for n, port in enumerate(ports):
            if n:
                time.sleep(delay)
            procs.append(
                Supervised(
                    lambda n=n, port=port: start_worker(
                        model=model,
                        data_dir=work / f"state-{n}",
                        bootstrap=bootstrap,
                        topology=topo_file,
                        log=work / f"worker-{n}.log",
                        env={
                            "STREAMREC_INSTANCE_ID": f"join-{n}",
                            "STREAMREC_METRICS_PORT": str(port),
                        },
                    )
                )
            )
        while time.monotonic() - started < timeout:
            if serving(topo.app_id, bootstrap, ports):
                return time.monotonic() - started, sum(p.restarts for p in procs)
            time.sleep(0.25)
        return None, sum(p.restarts for p in procs)
    finally:
        for proc in procs:
            proc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model dir (e.g. a bench model)")
    ap.add_argument("--workers", type=int, default=2, help="workers per group")
    ap.add_argument("--delays", default="0,0.1,0.2,0.3,0.4", help="seconds between starts")
    ap.add_argument("--trials", type=int, default=2, help="groups per delay")
    ap.add_argument("--timeout", type=float, default=200.0, help="seconds a group may take")
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    work = Path(tempfile.mkdtemp(prefix="streamrec-join-"))
    times: list[float] = []
    slow = failed = restarts = 0
    with EmbeddedBroker(data_dir=work / "broker") as broker:
        for trial in range(args.trials):
            for delay in delays:
                where = work / f"trial{trial}-delay{delay}"
                where.mkdir()
                took, restarted = settle(
                    broker.bootstrap, args.model, where, args.workers, delay, args.timeout
                )
                restarts += restarted
                if took is None:
                    failed += 1
                    print(f"trial {trial}, {delay} s apart: NOT settled in {args.timeout:.0f} s")
                else:
                    times.append(took)
                    slow += took > SLOW_S
                    print(
                        f"trial {trial}, {delay} s apart: settled in {took:.1f} s, "
                        f"{restarted} restarts"
                    )
    groups = len(delays) * args.trials
    median = f"{statistics.median(times):.1f} s" if times else "-"
    print(
        f"{groups} groups of {args.workers} workers: {len(times)} settled (median {median}), "
        f"{slow} slower than {SLOW_S:.0f} s, {failed} not at all, {restarts} restarts; "
        f"logs in {work}"
    )


if __name__ == "__main__":
    main()
