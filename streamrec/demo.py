"""``streamrec demo``: the whole path on one machine, then a clean shutdown.

MovieLens 100K (fetched at run time; a generated log if it cannot be had) -> import ->
train the co-occurrence model on the older events -> embedded broker -> topics ->
worker -> replay the newest events -> print recommendations as they arrive -> summary.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

from .baseline import CooccurrenceModel
from .broker import BROKER_NAME, EmbeddedBroker, create_topology_topics
from .datasets import (
    fetch_ml100k,
    generate_log,
    import_dataset,
    read_jsonl,
    training_events,
    write_jsonl,
)
from .evaluate import percentile
from .graph import build_graph, save_graph, summary
from .procs import start_worker, stop_process
from .replay import replay
from .subscribe import consume, format_recommendation
from .topology import Topology, load_topology

console = Console()


def prepare_data(workdir: Path) -> tuple[Path, Path, str]:
    """Events + catalog: real MovieLens 100K if PyPI is reachable, else a generated log."""
    try:
        src = fetch_ml100k(workdir / "cache")
        summary = import_dataset(src, workdir / "ml-100k")
        label = (
            f"MovieLens 100K (from the recbole wheel on PyPI): {summary.events:,} ratings, "
            f"{summary.users:,} users, {summary.items:,} movies"
        )
        return summary.events_path, summary.catalog_path, label
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        console.print(f"[yellow]MovieLens 100K unavailable ({exc}); using a generated log[/]")
        events, catalog = generate_log(users=1000, items=2000, events_per_user=60)
        out = workdir / "generated"
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "events.jsonl", events)
        write_jsonl(out / "catalog.jsonl", catalog)
        return (
            out / "events.jsonl",
            out / "catalog.jsonl",
            (f"a GENERATED log (planted sequences): {len(events):,} events"),
        )


def split_log(events_path: Path, workdir: Path, stream_events: int) -> tuple[Path, Path, int]:
    rows = list(read_jsonl(events_path))
    n_stream = len(rows) if stream_events <= 0 else min(stream_events, len(rows))
    train_rows = rows[: len(rows) - n_stream] or rows  # all events: train on the whole log
    train, stream = workdir / "train.jsonl", workdir / "stream.jsonl"
    write_jsonl(train, train_rows)
    write_jsonl(stream, rows[len(rows) - n_stream :])
    return train, stream, n_stream


def train_model(train: Path, titles: dict[str, str], root: Path, epochs: int) -> Path:
    """The sequential model when torch is installed (the [train] extra), else the
    co-occurrence model; either way a directory the worker serves."""
    try:
        from .model.train import TrainConfig
        from .model.train import train as train_gru
    except ImportError:
        train_gru = None
    if train_gru is None or epochs <= 0:
        rows = (
            (r["user_id"], r["item_id"], r["event_type"], r["timestamp"]) for r in read_jsonl(train)
        )
        model = CooccurrenceModel.fit(rows, titles=titles)
        console.print(
            f"[bold]model:[/] co-occurrence {model.version} trained on "
            f"{model.meta['n_events']:,} older events, {model.meta['n_items']:,} items"
        )
        return model.save(root / "baseline")
    console.print(f"[bold]model:[/] training the GRU sequence model ({epochs} epochs at most)")
    version = train_gru(
        train,
        root,
        TrainConfig(epochs=epochs),
        titles=titles,
        progress=lambda line: console.print(f"  {line}", highlight=False),
    )
    return version


def build_demo_graph(catalog: Path, train: Path, out: Path) -> Path:
    """Catalog attributes, the dataset's knowledge graph (kg.jsonl) if it has one, and
    co-consumption edges from the training events."""
    kg = catalog.parent / "kg.jsonl"
    g = build_graph(
        read_jsonl(catalog),
        events=training_events(train),
        triples=read_jsonl(kg) if kg.is_file() else (),
    )
    save_graph(g, out, {"catalog": str(catalog), "events": str(train)})
    s = summary(g)
    console.print(
        f"[bold]graph:[/] {s['n_nodes']:,} nodes, {s['n_edges']:,} edges "
        f"({', '.join(f'{k} {v:,}' for k, v in s['nodes'].items())})"
    )
    return out


class Watcher(threading.Thread):
    """Counts recommendations and prints a few per second while the replay runs."""

    def __init__(self, topo: Topology, bootstrap: str, show_per_s: float) -> None:
        super().__init__(daemon=True)
        self.topo, self.bootstrap, self.show_per_s = topo, bootstrap, show_per_s
        self.count = 0
        self.latencies: list[int] = []
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        next_show = 0.0
        for msg in consume(
            self.topo.recommendations.name,
            bootstrap=self.bootstrap,
            from_beginning=True,
            stop=self.stopping.is_set,
        ):
            self.count += 1
            produced = msg.doc.get("produced_at")
            self.first_ms = self.first_ms or produced
            self.last_ms = produced
            src = (msg.doc.get("timings") or {}).get("source_ts")
            if src:
                self.latencies.append(msg.received_ms - src)
            now = time.monotonic()
            if self.show_per_s > 0 and now >= next_show:
                next_show = now + 1 / self.show_per_s
                console.print(
                    format_recommendation(msg.doc, msg.received_ms), highlight=False, soft_wrap=True
                )


def run_demo(
    workdir: Path,
    *,
    stream_events: int = 20000,
    rate: float | None = None,
    show_per_s: float = 2.0,
    epochs: int = 15,
    answer_timeout: float = 120.0,
) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    topo = load_topology()
    broker: EmbeddedBroker | None = None
    worker: subprocess.Popen | None = None
    watcher: Watcher | None = None
    try:
        events_path, catalog_path, label = prepare_data(workdir)
        console.print(f"[bold]data:[/] {label}")
        train, stream, n_stream = split_log(events_path, workdir, stream_events)
        titles = {r["item_id"]: r.get("title", r["item_id"]) for r in read_jsonl(catalog_path)}
        model_dir = train_model(train, titles, workdir / "models", epochs)
        graph_dir = build_demo_graph(catalog_path, train, workdir / "graph")

        broker = EmbeddedBroker(log=workdir / "broker.log")
        bootstrap = broker.start()
        console.print(f"[bold]broker:[/] {BROKER_NAME} at {bootstrap}")
        for name, status in create_topology_topics(topo, bootstrap).items():
            console.print(f"  topic {name}: {status}")

        state_dir = Path(tempfile.mkdtemp(prefix="streamrec-demo-state-", dir=workdir))
        worker = start_worker(
            model=model_dir,
            data_dir=state_dir,
            bootstrap=bootstrap,
            log=workdir / "worker.log",
            graph=graph_dir,
        )
        console.print(f"[bold]worker:[/] pid {worker.pid}, log in {workdir / 'worker.log'}")
        watcher = Watcher(topo, bootstrap, show_per_s)
        watcher.start()

        console.print(
            f"[bold]replay:[/] {n_stream:,} newest events "
            f"{f'at {rate:g}/s' if rate else 'as fast as possible'}"
        )
        started = time.monotonic()
        summary = replay(stream, topo.events.name, bootstrap=bootstrap, rate=rate)
        console.print(
            f"  sent {summary.sent:,} in {summary.elapsed_s:.1f}s "
            f"({summary.rate:,.0f}/s), {summary.failed} failed"
        )

        deadline = time.monotonic() + answer_timeout
        last_count = -1
        while watcher.count < summary.delivered and time.monotonic() < deadline:
            if worker.poll() is not None:
                console.print(f"[red]worker exited with {worker.returncode}; see worker.log[/]")
                return 1
            if watcher.count != last_count:  # still making progress: keep waiting
                last_count = watcher.count
                deadline = max(deadline, time.monotonic() + 30)
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        worker_s = ((watcher.last_ms or 0) - (watcher.first_ms or 0)) / 1000
        console.rule("summary")
        console.print(f"events sent           {summary.sent:,}")
        console.print(f"recommendations       {watcher.count:,}")
        console.print(
            f"first send -> last answer   {elapsed:.1f}s "
            f"({watcher.count / elapsed:,.0f} events/s end to end)"
        )
        if worker_s > 0:
            console.print(
                f"worker publish span   {worker_s:.1f}s ({watcher.count / worker_s:,.0f} events/s)"
            )
        console.print(
            f"latency event->recommendation p50 {percentile(watcher.latencies, 50):.0f} "
            f"ms, p99 {percentile(watcher.latencies, 99):.0f} ms "
            "(includes queueing behind the replay)"
        )
        if watcher.count < summary.delivered:
            console.print(f"[red]{summary.delivered - watcher.count} events were not answered[/]")
            return 1
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; shutting down[/]")
        return 130
    finally:
        if watcher:
            watcher.stopping.set()
            watcher.join(5)
        stop_process(worker)
        if broker:
            broker.stop()
