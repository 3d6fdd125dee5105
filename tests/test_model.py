"""The sequential model: training on planted structure, ONNX export checks, the cached
per-user state in serving, versions and fallbacks."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamrec.datasets import generate_log, write_jsonl
from streamrec.evaluate import evaluate_offline
from streamrec.graph import GraphIndex, build_graph
from streamrec.join import GraphJoin, JoinSettings
from streamrec.model.runtime import ModelError, SequentialModel, file_sha256
from streamrec.pipeline import Record, process_batch
from streamrec.ranking import (
    CooccurrenceRanker,
    GraphRanker,
    ModelWatcher,
    RankRequest,
    SequentialRanker,
    activate,
    load_ranker,
    shown_scores,
)
from streamrec.state import SessionState
from streamrec.topology import WorkerSpec

from .helpers import count_made_candidates

torch = pytest.importorskip("torch", reason="training needs the [train] extra")
from streamrec.model.train import ExportMismatch, TrainConfig, train, verify_export  # noqa: E402

SPEC = WorkerSpec(top_k=10, session_length=50)


@pytest.fixture(scope="session")
def planted_log(tmp_path_factory) -> Path:
    events, _ = generate_log(users=300, items=200, events_per_user=20, seed=21)
    path = tmp_path_factory.mktemp("planted") / "events.jsonl"
    write_jsonl(path, events)
    return path


@pytest.fixture(scope="session")
def models_root(planted_log: Path, tmp_path_factory) -> Path:
    """Two versions trained on the planted log (different seeds); CURRENT -> the first."""
    root = tmp_path_factory.mktemp("models")
    for seed in (1, 2):
        cfg = TrainConfig(dim=32, epochs=12, patience=3, seed=seed, lr=5e-3)
        version = train(planted_log, root, cfg, progress=lambda _: None)
        (root / f"v{seed}").symlink_to(version.name)
    activate(root, (root / "v1").resolve().name)
    return root


def v(root: Path, n: int) -> Path:
    return (root / f"v{n}").resolve()


def test_sequence_model_clearly_beats_popularity(planted_log: Path, models_root: Path) -> None:
    results = evaluate_offline(planted_log, v(models_root, 1))
    model = next(m for name, m in results.items() if name.startswith("model"))
    pop = results["most popular"]
    print(results)
    assert model["NDCG@10"] > 0.3
    assert model["NDCG@10"] > 3 * pop["NDCG@10"]
    assert model["users"] == pop["users"] == 300


def test_training_is_reproducible(planted_log: Path, models_root: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(dim=32, epochs=12, patience=3, seed=1, lr=5e-3)
    again = train(planted_log, tmp_path, cfg, progress=lambda _: None)
    import json

    first = json.loads((v(models_root, 1) / "metadata.json").read_text())
    second = json.loads((again / "metadata.json").read_text())
    assert first["history"] == second["history"]


def test_export_is_verified_against_torch(models_root: Path, tmp_path: Path) -> None:
    from streamrec.model.network import GRURec
    from streamrec.model.train import export_onnx

    model = SequentialModel(v(models_root, 1))
    net = GRURec(model.meta["n_items"], model.dim)  # untrained: differs from the export
    with pytest.raises(ExportMismatch):
        verify_export(net, v(models_root, 1), seqs=[[1, 2, 3], [4, 5], [6]])
    out = tmp_path / "fresh"
    shutil.copytree(v(models_root, 1), out)
    export_onnx(net, out / "model.onnx", model.k)
    with pytest.raises(ModelError, match="SHA-256"):
        SequentialModel(out)  # metadata still carries the old hash


def test_the_model_gives_as_many_top_items_as_asked(models_root: Path) -> None:
    """K is an input of the exported graph (TopK's cost grows with it): the first k of
    a larger K are the same items and scores."""
    model = SequentialModel(v(models_root, 1))
    assert model.takes_k and model.k == 100
    rows = [[10, 11, 12], [57, 58, 0]]
    args = (np.array(rows), np.zeros((2, model.dim), np.float32), np.array([3, 6]))
    exclude = np.array([[10, 11, 12], [57, 58, 0]])
    _, scores, top = model.run(*args, exclude)
    _, few_scores, few = model.run(*args, exclude, k=7)
    assert top.shape == (2, 100) and few.shape == (2, 7)
    assert np.array_equal(few, top[:, :7]) and np.array_equal(few_scores, scores[:, :7])
    assert model.run(*args, exclude, k=500)[2].shape == (2, 100)  # at most the model's K
    assert [model.top_count(k) for k in (7, 500, None)] == [7, 100, 100]


def test_each_answer_masks_the_items_of_its_window(models_root: Path) -> None:
    ranker = load_ranker(models_root)
    assert isinstance(ranker, SequentialRanker)
    index = ranker.model.index
    windows = [["i10", "i11", "i10", "nope"], [], [None, "i57"]]  # None: a search's item
    states = [
        SessionState(
            entries=[[i, "search" if i is None else "view", n, f"e{n}"] for n, i in enumerate(w)]
        )
        for w in windows
    ]
    exclude = ranker._excluded(states)
    assert exclude.shape == (3, 4) and exclude.dtype == np.int64
    assert exclude.tolist() == [
        [index["i10"], index["i11"], index["i10"], 0],  # unknown: padding, masked anyway
        [0, 0, 0, 0],
        [index["i57"], 0, 0, 0],
    ]


def old_style_copy(version: Path, dest: Path) -> Path:
    """``version`` as exported before K was an input: TopK's K a constant again."""
    import json

    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(version, dest)
    model = onnx.load(str(dest / "model.onnx"))
    graph = model.graph
    (k_input,) = [i for i in graph.input if i.name == "k"]
    (k_init,) = [i for i in graph.initializer if i.name == "k"]
    value = numpy_helper.to_array(k_init)
    graph.input.remove(k_input)
    graph.initializer.remove(k_init)
    graph.node.insert(
        0, helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(value))
    )
    onnx.save(model, str(dest / "model.onnx"))
    meta = json.loads((dest / "metadata.json").read_text())
    meta["onnx_sha256"] = file_sha256(dest / "model.onnx")
    (dest / "metadata.json").write_text(json.dumps(meta))
    return dest


def test_a_model_exported_before_k_was_an_input_is_served_alike(
    models_root: Path, tmp_path: Path
) -> None:
    new = load_ranker(v(models_root, 1), top_k=5)
    old = load_ranker(old_style_copy(v(models_root, 1).resolve(), tmp_path / "old"), top_k=5)
    assert isinstance(new, SequentialRanker) and isinstance(old, SequentialRanker)
    assert new.model.takes_k and not old.model.takes_k
    values = [*events_for("u1", ["i10", "i11", "i12"]), *events_for("u2", ["i57"])]
    items = lambda ranker: [doc["items"] for doc in answer(ranker, {}, values, 0)]  # noqa: E731
    assert items(old) == items(new)
    arrays = (np.array([[10]]), np.zeros((1, old.model.dim), np.float32), np.array([1]))
    assert old.model.run(*arrays, np.array([[10]]), k=5)[2].shape == (1, 100)
    assert old.model.top_count(5) == 100


def answer(ranker, store: dict[str, bytes], values: list[bytes], start: int) -> list[dict]:
    recs = [
        Record(orjson.loads(x)["user_id"].encode(), x, "events", 0, start + n)
        for n, x in enumerate(values)
    ]
    result = process_batch(recs, lambda u, r: store.get(u), ranker, SPEC)
    store.update({u: val for u, (val, _) in result.state_writes.items()})
    return [orjson.loads(val) for _, val in result.recommendations]


def events_for(user: str, items: list[str]) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event_id": f"{user}-{n}",
                "user_id": user,
                "item_id": item,
                "event_type": "view",
                "timestamp": 1_700_000_000_000 + n,
            }
        )
        for n, item in enumerate(items)
    ]


def test_cached_state_gives_the_full_history_answer(models_root: Path) -> None:
    """Event by event (one GRU step each, state in the session) or all in one batch or
    from the full history offline: the same list."""
    ranker = load_ranker(models_root)
    assert isinstance(ranker, SequentialRanker)
    history = ["i10", "i11", "i12", "i57", "i58", "i13", "i14"]
    values = events_for("u1", history)
    store: dict[str, bytes] = {}
    one_by_one = [answer(ranker, store, [x], n)[0] for n, x in enumerate(values)]
    state = SessionState.from_bytes(store["u1"])
    assert state.hv == ranker.version and state.hn == len(history) and state.h
    batch = answer(ranker, {}, values, 0)
    offline = ranker.model.recommend_histories([history], k=10)[0]
    ids = lambda doc: [i["item_id"] for i in doc["items"]]  # noqa: E731
    assert ids(one_by_one[-1]) == ids(batch[-1]) == offline
    for a, b in zip(one_by_one, batch, strict=True):
        assert ids(a) == ids(b)
    assert all(doc["model_version"] == ranker.version for doc in one_by_one)
    assert all(item["reasons"] for item in one_by_one[-1]["items"])


def test_the_join_reads_the_models_candidates_only_as_far_as_it_keeps(
    models_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model proposes 30 candidates and the join keeps 3: only the ones it reads
    are made (making all 30 was ~1/4 of this ranker's Python time), same answer."""
    ranker = load_ranker(models_root, top_k=30)
    assert isinstance(ranker, SequentialRanker)
    entries = [[i, "view", n, f"e{n}"] for n, i in enumerate(["i10", "i11"])]
    state = SessionState(entries=entries, n_events=2)
    req = RankRequest("u1", state)
    (everything,) = ranker.rank_batch([req]).items
    made = count_made_candidates(monkeypatch, "streamrec.ranking")
    settings = JoinSettings(top_k=3, short_history=0)
    join = GraphJoin(GraphIndex(), settings, known=set(ranker.model.items))
    (joined,) = GraphRanker(ranker, join).rank_batch([req]).items
    assert made == [i["item_id"] for i in everything[:3]]
    assert [i["item_id"] for i in joined] == made


def test_shown_scores_are_rounded_on_every_path(models_root: Path) -> None:
    """The GRU's candidates carry scores rounded to 4 decimals, as shown: the plain
    ranker, the join, and a short history's blend with the graph all give 4-decimal
    scores. (Without the rounding in ``candidates`` this fails.)"""
    ranker = load_ranker(models_root, top_k=30)
    assert isinstance(ranker, SequentialRanker)
    events, catalog = generate_log(users=300, items=200, events_per_user=20, seed=21)
    rows = [(e["user_id"], e["item_id"], e["event_type"], e["timestamp"]) for e in events]
    index = GraphIndex.from_graph(build_graph(catalog, events=rows))
    join = GraphJoin(index, JoinSettings(top_k=10), known=set(ranker.model.items))
    long = [[f"i{n}", "view", n, f"e{n}"] for n in (10, 11, 12, 13, 14)]
    requests = [
        RankRequest("long", SessionState(entries=long, n_events=5)),
        RankRequest("short", SessionState(entries=long[:1], n_events=1)),  # blended
    ]
    answers = [
        list(ranker.rank_batch(requests).items),
        list(GraphRanker(ranker, join).rank_batch(requests).items),
    ]
    assert [len(items) for answer in answers for items in answer] == [30, 30, 10, 10]
    for items in (i for answer in answers for i in answer):
        assert all(i["score"] == round(i["score"], 4) for i in items)
        assert all(i["reasons"] for i in items)
    # Both join paths ran: a long history keeps the model's order; a short one's blend
    # brings the graph's own candidates in.
    first = lambda items: [i["item_id"] for i in items[:10]]  # noqa: E731
    assert first(answers[1][0]) == first(answers[0][0])  # the model leads, nothing to cut
    assert set(first(answers[1][1])) - set(first(answers[0][1]))


def test_scores_rounded_for_the_batch_equal_pythons_round() -> None:
    """The batch's scores are rounded in numpy; what is shown must be what ``round(x,
    4)`` gives, half-way decimals and every magnitude included (a float32 rounding, or
    rounding after a float32 multiply, differs)."""
    rng = np.random.default_rng(3)
    scores = np.concatenate(
        [
            *((rng.standard_normal(20_000) * scale) for scale in (1e-3, 0.1, 1, 10, 1000)),
            np.arange(-4000, 4000) / 32,  # exact half-way decimals: x.xxxx5
            np.array([np.inf, -np.inf]),
        ]
    ).astype(np.float32)
    assert shown_scores(scores).tolist() == [round(x, 4) for x in scores.tolist()]


def test_masked_or_padding_entries_among_the_first_k_are_skipped(
    models_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that gives more than top_k columns (one exported before its K was an
    input gives its own K, 100): only the first top_k are read, except in rows where
    one of them is masked (-inf) or padding (0): those read on, as far as needed."""
    ranker = load_ranker(models_root, top_k=3)
    assert isinstance(ranker, SequentialRanker)
    real_run = ranker.model.run
    seen: dict[str, list] = {}

    def run(items, h0, gather, exclude, k=None):
        states, scores, top = real_run(items, h0, gather, exclude)  # all K columns
        scores[0, 1] = float("-inf")  # masked
        top[0, 2] = 0  # padding
        seen.update(scores=scores[0].tolist(), top=top[0].tolist())
        return states, scores, top

    monkeypatch.setattr(ranker.model, "run", run)
    entries = [[i, "view", n, f"e{n}"] for n, i in enumerate(["i10", "i11"])]
    other = [[i, "view", n, f"f{n}"] for n, i in enumerate(["i30", "i31"])]
    requests = [
        RankRequest("u1", SessionState(entries=entries, n_events=2)),
        RankRequest("u2", SessionState(entries=other, n_events=2)),
    ]
    (first, second), _ = ranker.candidates(requests)
    first, names = list(first), ranker.model.items
    assert [c.item_id for c in first] == [names[seen["top"][j] - 1] for j in (0, 3, 4)]
    # The model's own scores, rounded as shown (the row read past top_k too).
    assert [c.score for c in first] == [round(seen["scores"][j], 4) for j in (0, 3, 4)]
    assert len(list(second)) == 3


def test_new_version_rebuilds_state_from_the_window(models_root: Path) -> None:
    old, new = load_ranker(v(models_root, 1)), load_ranker(v(models_root, 2))
    history = ["i20", "i21", "i22", "i23"]
    store: dict[str, bytes] = {}
    answer(old, store, events_for("u2", history[:3]), 0)
    assert SessionState.from_bytes(store["u2"]).hv == old.version
    (doc,) = answer(new, store, events_for("u2", history)[3:], 3)
    assert doc["model_version"] == new.version
    assert [i["item_id"] for i in doc["items"]] == new.model.recommend_histories([history])[0][:10]
    assert SessionState.from_bytes(store["u2"]).hv == new.version


def test_unknown_users_and_items_fall_back_to_cooccurrence(models_root: Path) -> None:
    ranker = load_ranker(models_root)
    (doc,) = answer(ranker, {}, events_for("u3", ["never-seen-item"]), 0)
    fallback = CooccurrenceRanker(ranker.fallback.model, 10)
    assert [i["item_id"] for i in doc["items"]] == [
        i["item_id"]
        for i in fallback.rank_one(SessionState(entries=[["never-seen-item", "view", 0, "x"]]))
    ]
    assert all("popular" in i["reasons"][0] for i in doc["items"])


def test_watcher_switches_versions_and_refuses_broken_ones(
    models_root: Path, tmp_path: Path, caplog
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    for n in (1, 2):
        shutil.copytree(v(models_root, n), root / v(models_root, n).name)
    broken = root / "broken"
    shutil.copytree(v(models_root, 2), broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    activate(root, v(models_root, 1).name)
    watcher = ModelWatcher(root, top_k=10, interval=0)
    first = watcher.ranker.version
    activate(root, "broken")
    with caplog.at_level(logging.ERROR):
        assert watcher.poll().version == first
    assert "refusing model" in caplog.text and "SHA-256" in caplog.text
    activate(root, v(models_root, 2).name)
    assert watcher.poll().version == v(models_root, 2).name != first


@pytest.mark.broker
def test_hot_swap_under_traffic_loses_and_repeats_nothing(
    broker: str, models_root: Path, planted_log: Path, topology, tmp_path: Path
) -> None:
    """A worker on a models root; mid-replay CURRENT moves to another version."""
    from streamrec.datasets import iter_lines
    from streamrec.procs import stop_process
    from streamrec.replay import replay

    from .helpers import Collector, start_test_worker

    topo, topo_file = topology
    root = tmp_path / "models"
    root.mkdir()
    for n in (1, 2):
        shutil.copytree(v(models_root, n), root / v(models_root, n).name)
    activate(root, v(models_root, 1).name)
    lines = list(iter_lines(planted_log))[:3000]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(b"\n".join(lines[:1500]) + b"\n")
    second.write_bytes(b"\n".join(lines[1500:]) + b"\n")
    recs = Collector(topo.recommendations.name, broker)
    recs.start()
    worker, log = start_test_worker(broker, root, topo_file, tmp_path)
    try:
        replay(first, topo.events.name, bootstrap=broker)
        assert recs.wait_count(1500, 90), f"{len(recs.docs)} answered; see {log}"
        activate(root, v(models_root, 2).name)
        # 1,500 events at 400/s outlast the watcher's 2 s check interval, so the
        # new version must take over part-way.
        replay(second, topo.events.name, bootstrap=broker, rate=400)
        assert recs.wait_count(3000, 90), f"{len(recs.docs)} answered; see {log}"
        recs.wait_quiet(2.0, 10)
    finally:
        assert stop_process(worker) == 0
    docs = recs.close()
    ids = [d["event_id"] for d in docs]
    assert len(ids) == len(set(ids)) == 3000
    versions = [d["model_version"] for d in docs]
    v1, v2 = v(models_root, 1).name, v(models_root, 2).name
    assert set(versions) == {v1, v2}
    assert all(x == v1 for x in versions[:1500])
    print(f"\nhot swap: {versions.count(v1)} answers by {v1}, {versions.count(v2)} by {v2}")


def test_join_evaluation_reports_both_sides(
    planted_log: Path, models_root: Path, tmp_path: Path
) -> None:
    from streamrec.evaluate import evaluate_join
    from streamrec.graph import build_graph, save_graph

    _, catalog = generate_log(users=300, items=200, events_per_user=20, seed=21)
    for row in catalog:  # a diversity attribute for the join to act on
        row["attributes"]["genre"] = f"g{int(row['item_id'][1:]) % 3}"
    save_graph(build_graph(catalog), tmp_path / "g", {})
    out = evaluate_join(planted_log, v(models_root, 1), tmp_path / "g")
    off, on = out["all users: join off"], out["all users: join on"]
    assert off["users"] == on["users"] == 300
    assert on["diversity"] > off["diversity"]
    assert 0 < on["coverage"] <= 1 and on["NDCG@10"] > 0.1
    assert "cold users (2 events): join on" in out


def test_versions_trained_within_one_second_do_not_collide(tmp_path: Path) -> None:
    events, _ = generate_log(users=30, items=20, events_per_user=6, seed=1)
    write_jsonl(tmp_path / "e.jsonl", events)
    cfg = TrainConfig(dim=8, epochs=1, min_epochs=1, patience=1)
    dirs = [
        train(tmp_path / "e.jsonl", tmp_path / "m", cfg, progress=lambda _: None) for _ in range(3)
    ]
    assert len({d.name for d in dirs}) == 3
    assert all(SequentialModel(d).version == d.name for d in dirs)
