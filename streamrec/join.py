"""The knowledge-graph join: model candidates -> filtered, expanded, diversified, explained.

Per event, in this order:

1. filter: items the user bought and items marked unavailable;
2. expand: a user with a short history, or whose latest item no model knows (a new
   item), gets candidates from graph neighbourhoods of recent items (shared director,
   brand, genre, ..., co-bought), blended with the model's;
3. diversify: at most ``max_per_value`` items sharing a value of ``attribute``;
4. explain: a reason from a graph path to something the user did
   ("same director as <title>", "often bought with <title>", "popular in <genre>").

Cost is bounded by the candidate count x the index's degree cap: nothing here walks
the graph beyond one precomputed hop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter

from .baseline import PAST_TENSE, Recommendation
from .graph import REASON_TEXT, RELATION_WEIGHT, GraphIndex
from .state import SessionState

# Items whose explainable links are kept: ~5 KB each on ML-100K (28 links), so at most
# ~100 MB however large the catalog; the join explains mostly the popular ones.
_EXPLAIN_CACHE = 20_000
# Scores kept of the items' expansions (what each adds to a short history's graph
# candidates), ~52 bytes each: at most ~50 MB. ML-100K with its Freebase graph needs
# 450,000 for all 1,682 items (23 MB, 267 per item), the bench's generated catalog
# 289,000 for 3,706 (14 MB).
_EXPAND_CACHE_SCORES = 1_000_000
_UNKNOWN = object()  # not in the primary-value cache yet (None is a cached answer)


# What explaining an item reads, in one record: one lookup per candidate instead of four,
# each of which mostly waited for memory (HISTORY.md, session 17). Its explainable links,
# {target: (relation weight, specificity, reason text, value name)}; the largest weight
# one of them can have; its co-bought/co-consumed items, {item: relation}; its title.
Explainable = tuple[dict[str, tuple[float, float, str, str]], float, dict[str, str], str | None]


@dataclass(frozen=True)
class JoinSettings:
    top_k: int = 10
    short_history: int = 2  # this many known items or fewer: expand from the graph
    attribute: str = "genre"  # diversity attribute
    max_per_value: int = 4
    recent: int = 5
    graph_weight: float = 0.3


class GraphJoin:
    def __init__(
        self,
        index: GraphIndex,
        settings: JoinSettings | None = None,
        known: set[str] | frozenset[str] = frozenset(),
        titles: dict[str, str] | None = None,
    ) -> None:
        self.index = index
        self.s = settings or JoinSettings()
        self.known = known  # items the model can score
        self.model_titles = titles or {}  # titles the model knows, for items the graph lacks
        self._primary_cache: dict[str, str | None] = {}
        # item -> what explaining it reads (see _explainable); per generation, at
        # most _EXPLAIN_CACHE items.
        self._explain_cache: dict[str, Explainable] = {}
        # item -> the scores it adds to an expansion as the latest item (age 0)
        self._expand_cache: dict[str, dict[str, float]] = {}
        self._expand_cached = 0  # scores in _expand_cache
        self._cache_generation = index.generation

    def join(
        self,
        state: SessionState,
        candidates: Iterable[Recommendation],
        explain: Callable[[SessionState, list[Recommendation]], None] | None = None,
    ) -> list[dict]:
        """The final top-k, as message dicts, from the model's candidates (best first;
        read only as far as needed); ``explain`` (the ranker's) gives the chosen model
        candidates their reasons."""
        idx, s = self.index, self.s
        self._check_generation()  # once per event: the caches below are per generation
        history = state.history()
        recent = history[-s.recent :]
        bought = {i for i, t in history if t == "purchase"}
        # Not merged into one set per event: a shop's unavailable items can be thousands
        # (10 % of 20,000 cost 57 µs a warm event, 300 a cold one; join_cost.py).
        unavailable = idx.unavailable
        cold_item = bool(recent) and recent[-1][0] not in self.known
        known_items = 0  # counted only as far as the test below needs
        for i, _ in history:
            if i in self.known:
                known_items += 1
                if known_items > s.short_history:
                    break
        if known_items <= s.short_history or cold_item:
            # Nothing the model knows (or the latest item is new to it): the model's list
            # is popularity, and the graph leads. Otherwise the model leads.
            graph = self._expand(recent, history, unavailable)
            # With nothing from the graph the blend would keep the model's order: skip
            # it, and the model's candidates stay lazy (making all of them for a third
            # of the events, to blend them with nothing, was ~1/4 of the join without a
            # graph; line_profiler).
            if graph:
                graph_leads = known_items == 0 or cold_item
                model = [
                    c
                    for c in candidates
                    if c.item_id not in bought and c.item_id not in unavailable
                ]
                candidates = self._blend(model, graph, graph_leads)
        chosen = self._diversify(candidates, bought, unavailable)
        if explain is not None:
            explain(state, chosen)
        return self._explain(chosen, recent, self._recent_targets(recent))

    def _recent_targets(self, recent: list[tuple[str, str]]) -> dict[str, tuple[int, str]]:
        """Graph nodes the recent items link to -> (age, item) of the most recent one.
        Built once per event, so explaining a candidate is one pass over its own links
        (intersecting link sets per candidate and recent item was 16 % of the batch)."""
        out: dict[str, tuple[int, str]] = {}
        links = self.index.item_links
        # Oldest first, so a more recent item's entry replaces an older one's; each
        # item's links in one C-level update (a Python setdefault per link was 13 %).
        for age in range(len(recent) - 1, -1, -1):
            h = recent[-1 - age][0]
            out.update(dict.fromkeys(links.get(h, ()), (age, h)))
        return out

    def _expand(
        self, recent: list[tuple[str, str]], history: list[tuple[str, str]], unavailable: set[str]
    ) -> list[tuple[str, float]]:
        """Graph candidates for a short or cold history, best first, as (item, score):
        the items sharing values with, or co-chosen with, the recent items, weighted by
        relation and recency; none the user has had or that is unavailable."""
        if not recent:
            return []
        # The latest item's scores (age 0) are the same for every event: copied in C
        # from a cache, the same floats in the same order as adding them here (timeit,
        # one latest item: 0.30x on the generated graph, 0.20x on ML-100K's; `update()`
        # into an empty dict made the later additions slower than no cache).
        item = recent[-1][0]
        latest = self._expand_cache.get(item)
        if latest is None:
            latest = self._add_expansion(defaultdict(float), item, 1.0)
            if self._expand_cached + len(latest) > _EXPAND_CACHE_SCORES:
                self._expand_cache.clear()  # a huge catalog: bounded
                self._expand_cached = 0
            self._expand_cache[item] = latest
            self._expand_cached += len(latest)
        scores = latest.copy()
        for age in range(1, len(recent)):
            self._add_expansion(scores, recent[-1 - age][0], 0.7**age)
        for item, _ in history:
            scores.pop(item, None)
        # The same as heapq.nlargest (ties in insertion order), but for the ~100-1,000
        # scores of an expansion one C-level sort is faster than its heap (timeit: 0.7x).
        ranked = sorted(scores.items(), key=itemgetter(1), reverse=True)
        wanted = 5 * self.s.top_k
        if not unavailable:
            return ranked[:wanted]
        # Skipped after the (stable) sort: the same list as removing them first, without
        # a pass over every unavailable item per event.
        out: list[tuple[str, float]] = []
        for pair in ranked:
            if pair[0] not in unavailable:
                out.append(pair)
                if len(out) == wanted:
                    break
        return out

    def _add_expansion(
        self, scores: defaultdict[str, float], item: str, decay: float
    ) -> defaultdict[str, float]:
        """Add what ``item`` proposes, weighted by ``decay``, to ``scores``: up to (links
        x per_value_cap) others sharing a value, and its co-bought/co-consumed items."""
        idx = self.index
        # A defaultdict's missing keys are filled in C (a Counter calls Python for each).
        for target, rel in idx.item_links.get(item, {}).items():
            w = decay * RELATION_WEIGHT.get(rel, 0.0) * idx.specificity(target)
            for other in idx.value_items.get(target, ()):
                scores[other] += w
        for other, _, weight in idx.co_items.get(item, ()):
            scores[other] += decay * 2.0 * weight / (1.0 + weight)
        return scores

    def _blend(
        self, model: list[Recommendation], graph: list[tuple[str, float]], graph_leads: bool
    ) -> Iterator[Recommendation]:
        """Rank-based blend (scores of different models are not comparable). The side
        that does not lead counts ``graph_weight`` (measured on ML-100K: a model that
        knows a user's items ranks better even for 2-event users; the graph adds reach).
        An item both propose keeps the graph's score and reasons. Graph candidates are
        made as the join reads them (making all 50 was ~40 % of the expansion)."""
        w = self.s.graph_weight
        graph_w, model_w = (1.0, w) if graph_leads else (w, 1.0)
        # item -> points, the graph's first; the model's own candidates kept by item. Flat
        # dicts and a sort keyed by a dict's lookup, not a [points, candidate, score] list
        # per item and a lambda (timeit, the 12 first of 50 graph and 30 model items: 0.8x).
        points = {item: graph_w / rank for rank, (item, _) in enumerate(graph, 1)}
        model_only: dict[str, Recommendation] = {}
        for rank, c in enumerate(model, 1):
            item = c.item_id
            p = points.get(item)
            if p is None:
                points[item] = model_w / rank
                model_only[item] = c
            else:
                points[item] = p + model_w / rank
        graph_score = dict(graph)
        # Descending and stable (ties in first-seen order), as sorting by -points is.
        for item in sorted(points, key=points.__getitem__, reverse=True):
            c = model_only.get(item)
            yield c if c is not None else Recommendation(item, round(graph_score[item], 4), [])

    def _check_generation(self) -> None:
        """Catalog updates change links and value degrees: drop what was derived."""
        if self._cache_generation != self.index.generation:
            self._primary_cache.clear()
            self._explain_cache.clear()
            self._expand_cache.clear()
            self._expand_cached = 0
            self._cache_generation = self.index.generation

    def _explainable(self, item: str) -> Explainable:
        """The item's links that can give a reason, with what weighing them needs; the
        largest weight any of them can reach (relation weight x specificity); its co-links
        and its title. Made and cached on a miss (``_explain`` looks in the cache first)."""
        idx = self.index
        links = {
            target: (RELATION_WEIGHT[rel], idx.specificity(target), text, target.split(":", 2)[-1])
            for target, rel in idx.item_links.get(item, {}).items()
            if (text := REASON_TEXT.get(rel)) is not None
        }
        found = (
            links,
            max((w * spec for w, spec, _, _ in links.values()), default=0.0),
            idx.co_relation.get(item) or {},
            idx.titles.get(item) or self.model_titles.get(item),
        )
        if len(self._explain_cache) >= _EXPLAIN_CACHE:
            self._explain_cache.clear()  # a huge catalog: bounded, not all of it
        self._explain_cache[item] = found
        return found

    def _primary(self, item: str) -> str | None:
        """The item's first value of the diversity attribute (cached per generation)."""
        try:
            return self._primary_cache[item]
        except KeyError:
            pass
        prefix = f"attr:{self.s.attribute}:"
        found = next((t for t in self.index.item_links.get(item, {}) if t.startswith(prefix)), None)
        self._primary_cache[item] = found
        return found

    def _diversify(
        self, ranked: Iterable[Recommendation], bought: set[str], unavailable: set[str]
    ) -> list[Recommendation]:
        """The first ``top_k`` neither bought nor unavailable, at most ``max_per_value``
        per primary value; reads ``ranked`` only as far as it must."""
        top_k, cap = self.s.top_k, self.s.max_per_value
        primary = self._primary_cache
        out: list[Recommendation] = []
        spill: list[Recommendation] = []
        per_value: dict[str | None, int] = {}
        for c in ranked:
            item = c.item_id
            if item in bought or item in unavailable:
                continue
            value = primary.get(item, _UNKNOWN)
            if value is _UNKNOWN:
                value = self._primary(item)
            n = per_value.get(value, 0)
            if value is not None and n >= cap:
                spill.append(c)
                continue
            per_value[value] = n + 1
            out.append(c)
            if len(out) == top_k:
                return out
        return out + spill[: top_k - len(out)]  # too few distinct: fill, in order

    def _explain(
        self,
        chosen: list[Recommendation],
        recent: list[tuple[str, str]],
        shared: dict[str, tuple[int, str]],
    ) -> list[dict]:
        """Each chosen item as a message dict, with the strongest graph path from it to
        something the user did: a shared attribute/entity (weighted by relation,
        specificity and recency) or a co-bought/co-consumed edge; the more recent of
        equals wins. One loop per event, not a call per item (the calls and lookups
        repeated per item were ~1/4 of the join, line_profiler); reasons are formatted
        once per event and winning path."""
        idx = self.index
        explain_cache = self._explain_cache
        recent_type = dict(recent)  # item -> its most recent event type
        newest_first = [h for h, _ in reversed(recent)]
        texts: dict[tuple[str, str, str], tuple[str, str | None]] = {}
        out: list[dict] = []
        for cand in chosen:
            item = cand.item_id
            best: tuple[float, int, str, str, str] | None = None  # weight, age, text, value, item
            # The most recent co-bought/co-consumed link is the strongest one.
            co_link: tuple[float, int, str, str] | None = None  # weight, age, relation, item
            found = explain_cache.get(item)
            if found is None:
                found = self._explainable(item)
            links, reach, co, title = found
            if co:
                for age, h in enumerate(newest_first):
                    if h in co:
                        co_link = (0.9**age * 1.5, age, co[h], h)
                        break
            # A shared link can beat the co-link only if its best possible weight does. On
            # ML-100K co-links explain ~97 % of the candidates, and 59 % of the items could
            # not beat a co-link with the latest item: they skip the loop.
            if links and shared and (co_link is None or reach >= co_link[0]):
                # One C-level intersection, not a Python loop over every link (profiled);
                # of equal weights the smallest target wins, so every process answers alike.
                best_target = ""
                for target in links.keys() & shared.keys():
                    rel_weight, specificity, text, value = links[target]
                    age, h = shared[target]
                    weight = 0.9**age * rel_weight * specificity
                    if (
                        best is None
                        or weight > best[0]
                        or (weight == best[0] and target < best_target)
                    ):
                        best, best_target = (weight, age, text, value, h), target
            if co_link is not None:
                weight, age, rel, h = co_link
                if best is None or weight > best[0] or (weight == best[0] and age < best[1]):
                    phrase = "often bought with" if rel == "co_bought" else "often chosen with"
                    best = (weight, age, phrase + ' "{t}"', "", h)
            # The ranker's reasons may be shared between candidates: read, never changed.
            reasons = cand.reasons
            if best is not None:  # format only the winner
                key = (best[2], best[3], best[4])
                made = texts.get(key)
                if made is None:
                    h = best[4]
                    verb = PAST_TENSE.get(recent_type[h], "interacted with")
                    linked = idx.title(h)
                    # A co-link: the model's "often together with" it says the same.
                    same = f'often together with "{linked}"' if best[3] == "" else None
                    text = best[2].format(t=linked, v=best[3]) + f", which you {verb}"
                    made = texts[key] = (text, same)
                text, same = made
                if not reasons:
                    reasons = [text]
                elif same is not None:
                    reasons = [text, *[r for r in reasons if not r.startswith(same)]]
                else:
                    reasons = [text, *reasons]
            elif not reasons or reasons[0].startswith("one of the most popular"):
                value = self._primary(item)
                if value is not None:
                    reasons = [f"popular in {value.split(':', 2)[-1]}"]
                elif not reasons:
                    reasons = ["recommended from the catalog graph"]
            # One dict literal each: adding the title after was a second resize.
            if title:
                out.append(
                    {"item_id": item, "score": cand.score, "reasons": reasons, "title": title}
                )
            else:
                out.append({"item_id": item, "score": cand.score, "reasons": reasons})
        return out
