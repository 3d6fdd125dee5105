"""Knowledge graph build, save/load, the capped index, live catalog updates and the join."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from streamrec.baseline import Recommendation
from streamrec.graph import (
    GraphIndex,
    apply_catalog_update,
    build_graph,
    load_graph,
    load_index,
    save_graph,
    summary,
)
from streamrec.join import GraphJoin, JoinSettings
from streamrec.state import SessionState

from .helpers import count_made_candidates

CATALOG = [
    {
        "item_id": "1",
        "title": "Toy Story",
        "attributes": {"genre": ["Animation", "Comedy"], "year": 1995},
        "entity_id": "m.toy",
    },
    {
        "item_id": "2",
        "title": "A Bug's Life",
        "attributes": {"genre": ["Animation"]},
        "entity_id": "m.bug",
    },
    {"item_id": "3", "title": "Heat", "attributes": {"genre": ["Action"]}, "entity_id": "m.heat"},
    {"item_id": "4", "title": "Ronin", "attributes": {"genre": ["Action"]}},
    {"item_id": "5", "title": "Cars", "attributes": {"genre": ["Animation"]}, "available": False},
]
CATALOG_IDS = [c["item_id"] for c in CATALOG]
TRIPLES = [
    {"head": "m.toy", "relation": "film.film.directed_by", "tail": "m.lasseter"},
    {"head": "m.lasseter", "relation": "film.director.film", "tail": "m.toy"},
    {"head": "m.bug", "relation": "film.film.directed_by", "tail": "m.lasseter"},
    {"head": "m.heat", "relation": "film.film.country", "tail": "m.usa"},
]
EVENTS = [
    ("u1", "3", "purchase", 1),
    ("u1", "4", "purchase", 2),
    ("u2", "3", "purchase", 1),
    ("u2", "4", "purchase", 2),
]


def view(item: str, etype: str = "rating", n: int = 0) -> list:
    return [item, etype, n, f"e{n}"]


@pytest.fixture
def index() -> GraphIndex:
    return GraphIndex.from_graph(build_graph(CATALOG, events=EVENTS, triples=TRIPLES), "g1")


def test_build_has_typed_nodes_and_edges(tmp_path: Path) -> None:
    g = build_graph(CATALOG, events=EVENTS, triples=TRIPLES)
    s = summary(g)
    assert s["nodes"] == {"item": 5, "attribute": 4, "entity": 5}
    assert s["edges"]["director"] == 2  # a triple and its inverse make one edge per film
    assert s["edges"]["co_bought"] == 2 and s["edges"]["genre"] == 6
    assert g.has_edge("item:1", "ent:m.lasseter") and g.has_edge("item:3", "item:4")
    save_graph(g, tmp_path, {"catalog": "x"})
    back, meta = load_graph(tmp_path)
    assert summary(back) == s and meta["summary"] == s
    (tmp_path / "graph.json").write_text("{}")
    with pytest.raises(ValueError, match="hash"):
        load_graph(tmp_path)


def test_index_is_capped_and_skips_uninformative_relations(index: GraphIndex) -> None:
    assert "ent:m.usa" not in index.item_links["3"]  # country says nothing
    assert index.item_links["1"]["ent:m.lasseter"] == "director"
    assert index.unavailable == {"5"}
    small = GraphIndex.from_graph(build_graph(CATALOG, triples=TRIPLES), degree_cap=1)
    assert all(len(v) <= 1 for v in small.item_links.values())


def test_join_filters_diversifies_and_explains(index: GraphIndex) -> None:
    join = GraphJoin(
        index,
        JoinSettings(top_k=3, max_per_value=1, short_history=0),
        known={"1", "2", "3", "4", "5"},
    )
    state = SessionState(entries=[view("1"), view("4", "purchase", 1)], n_events=2)
    cands = [Recommendation(i, 1.0, ["model"]) for i in ("5", "4", "2", "3")]
    out = join.join(state, cands)
    ids = [c["item_id"] for c in out]
    assert "5" not in ids and "4" not in ids  # unavailable, bought
    assert ids == ["2", "3"]
    assert out[0]["reasons"][0] == 'same director as "Toy Story", which you rated'
    assert out[1]["reasons"][0].startswith('often bought with "Ronin"')
    # The model's own "often together with" the same item is not repeated under it.
    said_twice = [Recommendation("3", 1.0, ['often together with "Ronin", which you bought'])]
    (only,) = join.join(state, said_twice)
    assert only["reasons"] == [out[1]["reasons"][0]]
    # diversity: Bug's Life and Cars share Animation; at most one per genre value
    join2 = GraphJoin(index, JoinSettings(top_k=2, max_per_value=1, short_history=0), known=set())
    many = [Recommendation(i, 1.0, ["m"]) for i in ("2", "1", "3")]
    assert [c["item_id"] for c in join2.join(SessionState(), many)] == ["2", "3"]


def test_join_reads_candidates_only_as_far_as_it_keeps(index: GraphIndex) -> None:
    """Rankers hand the join lazy candidates (making the unused ones was 20 % of a
    batch): it must stop reading once it has top_k, and answer as it does for a list."""
    join = GraphJoin(
        index, JoinSettings(top_k=2, max_per_value=1, short_history=0), known=set(CATALOG_IDS)
    )
    state = SessionState(entries=[view("1"), view("4", "purchase", 1)], n_events=2)
    order = ["5", "4", "2", "3", "1"] + [f"x{n}" for n in range(50)]
    read: list[str] = []

    def lazy():
        for item in order:
            read.append(item)
            yield Recommendation(item, 1.0, ["model"])

    out = join.join(state, lazy())
    assert [c["item_id"] for c in out] == ["2", "3"]
    assert read == ["5", "4", "2", "3"]  # the blocked two are skipped, nothing past "3"
    assert out == join.join(state, [Recommendation(i, 1.0, ["model"]) for i in order])

    # A short history the graph has nothing for (no graph loaded): the blend would keep
    # the model's order, so the candidates stay lazy there too, with the same answer.
    short = GraphJoin(GraphIndex(), JoinSettings(top_k=2), known=set(CATALOG_IDS))
    read.clear()
    out = short.join(state, lazy())
    assert [c["item_id"] for c in out] == ["5", "2"]  # nothing unavailable without a graph
    assert read == ["5", "4", "2"]
    # The same as blending the model's whole list with nothing, as the join did before.
    model = [Recommendation(i, 1.0, ["model"]) for i in order if i != "4"]
    recent = state.history()[-short.s.recent :]
    blended = short._diversify(short._blend(model, [], graph_leads=True), {"4"}, set())
    assert out == short._explain(blended, recent, short._recent_targets(recent))


def test_graph_candidates_are_made_only_as_far_as_the_join_reads(
    index: GraphIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short history's graph candidates (up to 5 x top_k) are blended as (item, score)
    pairs; only those the join reads become candidates, with the same answer."""
    state = SessionState(entries=[view("1"), view("3", n=1)], n_events=2)
    settings = JoinSettings(top_k=1, max_per_value=5)
    everything = GraphJoin(index, JoinSettings(top_k=5, max_per_value=5), known=set())
    proposed = everything.join(state, [])
    assert len(proposed) >= 2  # the graph proposes several
    made = count_made_candidates(monkeypatch, "streamrec.join")
    (only,) = GraphJoin(index, settings, known=set()).join(state, [])
    assert made == [only["item_id"]] == [proposed[0]["item_id"]]


def test_join_explains_with_the_graph_as_updated(index: GraphIndex) -> None:
    """The join keeps what it derives from the graph per generation: after a catalog
    update the same join must explain from the new links."""
    join = GraphJoin(index, JoinSettings(top_k=3, short_history=0), known={"1", "3"})
    state = SessionState(entries=[view("1")], n_events=1)
    (before,) = join.join(state, [Recommendation("3", 1.0, ["model"])])
    assert before["reasons"] == ["model"]  # Heat shares nothing with Toy Story
    apply_catalog_update(index, {"item_id": "3", "attributes": {"genre": ["Animation"]}})
    (after,) = join.join(state, [Recommendation("3", 1.0, ["model"])])
    assert after["reasons"][0].startswith('same genre (Animation) as "Toy Story"')


def test_strongest_path_wins_between_shared_links_and_co_links() -> None:
    """A co-link to a recent item against a shared director with another: recency and
    relation decide, whichever way round (the join skips the shared links only when
    none of them can win)."""
    co_bought = [("u3", "2", "purchase", 1), ("u3", "3", "purchase", 2)]
    idx = GraphIndex.from_graph(build_graph(CATALOG, events=co_bought, triples=TRIPLES))
    join = GraphJoin(idx, JoinSettings(top_k=1, short_history=0), known={"1", "2", "3", "4"})

    def reason(*history: str) -> str:
        state = SessionState(entries=[view(h, n=n) for n, h in enumerate(history)])
        (out,) = join.join(state, [Recommendation("2", 1.0, ["model"])])
        return out["reasons"][0]

    # Co-bought with Heat, just rated (1.5), beats the director shared with Toy Story.
    assert reason("1", "3").startswith('often bought with "Heat"')
    # Heat two events back (0.9² x 1.5) loses to the director shared with the latest.
    assert reason("3", "4", "1").startswith('same director as "Toy Story"')


def test_explain_cache_is_bounded_and_changes_no_answer(
    index: GraphIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = SessionState(entries=[view("1"), view("3", n=1)], n_events=2)
    cands = [Recommendation(i, 1.0, ["model"]) for i in ("2", "4", "5", "1", "3")]
    settings = JoinSettings(top_k=5, max_per_value=5, short_history=0)
    unbounded = GraphJoin(index, settings, known=set(CATALOG_IDS)).join(state, cands)
    monkeypatch.setattr("streamrec.join._EXPLAIN_CACHE", 2)
    join = GraphJoin(index, settings, known=set(CATALOG_IDS))
    assert join.join(state, cands) == unbounded
    assert 1 <= len(join._explain_cache) <= 2


def test_latest_items_expansion_is_cached_per_graph_generation(
    index: GraphIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    join = GraphJoin(index, JoinSettings(top_k=3))
    walked: list[str] = []
    walk = join._add_expansion

    def counted(scores: defaultdict[str, float], item: str, decay: float):
        walked.append(item)
        return walk(scores, item, decay)

    monkeypatch.setattr(join, "_add_expansion", counted)
    first = join._expand([("3", "view")], [], set())
    assert join._expand([("3", "view")], [], set()) == first
    older_too = join._expand([("1", "view"), ("3", "view")], [], set())
    assert walked == ["3", "1"]  # "3", the latest item each time, was walked once
    # The cached scores are the ones an uncached walk adds, in the same order.
    uncached: defaultdict[str, float] = defaultdict(float)
    walk(uncached, "3", 1.0)
    walk(uncached, "1", 0.7)
    assert older_too == sorted(uncached.items(), key=lambda kv: kv[1], reverse=True)[:15]
    # A catalog update starts a new generation: the next expansion sees the new item.
    apply_catalog_update(
        index, {"item_id": "9", "title": "Brand New", "attributes": {"genre": ["Action"]}}
    )
    out = join.join(SessionState(entries=[view("3", "view")], n_events=1), [])
    assert "9" in [c["item_id"] for c in out] and "9" not in dict(first)
    updated = join._expand([("3", "view")], [], set())
    assert updated == GraphJoin(index, JoinSettings(top_k=3))._expand([("3", "view")], [], set())


def test_expansion_cache_is_bounded_and_changes_no_answer(
    index: GraphIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbounded = GraphJoin(index, JoinSettings(top_k=3))
    monkeypatch.setattr("streamrec.join._EXPAND_CACHE_SCORES", 3)  # items add 2-3 each
    join = GraphJoin(index, JoinSettings(top_k=3))
    for _ in range(2):
        for item in CATALOG_IDS:
            recent = [("1", "view"), (item, "view")]
            assert join._expand(recent, [], set()) == unbounded._expand(recent, [], set())
            assert join._expand_cached == sum(map(len, join._expand_cache.values())) <= 3
    assert len(join._expand_cache) == 1  # cleared whenever the next item would not fit


def test_new_item_gets_candidates_from_the_graph(index: GraphIndex) -> None:
    apply_catalog_update(
        index, {"item_id": "9", "title": "Brand New", "attributes": {"genre": ["Action"]}}
    )
    join = GraphJoin(index, JoinSettings(top_k=3), known={"1", "2", "3", "4"})
    state = SessionState(entries=[view("9", "view")], n_events=1)  # no model knows item 9
    out = join.join(state, [])
    assert {c["item_id"] for c in out} == {"3", "4"}
    assert all("Brand New" in c["reasons"][0] for c in out)
    # ...and a user who likes Heat now sees the new item through its genre.
    out = join.join(SessionState(entries=[view("3")], n_events=1), [])
    assert "9" in [c["item_id"] for c in out]


def test_catalog_updates_replayed_rebuild_the_same_index() -> None:
    live = GraphIndex()
    for row in CATALOG:
        apply_catalog_update(live, row)
    apply_catalog_update(live, {"item_id": "5", "available": True})
    apply_catalog_update(live, {"item_id": "2", "attributes": {"genre": ["Comedy"]}})
    apply_catalog_update(live, {"item_id": "4", "op": "delete"})
    final = [dict(r) for r in CATALOG if r["item_id"] != "4"]
    final[3]["available"] = True  # item 5
    final[1]["attributes"] = {"genre": ["Comedy"]}
    rebuilt = GraphIndex.from_graph(build_graph(final))
    assert live.item_links == rebuilt.item_links
    assert {i for i in live.unavailable if i != "4"} == rebuilt.unavailable
    assert "4" in live.unavailable  # deleted: never recommended again
    assert {k: sorted(v) for k, v in live.value_items.items() if v} == {
        k: sorted(v) for k, v in rebuilt.value_items.items() if v
    }


def test_load_index_from_saved_graph(tmp_path: Path) -> None:
    save_graph(build_graph(CATALOG, triples=TRIPLES), tmp_path, {})
    idx = load_index(tmp_path)
    assert idx.version.startswith("graph-") and idx.title("1") == "Toy Story"


@pytest.mark.broker
def test_catalog_updates_change_the_next_recommendations(
    broker: str, small_model: Path, topology, tmp_path: Path
) -> None:
    """Through a real broker and worker: an item made unavailable disappears, and a
    brand-new item no model knows gets graph candidates for the user who views it."""
    import time

    import orjson
    from confluent_kafka import Producer

    from streamrec.config import producer_config
    from streamrec.datasets import generate_log
    from streamrec.procs import stop_process

    from .helpers import Collector, start_test_worker

    topo, topo_file = topology
    _, catalog = generate_log(users=150, items=200, events_per_user=20, seed=3)
    save_graph(build_graph(catalog), tmp_path / "graph", {})
    producer = Producer(producer_config(broker))
    recs = Collector(topo.recommendations.name, broker)
    recs.start()
    worker, log = start_test_worker(
        broker, small_model, topo_file, tmp_path, graph=tmp_path / "graph"
    )
    sent = 0

    def ask(user: str, item: str) -> dict:
        nonlocal sent
        sent += 1
        event = {
            "event_id": f"c{sent}",
            "user_id": user,
            "item_id": item,
            "event_type": "view",
            "timestamp": 1_700_000_000_000 + sent,
        }
        producer.produce(topo.events.name, orjson.dumps(event), user.encode())
        producer.flush(10)
        assert recs.wait_count(sent, 60), f"no answer to c{sent}; see {log}"
        return next(d for d in recs.docs if d["event_id"] == f"c{sent}")

    def publish(update: dict) -> None:
        producer.produce(topo.catalog.name, orjson.dumps(update), update["item_id"].encode())
        producer.flush(10)

    try:
        first = ask("ua", "i5")
        top = first["items"][0]["item_id"]
        publish({"item_id": top, "available": False})
        deadline = time.monotonic() + 20
        while top in [i["item_id"] for i in ask("ua", "i5")["items"]]:
            assert time.monotonic() < deadline, "unavailable item still recommended"
        for _ in range(3):  # and it stays out
            assert top not in [i["item_id"] for i in ask("ua", "i5")["items"]]

        publish(
            {
                "item_id": "fresh-1",
                "title": "Fresh Arrival",
                "attributes": {"category": "c7", "brand": "b3"},
            }
        )
        deadline = time.monotonic() + 20
        while True:
            doc = ask(f"new-user-{sent}", "fresh-1")
            if any("Fresh Arrival" in r for i in doc["items"] for r in i["reasons"]):
                break
            assert time.monotonic() < deadline, "new item never got graph candidates"
        cats = {f"i{n}" for n in range(70, 80)}  # category c7 in the generated catalog
        assert len(cats & {i["item_id"] for i in doc["items"]}) >= 5

        # A bad catalog message is dead-lettered, and the worker goes on answering.
        dead = Collector(topo.dead_letter.name, broker)
        dead.start()
        producer.produce(topo.catalog.name, b'{"item_id": 7}', b"bad")
        producer.flush(10)
        assert dead.wait_count(1, 20), "bad catalog update not dead-lettered"
        (letter,) = dead.close()
        assert letter["topic"] == topo.catalog.name and letter["error_code"] == "schema"
        assert ask("ua", "i6")["items"]
    finally:
        assert stop_process(worker) == 0
        recs.close()


def test_expansion_leaves_out_the_users_items_and_unavailable_ones() -> None:
    """Unavailable items are skipped after the sort, not removed one by one per event (a
    shop may have thousands): the same list as removing them, cut at 5 x top_k."""
    catalog = [
        {"item_id": f"m{n}", "title": f"M{n}", "attributes": {"genre": [f"g{n % 3}", "all"]}}
        for n in range(40)
    ]
    index = GraphIndex.from_graph(build_graph(catalog), "many")
    recent = [("m1", "view"), ("m4", "purchase")]
    everything = GraphJoin(index, JoinSettings(top_k=100))._expand(recent, [], set())
    assert len(everything) > 20
    unavailable = {everything[0][0], everything[3][0], everything[7][0]}
    history = [("m9", "view"), *recent]
    got = GraphJoin(index, JoinSettings(top_k=2))._expand(recent, history, unavailable)
    seen = {"m9", "m1", "m4"}
    assert got == [p for p in everything if p[0] not in unavailable | seen][:10]
