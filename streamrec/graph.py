"""The item knowledge graph: build it (NetworkX), save it safely, serve it cheaply.

Nodes: ``item:<id>`` (title, availability), ``attr:<name>:<value>`` (genre, year,
category, brand, tags: whatever the catalog has) and ``ent:<id>`` (knowledge-graph
entities, e.g. Freebase directors and actors). Edges carry a ``relation``: item ->
attribute (the attribute name), item -> entity (e.g. ``director``), entity -> entity
(the raw KG relation), item -> item (``co_consumed`` / ``co_bought`` mined from events,
with weights). Saved as node-link JSON with a versioned header (no pickle).

:class:`GraphIndex` is what the worker holds: per-item neighbour sets and per-value
item lists, capped, so one event's join costs at most K x degree-cap set operations
whatever the size of the graph; :func:`apply_catalog_update` changes it live.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

FORMAT = "streamrec.graph/1"
# Knowledge-graph relations (either direction) -> what a reason calls them.
KG_RELATIONS = {
    "film.film.directed_by": "director",
    "film.director.film": "director",
    "film.film.actor": "actor",
    "film.actor.film": "actor",
    "film.film.written_by": "writer",
    "film.writer.film": "writer",
    "film.film.produced_by": "producer",
    "film.producer.film": "producer",
    "film.film.cinematography": "cinematographer",
    "film.cinematographer.film": "cinematographer",
    "film.film.production_companies": "studio",
    "film.production_company.films": "studio",
    "film.film.sequel": "series",
    "film.film.prequel": "series",
    "film.film.subjects": "subject",
    "film.film_subject.films": "subject",
    "film.film.genre": "kg-genre",
    "film.film_genre.films_in_this_genre": "kg-genre",
    "film.film.award_won": "award",
    "film.film.award_nomination": "award",
    "film.film.language": "language",
    "film.film.country": "country",
    "film.film.rating": "rating",
    "film.content_rating.film": "rating",
}
# How telling a shared neighbour is, for candidate expansion and reasons (0: never).
RELATION_WEIGHT = {
    "series": 3.0,
    "director": 2.5,
    "writer": 2.0,
    "actor": 1.5,
    "producer": 1.2,
    "brand": 1.5,
    "category": 1.2,
    "genre": 1.0,
    "tags": 1.0,
    "subject": 1.0,
    "cinematographer": 1.0,
    "studio": 0.8,
    "kg-genre": 0.5,
    "award": 0.3,
    "year": 0.3,
    "language": 0.0,
    "country": 0.0,
    "rating": 0.0,
}
REASON_TEXT = {
    "series": 'from the same series as "{t}"',
    "director": 'same director as "{t}"',
    "writer": 'same writer as "{t}"',
    "actor": 'shares an actor with "{t}"',
    "producer": 'same producer as "{t}"',
    "brand": 'same brand ({v}) as "{t}"',
    "category": 'same category ({v}) as "{t}"',
    "genre": 'same genre ({v}) as "{t}"',
    "tags": 'also tagged {v}, like "{t}"',
    "subject": 'same subject as "{t}"',
    "cinematographer": 'same cinematographer as "{t}"',
    "studio": 'same studio as "{t}"',
}


def item_node(item_id: str) -> str:
    return f"item:{item_id}"


def attr_node(name: str, value: Any) -> str:
    return f"attr:{name}:{value}"


def _attribute_values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def build_graph(
    catalog: Iterable[dict[str, Any]],
    *,
    events: Iterable[tuple[str, str, str, int]] = (),
    triples: Iterable[dict[str, str]] = (),
    co_window: int = 5,
    co_top: int = 20,
) -> nx.MultiDiGraph:
    """Items + attributes + knowledge-graph entities + item-item edges from events."""
    g = nx.MultiDiGraph()
    entity_items: dict[str, list[str]] = defaultdict(list)
    for row in catalog:
        apply_to_graph(g, row)
        if row.get("entity_id"):
            entity_items[row["entity_id"]].append(row["item_id"])
    for t in triples:
        head, rel, tail = t["head"], t["relation"], t["tail"]
        g.add_edge(f"ent:{head}", f"ent:{tail}", key=rel, relation=rel)
        label = KG_RELATIONS.get(rel)
        if label is None:
            continue
        for film, other in ((head, tail), (tail, head)):
            for item in entity_items.get(film, ()):
                # keyed by relation: a triple and its inverse make one edge
                g.add_edge(item_node(item), f"ent:{other}", key=label, relation=label)
                if label == "series":  # both films of a series then share both nodes
                    g.add_edge(item_node(item), f"ent:{film}", key=label, relation=label)
    for (a, b, rel), w in _co_edges(events, co_window, co_top).items():
        for x, y in ((a, b), (b, a)):
            if g.has_node(item_node(x)) and g.has_node(item_node(y)):
                g.add_edge(item_node(x), item_node(y), key=rel, relation=rel, weight=w)
    return g


def apply_to_graph(g: nx.MultiDiGraph, row: dict[str, Any]) -> None:
    """Create/update one catalog item: title, availability, attribute edges."""
    node = item_node(row["item_id"])
    if row.get("op") == "delete":
        if g.has_node(node):
            g.remove_node(node)
        return
    g.add_node(
        node,
        kind="item",
        title=row.get("title", row["item_id"]),
        available=row.get("available", True),
    )
    if row.get("entity_id"):
        g.nodes[node]["entity"] = row["entity_id"]
    for _, target, key in list(g.out_edges(node, keys=True)):
        if target.startswith("attr:"):
            g.remove_edge(node, target, key)
    for name, value in (row.get("attributes") or {}).items():
        for v in _attribute_values(value):
            target = attr_node(name, v)
            g.add_node(target, kind="attribute", name=name, value=v)
            g.add_edge(node, target, key=name, relation=name)


def _co_edges(
    events: Iterable[tuple[str, str, str, int]], window: int, top: int
) -> dict[tuple[str, str, str], float]:
    """Pairs a user touched within ``window`` steps: co_bought for purchases/carts."""
    per_user: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for user, item, etype, ts in events:
        per_user[user].append((ts, item, etype))
    counts: Counter = Counter()
    for seq in per_user.values():
        seq.sort()
        for i, (_, a, ta) in enumerate(seq):
            for _, b, tb in seq[i + 1 : i + 1 + window]:
                if a == b:
                    continue
                bought = ta in ("purchase", "add_to_cart") and tb in ("purchase", "add_to_cart")
                counts[(min(a, b), max(a, b), "co_bought" if bought else "co_consumed")] += 1
    best: dict[str, list[tuple[int, tuple[str, str, str]]]] = defaultdict(list)
    for key, c in counts.items():
        best[key[0]].append((c, key))
        best[key[1]].append((c, key))
    keep: dict[tuple[str, str, str], float] = {}
    for pairs in best.values():
        for c, key in sorted(pairs, reverse=True)[:top]:
            keep[key] = float(c)
    return keep


def summary(g: nx.MultiDiGraph) -> dict[str, Any]:
    kinds = Counter(d.get("kind", "entity") for _, d in g.nodes(data=True))
    relations = Counter(d.get("relation") for _, _, d in g.edges(data=True))
    return {
        "nodes": dict(kinds),
        "edges": dict(relations.most_common()),
        "n_nodes": g.number_of_nodes(),
        "n_edges": g.number_of_edges(),
    }


def save_graph(g: nx.MultiDiGraph, out: str | Path, sources: dict[str, str]) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(nx.node_link_data(g, edges="edges"), ensure_ascii=False).encode()
    (out / "graph.json").write_bytes(data)
    meta = {
        "format": FORMAT,
        "version": time.strftime("graph-%Y%m%d-%H%M%S"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sources": sources,
        "summary": summary(g),
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    return out


def load_graph(path: str | Path) -> tuple[nx.MultiDiGraph, dict[str, Any]]:
    path = Path(path)
    meta = json.loads((path / "metadata.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    data = (path / "graph.json").read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError(f"{path}/graph.json does not match the hash in metadata.json")
    g = nx.node_link_graph(json.loads(data), directed=True, multigraph=True, edges="edges")
    return g, meta


@dataclass
class GraphIndex:
    """Precomputed, capped neighbourhoods for the per-event join."""

    degree_cap: int = 64
    per_value_cap: int = 50
    titles: dict[str, str] = field(default_factory=dict)
    unavailable: set[str] = field(default_factory=set)
    # item -> {neighbour node: relation}, only relations with weight > 0, capped
    item_links: dict[str, dict[str, str]] = field(default_factory=dict)
    # neighbour node -> items, most popular first, capped (for expansion)
    value_items: dict[str, list[str]] = field(default_factory=dict)
    value_degree: Counter = field(default_factory=Counter)
    co_items: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    co_relation: dict[str, dict[str, str]] = field(default_factory=dict)  # item -> {other: rel}
    popularity: Counter = field(default_factory=Counter)
    version: str = "none"
    generation: int = 0  # bumped by every catalog update (lets readers cache safely)

    @classmethod
    def from_graph(cls, g: nx.MultiDiGraph, version: str = "none", **caps: int) -> GraphIndex:
        idx = cls(version=version, **caps)
        links: dict[str, dict[str, str]] = defaultdict(dict)
        for node, data in g.nodes(data=True):
            if data.get("kind") != "item":
                continue
            item = node[5:]
            idx.titles[item] = data.get("title", item)
            if not data.get("available", True):
                idx.unavailable.add(item)
            co = []
            for _, target, edge in g.out_edges(node, data=True):
                rel = edge.get("relation")
                if target.startswith("item:"):
                    co.append((target[5:], rel, float(edge.get("weight", 1.0))))
                    idx.popularity[item] += edge.get("weight", 1.0)
                elif RELATION_WEIGHT.get(rel, 0.0) > 0:
                    links[item][target] = rel
            idx.co_items[item] = sorted(co, key=lambda x: -x[2])[: idx.degree_cap]
            idx.co_relation[item] = {other: rel for other, rel, _ in idx.co_items[item]}
        for item, targets in links.items():
            idx._set_links(item, targets)
        idx._rebuild_values()
        return idx

    def _set_links(self, item: str, targets: dict[str, str]) -> None:
        ranked = sorted(targets.items(), key=lambda kv: -RELATION_WEIGHT.get(kv[1], 0.0))
        self.item_links[item] = dict(ranked[: self.degree_cap])

    def _rebuild_values(self) -> None:
        members: dict[str, list[str]] = defaultdict(list)
        for item, targets in self.item_links.items():
            for target in targets:
                members[target].append(item)
        self.value_degree = Counter({v: len(items) for v, items in members.items()})
        self.value_items = {
            v: sorted(items, key=lambda i: -self.popularity[i])[: self.per_value_cap]
            for v, items in members.items()
        }

    def specificity(self, value: str) -> float:
        """Shared rare neighbours say more than shared common ones."""
        return 1.0 / math.log2(2 + self.value_degree[value])

    def title(self, item: str) -> str:
        return self.titles.get(item, item)


def load_index(path: str | Path, **caps: int) -> GraphIndex:
    g, meta = load_graph(path)
    return GraphIndex.from_graph(g, version=meta["version"], **caps)


def apply_catalog_update(index: GraphIndex, row: dict[str, Any]) -> None:
    """A catalog message (schemas/catalog.schema.json) applied to the live index."""
    item = row["item_id"]
    index.generation += 1
    if row.get("op") == "delete":
        index.unavailable.add(item)
        for target in index.item_links.pop(item, {}):
            if item in index.value_items.get(target, []):
                index.value_items[target].remove(item)
                index.value_degree[target] -= 1
        return
    if "title" in row:
        index.titles[item] = row["title"]
    if row.get("available", True):
        index.unavailable.discard(item)
    else:
        index.unavailable.add(item)
    if "attributes" in row:
        old = index.item_links.get(item, {})
        kept = {t: r for t, r in old.items() if not t.startswith("attr:")}
        for name, value in (row["attributes"] or {}).items():
            if RELATION_WEIGHT.get(name, 1.0) > 0:
                for v in _attribute_values(value):
                    kept[attr_node(name, v)] = name
        for target in set(old) - set(kept):
            if item in index.value_items.get(target, []):
                index.value_items[target].remove(item)
            index.value_degree[target] -= 1
        index._set_links(item, kept)
        for target in set(index.item_links[item]) - set(old):
            index.value_degree[target] += 1
            members = index.value_items.setdefault(target, [])
            if item not in members:
                # A new item goes first: nobody has seen it, so only the graph can show it.
                members.insert(0, item)
                del members[index.per_value_cap :]
