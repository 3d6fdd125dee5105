"""The topology loader: defaults, validation errors that name the key, namespacing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamrec.topology import ROCKSDB_DEFAULTS, TopologyError, load_topology, parse_topology

REPO = Path(__file__).resolve().parents[1]


def test_packaged_default_is_the_repo_file() -> None:
    packaged = load_topology()
    repo = load_topology(REPO / "topologies" / "default.yaml")
    assert (packaged.topics, packaged.worker) == (repo.topics, repo.worker)
    assert packaged.events.partitions == packaged.sessions_changelog.partitions
    assert packaged.sessions_changelog.name == "streamrec-sessions-changelog"
    assert packaged.sessions_changelog.config == {"cleanup.policy": "compact"}
    assert packaged.worker.batch_size > 0 and packaged.worker.linger_ms >= 0


def doc(**change):
    d = yaml.safe_load((REPO / "topologies" / "default.yaml").read_text())
    d.update(change)
    return d


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"app_id": ""}, "app_id"),
        ({"topics": {"events": {"name": "e", "partitions": 1}}}, "missing"),
        ({"worker": {"batch_size": 0}}, r"worker\.batch_size"),
        ({"worker": {"batch_sise": 10}}, "unknown worker settings"),
    ],
)
def test_errors_name_the_problem(change, message) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_topology(doc(**change))


def test_bad_partitions_and_duplicate_names() -> None:
    d = doc()
    d["topics"]["events"]["partitions"] = -2
    with pytest.raises(TopologyError, match=r"topics\.events\.partitions"):
        parse_topology(d)
    d = doc()
    d["topics"]["catalog"]["name"] = d["topics"]["events"]["name"]
    with pytest.raises(TopologyError, match="distinct"):
        parse_topology(d)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="not found"):
        load_topology(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("topics: [unclosed")
    with pytest.raises(TopologyError, match="YAML"):
        load_topology(tmp_path / "bad.yaml")


def test_namespaced_dump_roundtrip(tmp_path: Path) -> None:
    topo = load_topology().namespaced("t1")
    assert topo.events.name.endswith(".t1") and topo.app_id == "streamrec-t1"
    again = load_topology(topo.dump(tmp_path / "t.yaml"))
    assert again.topics == topo.topics and again.worker == topo.worker
    assert again.sessions_changelog == topo.sessions_changelog


def test_rocksdb_memory_settings_reach_faust(small_model, tmp_path) -> None:
    """The topology's per-partition RocksDB memory bounds are what Faust opens with."""
    from streamrec.app import WorkerSettings, create_app

    text = load_topology().to_dict()
    text["tables"]["sessions"]["rocksdb"] = {"write_buffer_size": 8 * 2**20}
    topo = parse_topology(text)
    app = create_app(
        WorkerSettings(topology=topo, bootstrap="x:1", model_path=small_model, data_dir=tmp_path)
    )
    opts = app.tables[topo.sessions_table].data.rocksdb_options
    assert opts.write_buffer_size == 8 * 2**20
    assert opts.block_cache_size == ROCKSDB_DEFAULTS["block_cache_size"]
    text["tables"]["sessions"]["rocksdb"] = {"cache": 1}
    with pytest.raises(TopologyError, match=r"unknown tables\.sessions\.rocksdb"):
        parse_topology(text)
