"""Item-to-item co-occurrence recommender with a popularity fallback.

Trained from an event log: two items co-occur when one user touched both within
``window`` steps of each other; forward pairs (b after a) count fully, backward pairs
half, both decaying with distance. Scores are normalised by ``pop(b) ** alpha`` so the
list is not just the bestsellers. Each item keeps its ``neighbours`` strongest partners.

It is the ranking until a sequential model is deployed, the cold-start fallback after,
and a baseline in every evaluation. Saved as ``.npz`` (no pickle) + JSON metadata.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# How much an event type says about interest (used for training weights and recency).
TYPE_WEIGHT = {
    "view": 1.0,
    "click": 1.0,
    "rating": 1.0,
    "add_to_cart": 2.0,
    "purchase": 3.0,
    "search": 0.0,
}
PAST_TENSE = {
    "view": "viewed",
    "click": "clicked",
    "rating": "rated",
    "add_to_cart": "added to your cart",
    "purchase": "bought",
}
FORMAT = "streamrec.cooccurrence/1"
POPULAR_REASON = "one of the most popular items overall"
_POPULAR_REASONS = [POPULAR_REASON]


@dataclass(slots=True)
class Recommendation:
    """One ranked item. Rankers and the join pass these along (cheap to create, one per
    candidate); only the final top-k become dicts, in the message's shape."""

    item_id: str
    score: float
    reasons: list[str] | None  # None: the ranker explains it once it is chosen (ranking.py)

    def as_dict(self, titles: dict[str, str]) -> dict:
        """The item in the recommendation message's shape, titled when the title is known."""
        out = {"item_id": self.item_id, "score": self.score, "reasons": self.reasons or []}
        title = titles.get(self.item_id)
        if title:
            out["title"] = title
        return out


class CooccurrenceModel:
    """Neighbour lists per item plus global popularity; ranking a session touches at
    most ``recent`` x ``neighbours`` entries, so its cost does not grow with the catalog
    or the user's lifetime."""

    _MAX_KEY = 2**31  # request x catalog size per _score_votes sort (a class knob for tests)
    _MAX_REQUESTS = 2**11  # requests per _score_votes sort (its second sort's keys)

    def __init__(
        self,
        item_ids: Sequence[str],
        nbr_idx: np.ndarray,
        nbr_score: np.ndarray,
        popularity: np.ndarray,
        titles: dict[str, str] | None = None,
        meta: dict | None = None,
    ) -> None:
        self.item_ids = list(item_ids)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.popularity = popularity.astype(np.float64)
        self.titles = titles or {}
        self.meta = meta or {}
        # Each item's neighbours in index order (padding last): one item's votes are then
        # a sorted run, which the stable sort in _score_votes merges instead of sorting
        # (1.7x faster on a 500-event batch, measured). Scores do not depend on the order.
        if not (nbr_score >= 0).all():  # _score_votes sorts scores by their bits
            raise ValueError("neighbour scores must be non-negative numbers")
        order = np.argsort(
            np.where(nbr_idx < 0, np.iinfo(nbr_idx.dtype).max, nbr_idx), axis=1, kind="stable"
        )
        self._nbr_idx = np.take_along_axis(nbr_idx, order, axis=1)
        # abs: -0.0 -> 0.0, whose bits would sort it above every positive score
        scores = np.abs(nbr_score.astype(np.float32))
        self._nbr_score = np.take_along_axis(scores, order, axis=1)
        total = float(self.popularity.sum()) or 1.0
        self._pop_share = self.popularity / total
        # Neighbour ids per item as sets, built on first use and kept for the hottest
        # items only (a million-item catalog would not fit as sets).
        self.neighbour_ids = functools.lru_cache(maxsize=65536)(self._neighbour_ids)
        top = np.argsort(-self.popularity, kind="stable")[:1000].tolist()
        # (item id, share of all interactions), most popular first: the fill-up list.
        self._popular_list = [(self.item_ids[j], float(self._pop_share[j])) for j in top]

    def _neighbour_ids(self, item_id: str) -> frozenset[str]:
        idx = self.index.get(item_id)
        if idx is None:
            return frozenset()
        return frozenset(self.item_ids[j] for j in self._nbr_idx[idx].tolist() if j >= 0)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "cooccurrence"))

    def title(self, item_id: str) -> str:
        return self.titles.get(item_id, item_id)

    # -- training -------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        events: Iterable[tuple[str, str, str, int]],
        *,
        window: int = 10,
        neighbours: int = 50,
        alpha: float = 0.5,
        titles: dict[str, str] | None = None,
        meta: dict | None = None,
    ) -> CooccurrenceModel:
        """``events``: (user_id, item_id, event_type, timestamp) in any order."""
        rows = [(u, i, TYPE_WEIGHT.get(t, 1.0), ts) for u, i, t, ts in events if i is not None]
        if not rows:
            raise ValueError("no events with an item to train on")
        rows.sort(key=lambda r: (r[0], r[3]))
        item_ids = sorted({r[1] for r in rows})
        index = {item: n for n, item in enumerate(item_ids)}
        user_index: dict[str, int] = {}
        users = np.array([user_index.setdefault(r[0], len(user_index)) for r in rows])
        items = np.array([index[r[1]] for r in rows], dtype=np.int64)
        weights = np.array([r[2] for r in rows], dtype=np.float64)
        n = len(item_ids)
        popularity = np.bincount(items, weights=weights, minlength=n)

        keys, vals = [], []
        for d in range(1, window + 1):
            same = users[:-d] == users[d:]
            a, b = items[:-d][same], items[d:][same]
            w = (weights[:-d][same] * weights[d:][same]) / d
            keep = a != b
            a, b, w = a[keep], b[keep], w[keep]
            keys += [a * n + b, b * n + a]
            vals += [w, 0.5 * w]
        key = np.concatenate(keys)
        val = np.concatenate(vals)
        uniq, inv = np.unique(key, return_inverse=True)
        score = np.bincount(inv, weights=val)
        src, dst = uniq // n, uniq % n
        score = score / np.power(np.maximum(popularity[dst], 1.0), alpha)
        order = np.lexsort((-score, src))
        src, dst, score = src[order], dst[order], score[order]
        starts = np.searchsorted(src, np.arange(n))
        rank = np.arange(len(src)) - starts[src]
        keep = rank < neighbours
        nbr_idx = np.full((n, neighbours), -1, dtype=np.int32)
        nbr_score = np.zeros((n, neighbours), dtype=np.float32)
        nbr_idx[src[keep], rank[keep]] = dst[keep]
        nbr_score[src[keep], rank[keep]] = score[keep]
        meta = {
            "format": FORMAT,
            "window": window,
            "neighbours": neighbours,
            "alpha": alpha,
            "n_items": n,
            "n_events": len(rows),
            "trained_at": int(time.time()),
            **(meta or {}),
        }
        meta.setdefault("version", f"cooc-{meta['trained_at']}")
        return cls(item_ids, nbr_idx, nbr_score, popularity, titles, meta)

    @classmethod
    def from_log(
        cls, events: Iterable[dict], catalog: Iterable[dict] = (), **options: Any
    ) -> CooccurrenceModel:
        """Fit on event dicts (the log's shape), titled from catalog rows."""
        return cls.fit(
            ((e["user_id"], e["item_id"], e["event_type"], e["timestamp"]) for e in events),
            titles={c["item_id"]: c["title"] for c in catalog if c.get("title")},
            **options,
        )

    # -- persistence ----------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / "cooccurrence.npz",
            item_ids=np.array(self.item_ids, dtype=str),
            nbr_idx=self._nbr_idx,
            nbr_score=self._nbr_score,
            popularity=self.popularity,
        )
        data = (out / "cooccurrence.npz").read_bytes()
        meta = {**self.meta, "sha256": hashlib.sha256(data).hexdigest()}
        (out / "titles.json").write_text(json.dumps(self.titles, ensure_ascii=False))
        (out / "metadata.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> CooccurrenceModel:
        path = Path(path)
        meta_path = path / "metadata.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} is not a co-occurrence model (no metadata.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        blob = (path / "cooccurrence.npz").read_bytes()
        if meta.get("sha256") and hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            raise ValueError(f"{path}/cooccurrence.npz does not match the hash in metadata.json")
        with np.load(path / "cooccurrence.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        titles_path = path / "titles.json"
        titles = json.loads(titles_path.read_text()) if titles_path.is_file() else {}
        return cls(
            [str(x) for x in arrays["item_ids"]],
            arrays["nbr_idx"],
            arrays["nbr_score"],
            arrays["popularity"],
            titles,
            meta,
        )

    # -- serving --------------------------------------------------------------------
    def recommend(
        self,
        history: Sequence[tuple[str, str]],
        k: int = 10,
        exclude: set[str] | None = None,
        recent: int = 5,
        decay: float = 0.7,
    ) -> list[Recommendation]:
        """Rank for one session. ``history``: (item_id, event_type), oldest first."""
        return list(self.ranked_batch([history], k, [exclude], recent, decay)[0])

    def ranked_batch(
        self,
        histories: Sequence[Sequence[tuple[str, str]]],
        k: int = 10,
        excludes: Sequence[set[str] | None] | None = None,
        recent: int = 5,
        decay: float = 0.7,
    ) -> list[Iterator[Recommendation]]:
        """Rank for many sessions at once: each scores the neighbours of its ``recent``
        most recent known items (weighted by event type, decaying with age); the item
        whose link contributed most is the reason. Neighbour scores are gathered, summed
        and sorted as whole-batch numpy arrays (profiled: the per-event Python loop was
        60 % of the worker's ranking time). Each request's items are then made one at a
        time, best first, as its consumer asks for them: the join keeps ~top_k of the 30
        candidates it asks for, and making all 30 was 20 % of the batch (pyinstrument)."""
        excludes = list(excludes) if excludes is not None else [None] * len(histories)
        # (request, history position, item index, weight) of every item that votes.
        req, pos, idx, wts = [], [], [], []
        for r, history in enumerate(histories):
            weight, used = 1.0, 0
            for p in range(len(history) - 1, -1, -1):
                i = self.index.get(history[p][0])
                if i is None:
                    continue
                req.append(r)
                pos.append(p)
                idx.append(i)
                wts.append(weight * TYPE_WEIGHT.get(history[p][1], 1.0))
                weight *= decay
                used += 1
                if used >= recent:
                    break
        per_req: list[tuple[list, list, list]] = [([], [], []) for _ in histories]
        if idx and self._nbr_idx.size:
            # _iter_ranked reads at most k + |excluded| candidates of a request: keep no more.
            limits = [
                k + len(exclude if exclude is not None else history)
                for history, exclude in zip(histories, excludes, strict=True)
            ]
            per_req = self._score_votes(len(histories), req, pos, idx, wts, limits)
        return [
            self._iter_ranked(history, exclude, *ranked, k)
            for history, exclude, ranked in zip(histories, excludes, per_req, strict=True)
        ]

    def _score_votes(
        self,
        n_requests: int,
        req: list[int],
        pos: list[int],
        idx: list[int],
        wts: list[float],
        limits: list[int] | None = None,
    ) -> list[tuple[list, list, list]]:
        """Per request: (item indices, scores, reason positions), best first; at most
        ``limits[r]`` of them for request ``r``."""
        n = len(self.item_ids)
        # (request, item) must fit 31 bits and a request 11 (the sorts' keys below):
        # more requests than that go in chunks.
        per_chunk = max(1, min((self._MAX_KEY - 1) // n, self._MAX_REQUESTS))
        if n_requests > per_chunk:
            out: list[tuple[list, list, list]] = []
            for first in range(0, n_requests, per_chunk):
                last = min(first + per_chunk, n_requests)
                a, b = bisect.bisect_left(req, first), bisect.bisect_left(req, last)
                out += self._score_votes(
                    last - first,
                    [r - first for r in req[a:b]],
                    pos[a:b],
                    idx[a:b],
                    wts[a:b],
                    limits[first:last] if limits is not None else None,
                )
            return out
        nbr = self._nbr_idx[idx]  # (votes, neighbours); padding (-1) last in each row
        width = nbr.shape[1]
        real = (nbr >= 0).ravel()
        key = np.repeat(np.asarray(req, np.int64), width) * n + nbr.ravel()
        c = (self._nbr_score[idx] * np.asarray(wts, np.float32)[:, None]).ravel()
        # One stable sort on (request, item, vote descending) groups the votes of each
        # (request, item) with its strongest vote first, the most recent one on ties
        # (votes come most recent first). A non-negative float32's bits order like its
        # value (the model refuses negative scores), so the vote fits the low 32 bits
        # and (request, item) the high 31. Padding sorts last and is cut off. Finding
        # the strongest vote after a sort by key alone took four more array passes, a
        # third of this function's time (line_profiler).
        descending = (np.uint32(0xFFFFFFFF) - c.view(np.uint32)).astype(np.int64)
        composite = np.where(real, key << 32 | descending, np.iinfo(np.int64).max)
        order = np.argsort(composite, kind="stable")[: int(np.count_nonzero(real))]
        key, c = composite[order] >> 32, c[order]
        ukey = score = because = key[:0]
        if len(key):
            first = np.r_[True, key[1:] != key[:-1]]
            starts = np.flatnonzero(first)
            # Each (request, item)'s votes summed in order, as add.reduceat would, in
            # half its time (timeit on a captured batch: 0.20 against 0.42 ms).
            score = np.bincount(np.cumsum(first) - 1, weights=c)
            ukey = key[starts]
            because = np.asarray(pos, np.int64)[order[starts] // width]
            # Best first within each request, ties in item order: one stable sort of int64
            # keys, the request in the high bits and the score's descending bits in the
            # low 52 (a non-negative float64's bits order like its value; the 11 dropped
            # are its last mantissa bits, so two scores closer than ~5e-13 of their size
            # count as a tie). Sorting float64 keys (request x span - score) took 1.6 ms
            # on a captured batch, these 1.1 (timeit).
            descending_score = np.int64((1 << 52) - 1) - (score.view(np.int64) >> 11)
            order = np.argsort((ukey // n) << 52 | descending_score, kind="stable")
            ukey, score, because = ukey[order], score[order], because[order]
        bounds = np.searchsorted(ukey // n, np.arange(n_requests + 1))
        if limits is not None and len(ukey):
            sizes = np.diff(bounds)
            rank = np.arange(len(ukey)) - np.repeat(bounds[:-1], sizes)
            keep = rank < np.repeat(np.asarray(limits), sizes)
            ukey, score, because = ukey[keep], score[keep], because[keep]
            bounds = np.searchsorted(ukey // n, np.arange(n_requests + 1))
        bounds = bounds.tolist()
        items, scores, reasons = (ukey % n).tolist(), score.tolist(), because.tolist()
        return [(items[a:b], scores[a:b], reasons[a:b]) for a, b in itertools.pairwise(bounds)]

    def _iter_ranked(
        self,
        history: Sequence[tuple[str, str]],
        exclude: set[str] | None,
        items: list[int],
        scores: list[float],
        because: list[int],
        k: int,
    ) -> Iterator[Recommendation]:
        """At most ``k`` items: the scored ones not excluded, with their reasons, then
        popular items to fill up."""
        exclude = exclude if exclude is not None else {h[0] for h in history}
        names, left = self.item_ids, k
        reasons: dict[int, list[str]] = {}  # at most `recent` distinct: make each once
        for j, s, p in zip(items, scores, because, strict=True):
            item = names[j]
            if item in exclude:
                continue
            reason = reasons.get(p)
            if reason is None:
                src_item, src_type = history[p]
                verb = PAST_TENSE.get(src_type, "interacted with")
                title = self.title(src_item)
                reason = reasons[p] = [f'often together with "{title}", which you {verb}']
            yield Recommendation(item, s, reason)  # shared list: treat as read-only
            left -= 1
            if not left:
                return
        taken = {names[j] for j in items}  # all of them were given or are excluded
        for item, share in self._popular_list:
            if item in exclude or item in taken:
                continue
            yield Recommendation(item, share, _POPULAR_REASONS)
            left -= 1
            if not left:
                return


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
