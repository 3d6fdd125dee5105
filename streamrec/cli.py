"""The ``streamrec`` command line (typer). Each command is a thin wrapper over a module."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import broker as broker_mod
from .config import BOOTSTRAP_ENV, bootstrap_servers
from .procs import exit_on_sigterm
from .topology import Topology, TopologyError, load_topology

app = typer.Typer(
    help="Real-time recommendations on Kafka.", no_args_is_help=True, add_completion=False
)
topics_app = typer.Typer(help="Create or list the topology's topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
group_app = typer.Typer(help="The workers' consumer group.", no_args_is_help=True)
app.add_typer(group_app, name="group")
console = Console(stderr=True, soft_wrap=True)

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        envvar=BOOTSTRAP_ENV,
        help="Kafka bootstrap servers (host:port,...).",
        show_default="127.0.0.1:9092",
    ),
]
TopologyOpt = Annotated[
    Path | None,
    typer.Option(
        "--topology",
        "-t",
        envvar="STREAMREC_TOPOLOGY",
        help="Topology YAML (default: the packaged topologies/default.yaml).",
    ),
]


def _topology(path: Path | None) -> Topology:
    try:
        return load_topology(path)
    except TopologyError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(message)}")  # paths and extras hold [ ]
    return typer.Exit(code)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Kafka port; 0 picks a free one.")] = 9092,
    data_dir: Annotated[Path, typer.Option(help="Where the broker keeps data and offsets.")] = Path(
        ".streamrec/broker"
    ),
) -> None:
    """Run the embedded Kafka-protocol broker in the foreground (Ctrl-C stops it)."""
    exit_on_sigterm()
    b = broker_mod.EmbeddedBroker(port=port, data_dir=data_dir)
    try:
        address = b.start()
    except broker_mod.BrokerError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{broker_mod.BROKER_NAME} ready at [bold]{address}[/] (data in {data_dir})")
    console.print(f"  export {BOOTSTRAP_ENV}={address}")
    try:
        while b.proc and b.proc.poll() is None:
            time.sleep(0.5)
        raise _fail("the broker exited")
    except KeyboardInterrupt:
        console.print("stopping broker")
    finally:
        b.stop()


@topics_app.command("create")
def topics_create(
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
    replication: Annotated[int, typer.Option(help="Replication factor (3 in production).")] = 1,
) -> None:
    """Create every topic of the topology (idempotent)."""
    topo = _topology(topology)
    try:
        result = broker_mod.create_topology_topics(topo, bootstrap, replication)
    except (broker_mod.BrokerError, Exception) as exc:
        raise _fail(str(exc)) from None
    specs = {s.name: s for s in topo.all_topics()}
    for name, status in result.items():
        print(f"{status:8s} {name} ({specs[name].partitions} partitions)")


@topics_app.command("list")
def topics_list(bootstrap: Bootstrap = None, topology: TopologyOpt = None) -> None:
    """List the topology's topics and whether they exist on the cluster."""
    topo = _topology(topology)
    try:
        existing = broker_mod.list_topics(bootstrap)
    except Exception as exc:
        raise _fail(f"cannot reach {bootstrap_servers(bootstrap)}: {exc}") from None
    for spec in topo.all_topics():
        have = existing.get(spec.name)
        state = "missing" if have is None else f"{have} partitions"
        print(f"{spec.name:45s} want {spec.partitions:3d}  have {state}")


@group_app.command("list")
def group_list(bootstrap: Bootstrap = None, topology: TopologyOpt = None) -> None:
    """The workers in the group: instance id and member id."""
    topo = _topology(topology)
    try:
        members = broker_mod.group_members(topo.app_id, bootstrap)
    except Exception as exc:
        raise _fail(f"cannot describe group {topo.app_id!r}: {exc}") from None
    for instance, member in sorted(members.items()):
        print(f"{instance:40s} {member}")
    if not members:
        print(f"group {topo.app_id!r} has no members")


@group_app.command("remove-member")
def group_remove_member(
    instance_id: Annotated[str, typer.Option(help="The dead worker's --instance-id.")],
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
) -> None:
    """Remove a dead worker from the group now, so the others take over its partitions
    (Kafka does this itself after session.timeout.ms; the embedded broker never does)."""
    topo = _topology(topology)
    try:
        member = broker_mod.remove_group_member(topo.app_id, instance_id, bootstrap)
    except Exception as exc:
        raise _fail(str(exc)) from None
    print(f"removed {instance_id} ({member}) from {topo.app_id}; the group rebalances now")


@app.command()
def worker(
    model: Annotated[
        Path,
        typer.Option(
            envvar="STREAMREC_MODEL",
            help="Model directory, or a models root whose CURRENT names the active version "
            "(watched: activating another version switches without restart).",
        ),
    ],
    data_dir: Annotated[
        Path, typer.Option(envvar="STREAMREC_DATA_DIR", help="Local RocksDB state directory.")
    ] = Path(".streamrec/worker"),
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            envvar="STREAMREC_INSTANCE_ID",
            help="Static group member id; default: hostname + data dir. Keep it stable across "
            "restarts (e.g. the pod name) so a restarted worker rejoins at once.",
        ),
    ] = None,
    graph: Annotated[
        Path | None,
        typer.Option(
            envvar="STREAMREC_GRAPH",
            help="Knowledge graph directory (`streamrec graph build`); "
            "live catalog updates apply on top.",
        ),
    ] = None,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="STREAMREC_METRICS_PORT",
            help="Prometheus metrics on this port (/metrics); 0 turns them off.",
        ),
    ] = 9108,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run a streamrec worker (a Faust worker): events in, recommendations out."""
    from .app import WorkerSettings, default_instance_id, run_worker

    topo = _topology(topology)
    from .ranking import resolve_model_dir

    if not (resolve_model_dir(model) / "metadata.json").is_file():
        raise _fail(
            f"{model} is neither a model directory nor a models root with CURRENT; "
            "build one with `streamrec train` or `streamrec train-baseline`"
        )
    run_worker(
        WorkerSettings(
            topo,
            bootstrap_servers(bootstrap),
            model,
            data_dir,
            instance_id=instance_id or default_instance_id(data_dir),
            graph_path=graph,
            metrics_port=metrics_port,
        ),
        loglevel,
    )


@app.command()
def produce(
    user: Annotated[str | None, typer.Option(help="user_id (flag mode)")] = None,
    item: Annotated[str | None, typer.Option(help="item_id (flag mode)")] = None,
    event_type: Annotated[
        str, typer.Option("--type", help="view|click|add_to_cart|purchase|rating|search")
    ] = "view",
    value: Annotated[float | None, typer.Option(help="rating or price")] = None,
    query: Annotated[str | None, typer.Option(help="search query")] = None,
    validate: Annotated[bool, typer.Option(help="Reject invalid events locally.")] = True,
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
) -> None:
    """Send events: one from flags (--user/--item/--type), or JSON lines on stdin.

    Missing event_id and timestamp are filled in (a fresh id, now)."""
    from .replay import produce as produce_events

    topo = _topology(topology)
    if user is not None:
        doc = {"user_id": user, "event_type": event_type}
        for k, v in (("item_id", item), ("value", value), ("query", query)):
            if v is not None:
                doc[k] = v
        lines = [json.dumps(doc).encode()]
    else:
        if sys.stdin.isatty():
            console.print("reading JSON lines from stdin (Ctrl-D ends)")
        lines = (line for line in sys.stdin.buffer)
    summary = produce_events(lines, topo.events.name, bootstrap=bootstrap, validate=validate)
    print(json.dumps(summary.to_dict()))
    if summary.failed or (summary.rejected_locally and not summary.sent):
        raise typer.Exit(1)


@app.command()
def replay(
    log: Annotated[Path, typer.Argument(help="Event log: JSON lines, optionally .gz")],
    rate: Annotated[float | None, typer.Option(help="Events per second.")] = None,
    speed: Annotated[
        float | None, typer.Option(help="Replay at X times the log's own clock (its timestamps).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Send at most N lines.")] = None,
    validate: Annotated[
        bool,
        typer.Option(help="Reject invalid lines locally instead of sending them to the worker."),
    ] = False,
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
) -> None:
    """Replay a recorded event log into the events topic, as fast as possible by default."""
    from .replay import replay as run_replay
    from .replay import total_lines

    topo = _topology(topology)
    if not log.is_file():
        raise _fail(f"no such log: {log}")
    total = total_lines(log, limit)
    with _progress() as progress:
        task = progress.add_task(f"replaying {log.name}", total=total)
        try:
            summary = run_replay(
                log,
                topo.events.name,
                bootstrap=bootstrap,
                rate=rate,
                speed=speed,
                validate=validate,
                limit=limit,
                progress=lambda n: progress.update(task, completed=n),
            )
        except ValueError as exc:
            raise _fail(str(exc), 2) from None
        progress.update(task, completed=total)
    for e in summary.errors[:10]:
        console.print(f"[yellow]{e}[/]")
    print(json.dumps(summary.to_dict()))
    if summary.failed:
        raise typer.Exit(1)


def _progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


@app.command()
def subscribe(
    user: Annotated[str | None, typer.Option(help="Only this user's recommendations.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message.")] = False,
    limit: Annotated[int | None, typer.Option(help="Exit after N messages.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON lines.")] = False,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without a message.")
    ] = None,
    dead_letters: Annotated[bool, typer.Option(help="Read the dead-letter topic instead.")] = False,
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
) -> None:
    """Print recommendations as they arrive."""
    from .subscribe import consume, format_recommendation

    topo = _topology(topology)
    topic = topo.dead_letter.name if dead_letters else topo.recommendations.name
    try:
        for msg in consume(
            topic,
            bootstrap=bootstrap,
            from_beginning=from_beginning,
            key=user.encode() if user else None,
            limit=limit,
            idle_timeout=idle_timeout,
        ):
            if as_json or dead_letters:
                sys.stdout.write(msg.value.decode(errors="replace") + "\n")
            else:
                sys.stdout.write(format_recommendation(msg.doc, msg.received_ms) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@app.command("import")
def import_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            help="Dataset folder or file (RecBole atomic files or "
            "MovieLens u.data / ratings.dat / ratings.csv)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
) -> None:
    """Turn a dataset into events.jsonl (ordered by time), catalog.jsonl and kg.jsonl."""
    from .datasets import import_dataset

    if not path.exists():
        raise _fail(f"no such path: {path}")
    try:
        s = import_dataset(path, out)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"{s.format}: {s.events:,} events, {s.users:,} users, {s.items:,} items, "
        f"{s.catalog_items:,} catalog items, {s.kg_triples:,} knowledge-graph triples"
    )
    for p in (s.events_path, s.catalog_path, s.kg_path):
        if p:
            print(p)


@app.command("fetch-movielens")
def fetch_movielens(
    cache: Annotated[Path, typer.Option(help="Where to keep it.")] = Path(".streamrec/data"),
) -> None:
    """Download MovieLens 100K (RecBole atomic files) from the recbole wheel on PyPI."""
    from .datasets import fetch_ml100k

    try:
        print(fetch_ml100k(cache))
    except RuntimeError as exc:
        raise _fail(str(exc)) from None


@app.command("train-baseline")
def train_baseline(
    events: Annotated[Path, typer.Option(help="Training event log (JSONL[.gz]).")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    catalog: Annotated[Path | None, typer.Option(help="Catalog JSONL, for titles.")] = None,
    window: Annotated[int, typer.Option(help="Co-occurrence window (events).")] = 10,
    neighbours: Annotated[int, typer.Option(help="Neighbours kept per item.")] = 50,
) -> None:
    """Train the item-to-item co-occurrence + popularity recommender."""
    from .baseline import CooccurrenceModel, file_sha256
    from .datasets import read_jsonl, training_events

    if not events.is_file():
        raise _fail(f"no such log: {events}")
    started = time.perf_counter()
    titles = {}
    if catalog:
        titles = {row["item_id"]: row.get("title", row["item_id"]) for row in read_jsonl(catalog)}
    model = CooccurrenceModel.fit(
        training_events(events),
        window=window,
        neighbours=neighbours,
        titles=titles,
        meta={"training_data": str(events), "training_sha256": file_sha256(events)},
    )
    model.save(out)
    m = model.meta
    console.print(
        f"trained {m['version']} on {m['n_events']:,} events, {m['n_items']:,} items "
        f"in {time.perf_counter() - started:.1f}s -> {out}"
    )


@app.command()
def train(
    events: Annotated[Path, typer.Option(help="Event log (JSONL[.gz]).")],
    out: Annotated[
        Path, typer.Option(help="Models root; a new version directory goes here.")
    ] = Path("models"),
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 100,
    dim: Annotated[int, typer.Option(help="Embedding / hidden size.")] = 64,
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog JSONL, for titles in reasons.")
    ] = None,
    activate_version: Annotated[
        bool,
        typer.Option("--activate/--no-activate", help="Point <out>/CURRENT at the new version."),
    ] = True,
) -> None:
    """Train the sequential (GRU) model, export it to ONNX and verify the export."""
    try:
        from .model.train import TrainConfig
        from .model.train import train as run_train
    except ImportError as exc:
        raise _fail(
            f"training needs the [train] extra (pip install 'streamrec[train]'): {exc}"
        ) from None
    from .ranking import activate

    if not events.is_file():
        raise _fail(f"no such log: {events}")
    cfg = TrainConfig(epochs=epochs, dim=dim, patience=patience, seed=seed)
    titles = None
    if catalog:
        from .datasets import read_jsonl

        titles = {r["item_id"]: r.get("title", r["item_id"]) for r in read_jsonl(catalog)}
    with _progress(transient=True) as bar:  # the epoch lines print above the bar
        version_dir = run_train(
            events, out, cfg, progress=lambda line: console.print(line), titles=titles, bar=bar
        )
    if activate_version:
        activate(out, version_dir.name)
        console.print(f"{out}/CURRENT -> {version_dir.name}")
    print(version_dir)


@app.command("activate")
def activate_cmd(
    version: Annotated[Path, typer.Argument(help="A version directory, e.g. models/gru-...")],
) -> None:
    """Make a model version the active one; running workers switch at their next batch."""
    from .ranking import activate

    try:
        activate(version.parent, version.name)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    print(f"{version.parent}/CURRENT -> {version.name}")


@app.command()
def evaluate(
    events: Annotated[Path, typer.Option(help="Event log the model was trained on.")],
    model: Annotated[Path, typer.Option(help="Model version directory or models root.")],
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
    stream: Annotated[
        bool,
        typer.Option(
            help="Also replay the split through a live broker + worker and score what it publishes."
        ),
    ] = False,
    graph: Annotated[
        Path | None,
        typer.Option(
            help="Also evaluate the knowledge-graph join off vs on with this graph: accuracy, "
            "catalog coverage, intra-list diversity, cold-start slices."
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
    workdir: Annotated[Path, typer.Option(help="Scratch space for --stream.")] = Path(
        ".streamrec/evaluate"
    ),
) -> None:
    """Leave-one-out, full-ranking NDCG@10/20 and HR@10/20: model vs baselines."""
    from .evaluate import evaluate_join, evaluate_offline, evaluate_stream

    if not events.is_file():
        raise _fail(f"no such log: {events}")
    started = time.perf_counter()
    results = evaluate_offline(events, model)
    if stream:
        try:
            streamed = evaluate_stream(
                events, model, workdir, bootstrap, progress=lambda line: console.print(line)
            )
        except RuntimeError as err:
            raise _fail(f"--stream: {err}") from None
        results.update(streamed)
    _print_table(
        f"{events.name}: leave-one-out, full ranking, seen items masked",
        results,
        ["users", "NDCG@10", "HR@10", "NDCG@20", "HR@20"],
    )
    if graph is not None:
        topo = _topology(topology)  # the join as the worker runs it
        joined = evaluate_join(
            events, model, graph, top_k=topo.worker.top_k, candidates=topo.join.candidates
        )
        _print_table(
            f"{events.name}: the knowledge-graph join off vs on",
            joined,
            ["users", "NDCG@10", "HR@10", "coverage", "diversity"],
        )
        results.update({f"join | {k}": v for k, v in joined.items()})
    console.print(f"evaluated in {time.perf_counter() - started:.0f}s")
    if out:
        out.write_text(json.dumps(results, indent=2))
        console.print(f"wrote {out}")


@app.command()
def bench(
    events: Annotated[int, typer.Option(help="Backlog events for the max-rate run.")] = 60000,
    users: Annotated[int, typer.Option(help="Distinct users in the generated events.")] = 5000,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 3706,
    load_seconds: Annotated[float, typer.Option(help="Seconds per offered-load step.")] = 5.0,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model for the worker (default: a co-occurrence model on generated data)."
        ),
    ] = None,
    graph: Annotated[Path | None, typer.Option(help="Knowledge graph for the worker.")] = None,
    systems: Annotated[
        str, typer.Option(help="Comma-separated: raw,faust,worker.")
    ] = "raw,faust,worker",
    workers: Annotated[
        int, typer.Option(help="Worker processes in one group (at most the events partitions).")
    ] = 1,
    workdir: Annotated[Path, typer.Option(help="Output: bench.json, bench.png, logs.")] = Path(
        ".streamrec/bench"
    ),
    keep_records: Annotated[
        bool,
        typer.Option(
            help="Do not delete each step's records after it (the embedded broker's CPU "
            "grows with the data it holds; see the README)."
        ),
    ] = False,
    runs: Annotated[
        int,
        typer.Option(
            help="Run the bench this many times on one broker and report each figure's "
            "median, every run's beside it (one run's maximum moves ±20 % on a busy machine)."
        ),
    ] = 1,
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
) -> None:
    """Throughput and latency: raw Kafka loop vs bare Faust vs the full worker."""
    from .bench import BenchConfig, BenchError, run_bench

    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    topo = _topology(topology)  # the worker's batching knobs come from here
    cfg = BenchConfig(
        topology=topo,
        events=events,
        users=users,
        items=items,
        load_seconds=load_seconds,
        workdir=workdir,
        bootstrap=bootstrap,
        model=model,
        graph=graph,
        systems=chosen,
        workers=workers,
        keep_records=keep_records,
        runs=runs,
    )
    try:
        result = run_bench(cfg, progress=lambda line: console.print(line))
    except (ValueError, BenchError) as exc:
        raise _fail(str(exc)) from None
    print(json.dumps({k: v for k, v in result.items() if k not in ("systems", "runs")}, indent=2))
    console.print(f"wrote {workdir / 'bench.json'} and {workdir / 'bench.png'}")


def _print_table(title: str, rows: dict[str, dict[str, float]], cols: list[str]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("recommender")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(name, *(f"{m[c]:,}" if c == "users" else f"{m[c]:.4f}" for c in cols))
    Console().print(table)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="How many of the latest events to stream.")] = 20000,
    rate: Annotated[
        float | None, typer.Option(help="Replay rate, events/s (default: max).")
    ] = None,
    show: Annotated[float, typer.Option(help="Recommendations printed per second.")] = 2.0,
    epochs: Annotated[
        int, typer.Option(help="GRU training epochs (0: use the co-occurrence model only).")
    ] = 15,
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps data and models.")] = Path(
        ".streamrec/demo"
    ),
) -> None:
    """End to end on the embedded broker: MovieLens 100K in, recommendations out."""
    from .demo import run_demo

    exit_on_sigterm()
    raise typer.Exit(
        run_demo(workdir, stream_events=events, rate=rate, show_per_s=show, epochs=epochs)
    )


graph_app = typer.Typer(help="The item knowledge graph.", no_args_is_help=True)
app.add_typer(graph_app, name="graph")
catalog_app = typer.Typer(help="Catalog updates (the catalog topic).", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@graph_app.command("build")
def graph_build(
    catalog: Annotated[Path, typer.Option(help="Catalog JSONL (streamrec import).")],
    out: Annotated[Path, typer.Option(help="Graph directory to write.")],
    events: Annotated[
        Path | None, typer.Option(help="Event log, for co-consumed/co-bought edges.")
    ] = None,
    kg: Annotated[
        Path | None,
        typer.Option(
            help="Knowledge-graph triples JSONL (kg.jsonl); default: kg.jsonl beside the catalog."
        ),
    ] = None,
) -> None:
    """Build the NetworkX knowledge graph and save it as node-link JSON."""
    from .baseline import file_sha256
    from .datasets import read_jsonl, training_events
    from .graph import build_graph, save_graph

    for p in (catalog, events, kg):
        if p is not None and not p.is_file():
            raise _fail(f"no such file: {p}")
    kg = kg or (catalog.parent / "kg.jsonl" if (catalog.parent / "kg.jsonl").is_file() else None)
    started = time.perf_counter()
    g = build_graph(
        read_jsonl(catalog),
        events=training_events(events) if events else (),
        triples=read_jsonl(kg) if kg else (),
    )
    sources = {str(p): file_sha256(p) for p in (catalog, events, kg) if p}
    save_graph(g, out, sources)
    meta = json.loads((out / "metadata.json").read_text())
    console.print(f"built {meta['version']} in {time.perf_counter() - started:.1f}s -> {out}")
    summ = meta["summary"]
    print(
        f"nodes: {summ['n_nodes']:,}  " + ", ".join(f"{k} {v:,}" for k, v in summ["nodes"].items())
    )
    print(
        f"edges: {summ['n_edges']:,}  " + ", ".join(f"{k} {v:,}" for k, v in summ["edges"].items())
    )


@catalog_app.command("publish")
def catalog_publish(
    source: Annotated[
        Path, typer.Argument(help="Catalog JSONL (one update per line); - for stdin.")
    ],
    bootstrap: Bootstrap = None,
    topology: TopologyOpt = None,
) -> None:
    """Send catalog updates (validated, keyed by item_id) to the catalog topic."""
    from .events import Rejected, decode_catalog
    from .replay import EventSender

    topo = _topology(topology)
    lines = sys.stdin.buffer if str(source) == "-" else source.open("rb")
    sender = EventSender(topo.catalog.name, bootstrap)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = decode_catalog(line.strip())
        except Rejected as exc:
            sender.reject(f"line {n}: {exc.message}")
            console.print(f"[yellow]rejected line {n}: {exc.message}[/]")
            continue
        sender.send(line.strip(), doc["item_id"].encode())
    print(json.dumps(sender.close().to_dict()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
