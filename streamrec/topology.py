"""The topology: the one place that knows topic names, partitions and agent knobs.

Loaded from YAML (``topologies/default.yaml`` ships with the package). Everything else
asks a :class:`Topology` for names instead of spelling them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TOPIC_ROLES = ("events", "recommendations", "dead_letter", "catalog")


class TopologyError(ValueError):
    """The topology file is missing something or contradicts itself."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSpec:
    batch_size: int = 500
    linger_ms: int = 5  # after the agent is free (natural batching); README "Batching"
    in_flight: int = 4  # batches sent and not yet acknowledged by Kafka (delivery.py)
    top_k: int = 10
    session_length: int = 50
    max_event_bytes: int = 65536
    max_future_skew_ms: int = 86_400_000


@dataclass(frozen=True)
class JoinSpec:
    """The knowledge-graph join (join.py): candidates asked of the model, when to
    expand from the graph, and the diversity rule."""

    enabled: bool = True
    candidates: int = 30
    short_history: int = 2
    attribute: str = "genre"
    max_per_value: int = 4


# RocksDB memory per sessions partition (Faust's RocksDBOptions). Faust's defaults
# (3 x 64 MiB write buffers, a 2 GiB block cache per partition) let a worker's RSS
# grow to gigabytes; these bound it (benchmarks/state_scale.py measures RSS vs users).
ROCKSDB_DEFAULTS = {
    "write_buffer_size": 16 * 2**20,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 * 2**20,
    "block_cache_compressed_size": 8 * 2**20,
}


@dataclass(frozen=True)
class Topology:
    app_id: str
    topics: dict[str, TopicSpec]
    sessions_table: str
    sessions_config: dict[str, str]
    worker: WorkerSpec
    join: JoinSpec = field(default_factory=JoinSpec)
    source: str = "<memory>"
    sessions_rocksdb: dict[str, int] = field(default_factory=lambda: dict(ROCKSDB_DEFAULTS))

    @property
    def events(self) -> TopicSpec:
        return self.topics["events"]

    @property
    def recommendations(self) -> TopicSpec:
        return self.topics["recommendations"]

    @property
    def dead_letter(self) -> TopicSpec:
        return self.topics["dead_letter"]

    @property
    def catalog(self) -> TopicSpec:
        return self.topics["catalog"]

    @property
    def sessions_changelog(self) -> TopicSpec:
        """Faust names a table's changelog ``<app_id>-<table>-changelog``; it must be
        co-partitioned with the events topic so state follows its partition."""
        return TopicSpec(
            name=f"{self.app_id}-{self.sessions_table}-changelog",
            partitions=self.events.partitions,
            config=dict(self.sessions_config),
        )

    def all_topics(self) -> list[TopicSpec]:
        return [*self.topics.values(), self.sessions_changelog]

    def namespaced(self, suffix: str) -> Topology:
        """A copy whose app id and topic names carry ``suffix`` (isolated test runs)."""
        topics = {
            role: replace(spec, name=f"{spec.name}.{suffix}") for role, spec in self.topics.items()
        }
        return replace(self, app_id=f"{self.app_id}-{suffix}", topics=topics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "topics": {
                role: {"name": s.name, "partitions": s.partitions, "config": s.config}
                for role, s in self.topics.items()
            },
            "tables": {
                "sessions": {
                    "name": self.sessions_table,
                    "config": self.sessions_config,
                    "rocksdb": dict(self.sessions_rocksdb),
                }
            },
            "worker": self.worker.__dict__.copy(),
            "join": self.join.__dict__.copy(),
        }

    def dump(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def _positive_int(value: Any, where: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise TopologyError(f"{where} must be {what}, got {value!r}")
    return value


def parse_topology(doc: Any, source: str = "<memory>") -> Topology:
    """Validate a parsed YAML document; errors name the offending key."""
    if not isinstance(doc, dict):
        raise TopologyError(f"{source}: top level must be a mapping")
    app_id = doc.get("app_id")
    if not isinstance(app_id, str) or not app_id:
        raise TopologyError(f"{source}: app_id must be a non-empty string")
    raw_topics = doc.get("topics") or {}
    missing = [r for r in TOPIC_ROLES if r not in raw_topics]
    if missing:
        raise TopologyError(f"{source}: topics is missing {', '.join(missing)}")
    unknown = sorted(set(raw_topics) - set(TOPIC_ROLES))
    if unknown:
        raise TopologyError(f"{source}: unknown topic roles {unknown}; known: {TOPIC_ROLES}")
    topics: dict[str, TopicSpec] = {}
    for role in TOPIC_ROLES:
        spec = raw_topics[role] or {}
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise TopologyError(f"{source}: topics.{role}.name must be a non-empty string")
        parts = _positive_int(spec.get("partitions", 1), f"{source}: topics.{role}.partitions")
        config = {str(k): str(v) for k, v in (spec.get("config") or {}).items()}
        topics[role] = TopicSpec(name=name, partitions=parts, config=config)
    names = [t.name for t in topics.values()]
    if len(set(names)) != len(names):
        raise TopologyError(f"{source}: topic names must be distinct, got {names}")
    sessions = (doc.get("tables") or {}).get("sessions") or {}
    worker_doc = doc.get("worker") or {}
    known = set(WorkerSpec.__dataclass_fields__)
    bad = sorted(set(worker_doc) - known)
    if bad:
        raise TopologyError(f"{source}: unknown worker settings {bad}; known: {sorted(known)}")
    worker = WorkerSpec(
        **{
            # linger_ms 0: a batch is what has come when the agent is free, no waiting
            k: _positive_int(v, f"{source}: worker.{k}", 0 if k == "linger_ms" else 1)
            for k, v in worker_doc.items()
        }
    )
    join_doc = doc.get("join") or {}
    bad = sorted(set(join_doc) - set(JoinSpec.__dataclass_fields__))
    if bad:
        raise TopologyError(f"{source}: unknown join settings {bad}")
    join = JoinSpec(**join_doc)
    for name in ("candidates", "max_per_value"):
        _positive_int(getattr(join, name), f"{source}: join.{name}")
    if not isinstance(join.short_history, int) or join.short_history < 0:
        raise TopologyError(f"{source}: join.short_history must be an integer >= 0")
    rocksdb = dict(ROCKSDB_DEFAULTS)
    raw_rocksdb = sessions.get("rocksdb") or {}
    bad = sorted(set(raw_rocksdb) - set(ROCKSDB_DEFAULTS))
    if bad:
        raise TopologyError(
            f"{source}: unknown tables.sessions.rocksdb settings {bad}; "
            f"known: {sorted(ROCKSDB_DEFAULTS)}"
        )
    for key, value in raw_rocksdb.items():
        rocksdb[key] = _positive_int(value, f"{source}: tables.sessions.rocksdb.{key}")
    return Topology(
        sessions_rocksdb=rocksdb,
        join=join,
        app_id=app_id,
        topics=topics,
        sessions_table=str(sessions.get("name", "sessions")),
        sessions_config={str(k): str(v) for k, v in (sessions.get("config") or {}).items()},
        worker=worker,
        source=source,
    )


def load_topology(path: str | Path | None = None) -> Topology:
    """Load a topology file, or the packaged ``default.yaml`` when ``path`` is None."""
    if path is None:
        text = resources.files("streamrec.topologies").joinpath("default.yaml").read_text()
        return parse_topology(yaml.safe_load(text), "default.yaml")
    p = Path(path)
    if not p.is_file():
        raise TopologyError(f"topology file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise TopologyError(f"{p}: not valid YAML: {exc}") from None
    return parse_topology(doc, str(p))
