"""Ranking: turn a batch of session states into ranked items with reasons.

One call per batch (``rank_batch``). Two rankers share the interface:

* :class:`CooccurrenceRanker` — item-to-item co-occurrence + popularity;
* :class:`SequentialRanker` — the exported GRU model through onnxruntime, one
  inference for the whole batch. Each user's hidden state is cached in the session
  state, so an event costs one GRU step however long the history; when the cached state
  is missing or from another model version it is rebuilt from the session window in
  the same call. Users with nothing the model knows fall back to co-occurrence.

:func:`load_ranker` resolves a model path (a model directory, or a models root whose
``CURRENT`` file names the active version); :class:`ModelWatcher` swaps versions at
batch boundaries without a restart.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .baseline import PAST_TENSE, CooccurrenceModel, Recommendation
from .state import SessionState

log = logging.getLogger(__name__)
ModelState = tuple[str, str, int]  # (h base64, model version, n_events it covers)
_ITEM = itemgetter(0)


@dataclass(slots=True)  # one per event: not frozen, which costs ~0.4 µs each (timeit)
class RankRequest:
    user_id: str
    state: SessionState  # as of the event being answered; read-only


@dataclass
class RankResult:
    # Per request, in order, its items as message dicts. May be lazy (a generator): a
    # ranker may do each request's last step as it is read, so read it once, in order,
    # to the end. The worker encodes each answer as soon as it is read, while its dicts
    # are still in the CPU's cache (joined all first, then encoded, cost 5-10 % more of
    # the batch function; HISTORY.md, session 19).
    items: Iterable[list[dict[str, Any]]]
    model_states: dict[str, ModelState] = field(default_factory=dict)
    # Seconds per stage where the ranker splits its time ("model", "graph"), for the
    # work done in ``rank_batch``; reading ``items`` counts as ``read_stage``.
    stages: dict[str, float] = field(default_factory=dict)
    read_stage: str = "model"


# Per request, best first. An iterable, not a list: the join reads only as many as it
# keeps (~top_k of the `candidates` it asks for), and the rest are never made.
Candidates = list[Iterable[Recommendation]]


class Ranker(Protocol):
    version: str
    top_k: int

    def rank_batch(self, requests: Sequence[RankRequest]) -> RankResult: ...


class CandidateRanker(ABC):
    """A model's ranker: ``candidates`` (Recommendation objects, for the join) and
    ``rank_batch`` (the same as message dicts, titled)."""

    version: str
    top_k: int
    titles: dict[str, str]

    @abstractmethod
    def candidates(
        self, requests: Sequence[RankRequest]
    ) -> tuple[Candidates, dict[str, ModelState]]:
        """Ranked candidates per request, and the model state to keep per user."""

    def explain(self, state: SessionState, chosen: list[Recommendation]) -> None:
        """Fill in the reasons of the ``chosen`` candidates still without (``None``).

        Reasons are written for the items that are shown only: a ranker hands the join
        several times more candidates than it keeps. The default ranker explains while
        ranking, so it has nothing left to do."""
        return None

    def rank_batch(self, requests: Sequence[RankRequest]) -> RankResult:
        candidates, states = self.candidates(requests)
        lists = [list(c) for c in candidates]
        titles = self.titles
        for req, recs in zip(requests, lists, strict=True):
            self.explain(req.state, recs)
        return RankResult([[r.as_dict(titles) for r in recs] for recs in lists], states)


class CooccurrenceRanker(CandidateRanker):
    def __init__(self, model: CooccurrenceModel, top_k: int = 10) -> None:
        self.model = model
        self.top_k = top_k
        self.version = model.version
        self.titles = model.titles

    def rank_states(self, states: Sequence[SessionState]) -> Candidates:
        histories = [s.history() for s in states]
        return self.model.ranked_batch(histories, k=self.top_k)  # excludes the history

    def rank_one(self, state: SessionState) -> list[dict[str, Any]]:
        (items,) = self.rank_batch([RankRequest("", state)]).items
        return items

    def candidates(
        self, requests: Sequence[RankRequest]
    ) -> tuple[Candidates, dict[str, ModelState]]:
        return self.rank_states([r.state for r in requests]), {}


def shown_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as shown, to 4 decimals, for a whole batch in one call: the same floats as
    ``round(x, 4)`` on each (checked on 12.5 M float32 scores, half-way cases included:
    a float32 never lies close enough to a half-way decimal for ``x * 1e4``'s rounding
    to cross it), which cost ~0.5 µs an item shown (py-spy: 3 % of the batch function
    with the GRU and a graph)."""
    return np.round(scores.astype(np.float64), 4)


def _encode_h(h: np.ndarray) -> str:
    return base64.b64encode(h.astype(np.float32).tobytes()).decode()


def _decode_h(text: str, dim: int) -> np.ndarray | None:
    h = np.frombuffer(base64.b64decode(text), dtype=np.float32)
    return h if h.shape == (dim,) else None


class SequentialRanker(CandidateRanker):
    def __init__(self, model: Any, fallback: CooccurrenceModel, top_k: int = 10) -> None:
        self.model = model  # runtime.SequentialModel
        self.fallback = CooccurrenceRanker(fallback, top_k)
        self.titles = fallback.titles
        self.top_k = top_k
        self.version = model.version

    def candidates(
        self, requests: Sequence[RankRequest]
    ) -> tuple[Candidates, dict[str, ModelState]]:
        model, dim = self.model, self.model.dim
        # Per user, in batch order: which items to feed and where each answer sits.
        users: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            users.setdefault(req.user_id, []).append(n)
        rows, h0s, feeds, positions = [], [], [], {}
        for user, idxs in users.items():
            first, last = requests[idxs[0]].state, requests[idxs[-1]].state
            h = _decode_h(first.h, dim) if first.h and first.hv == model.version else None
            covered = first.hn if h is not None else 0
            # Event number of each window entry: the window holds the last len(entries).
            window = last.entry_items
            base = last.n_events - len(window)
            feed: list[tuple[int, int]] = []  # (event number, item index)
            for j in range(max(0, covered - base), len(window)):  # only what is new
                item = window[j]
                if item is not None:
                    idx = model.item_index(item)
                    if idx:
                        feed.append((base + j + 1, idx))
            numbers = [number for number, _ in feed]  # ascending
            for n in idxs:
                pos = bisect.bisect_right(numbers, requests[n].state.n_events)
                positions[n] = (len(rows), pos, h is not None or pos > 0)
            rows.append(user)
            h0s.append(h if h is not None else np.zeros(dim, np.float32))
            feeds.append(feed)
        width = max(1, *(len(f) for f in feeds))
        items = np.zeros((len(rows), width), dtype=np.int64)
        for r, feed in enumerate(feeds):
            items[r, : len(feed)] = [i for _, i in feed]
        modelled = [n for n in range(len(requests)) if positions[n][2]]
        out: list[Iterable[Recommendation] | None] = [None] * len(requests)
        states_out: dict[str, ModelState] = {}
        if modelled:
            gather = np.array([positions[n][0] * (width + 1) + positions[n][1] for n in modelled])
            exclude = self._excluded([requests[n].state for n in modelled])
            # Only the top_k it reads (sorted, -inf last: a row with fewer valid ones
            # has no more past them); TopK's cost grows with k (model/train.py).
            states, scores, top = model.run(items, np.stack(h0s), gather, exclude, self.top_k)
            # To lists once per batch (row by row was numpy's per-call overhead), and only
            # the first top_k columns (all there are, but for a model exported before K
            # was an input: 100): _ranked reads further only in rows where one of them
            # is padding or masked, which get their whole row.
            head_s, head_t = scores[:, : self.top_k], top[:, : self.top_k]
            rows_s, rows_t = shown_scores(head_s).tolist(), head_t.tolist()
            short = ~(np.isfinite(head_s) & (head_t > 0)).all(axis=1)
            for r in np.flatnonzero(short).tolist():
                rows_s[r], rows_t[r] = shown_scores(scores[r]).tolist(), top[r].tolist()
            for n, row_scores, row_top in zip(modelled, rows_s, rows_t, strict=True):
                out[n] = self._ranked(row_scores, row_top)
            for r, user in enumerate(rows):
                last = requests[users[user][-1]].state
                if feeds[r] or h0s[r].any():
                    states_out[user] = (
                        _encode_h(states[r, len(feeds[r])]),
                        model.version,
                        last.n_events,
                    )
        cold = [n for n, items_n in enumerate(out) if items_n is None]
        if cold:  # nothing the model knows about these users yet
            for n, items_n in zip(
                cold, self.fallback.rank_states([requests[n].state for n in cold]), strict=True
            ):
                out[n] = items_n
        return out, states_out  # type: ignore[return-value]

    def _excluded(self, states: list[SessionState]) -> np.ndarray:
        """Per state, the model indices of its window's items, 0-padded ([n, width]): the
        graph masks them. Unknown items map to 0 (padding, masked anyway) and repeats stay
        (masked twice): no per-event set, sort or row copy (they were 11 % of this
        ranker's time, line_profiler)."""
        get, zero = self.model.index.get, itertools.repeat(0)
        rows = [list(map(get, map(_ITEM, s.history()), zero)) for s in states]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        exclude = np.zeros((len(rows), max(1, int(lengths.max(initial=0)))), np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(len(flat)) - np.repeat(starts, lengths)
        exclude[np.repeat(np.arange(len(rows)), lengths), cols] = flat
        return exclude

    def _ranked(self, scores: list[float], top: list[int]) -> Iterator[Recommendation]:
        """The model's top items, made as the join reads them (it keeps ~top_k of the
        ``candidates``; making all of them was ~1/4 of this ranker's Python time,
        line_profiler); reasons are left for :meth:`explain`."""
        names, left = self.model.items, self.top_k
        for s, j in zip(scores, top, strict=True):
            if j <= 0 or not math.isfinite(s):
                continue
            yield Recommendation(names[j - 1], s, None)
            left -= 1
            if not left:
                return

    def explain(self, state: SessionState, chosen: list[Recommendation]) -> None:
        """Reasons from what the user did: the strongest co-occurrence link to a recent
        item when there is one, else the recent sequence the model continued (scores
        come rounded from :meth:`candidates`)."""
        pending = [r for r in chosen if r.reasons is None]
        if not pending:
            return
        recent = state.history()[-5:]
        titles, fb = self.titles, self.fallback.model
        sequence: list[str] = []
        if recent:  # the same first reason for every item: format it once
            last_item, last_type = recent[-1]
            verb = PAST_TENSE.get(last_type, "interacted with")
            title = titles.get(last_item, last_item)
            sequence = [f'next in sequences like yours, after "{title}", which you {verb}']
        # Each pending item's co-occurrence link to the most recent item it neighbours:
        # one C-level intersection per recent item, not a test per item and recent item
        # (those were ~1/3 of this method, line_profiler).
        wanted = {r.item_id for r in pending}
        link_of: dict[str, str] = {}
        for item, _ in reversed(recent):  # most recent first: it wins
            for hit in fb.neighbour_ids(item) & wanted:
                link_of.setdefault(hit, item)
        for rec in pending:
            link = link_of.get(rec.item_id)
            if link is None:
                rec.reasons = list(sequence) or ["predicted from your activity"]
            else:
                rec.reasons = [*sequence, f'often together with "{titles.get(link, link)}"']


class GraphRanker:
    """A base ranker's candidates joined with the knowledge graph (join.py)."""

    def __init__(self, base: CandidateRanker, join: Any) -> None:
        self.base, self.join = base, join
        self.version = base.version
        self.top_k = join.s.top_k

    def rank_batch(self, requests: Sequence[RankRequest]) -> RankResult:
        """The model's candidates for the whole batch now; the join per request as the
        items are read (``RankResult.items``). The co-occurrence model makes its items
        as the join reads them, so that part of its work counts as ``graph``."""
        started = time.perf_counter()
        candidates, states = self.base.candidates(requests)
        explain, join = self.base.explain, self.join.join
        items = (
            join(req.state, cands, explain) for req, cands in zip(requests, candidates, strict=True)
        )
        return RankResult(items, states, {"model": time.perf_counter() - started}, "graph")


def known_items(ranker: Ranker) -> set[str]:
    """Items the ranker's model can score (the rest are cold for it)."""
    if isinstance(ranker, SequentialRanker):
        return set(ranker.model.items)
    if isinstance(ranker, CooccurrenceRanker):
        return set(ranker.model.item_ids)
    return set()


def resolve_model_dir(path: str | Path) -> Path:
    """A models root with a ``CURRENT`` file -> the version it names; else ``path``."""
    path = Path(path)
    current = path / "CURRENT"
    if current.is_file():
        return path / current.read_text().strip()
    return path


def load_ranker(path: str | Path, top_k: int = 10) -> CandidateRanker:
    """Load whatever ``path`` holds: a sequential model version or a co-occurrence model."""
    from .model.runtime import FORMAT, ModelError, SequentialModel

    model_dir = resolve_model_dir(path)
    meta_path = model_dir / "metadata.json"
    if not meta_path.is_file():
        raise ModelError(f"{model_dir} is not a model directory (no metadata.json)")
    fmt = json.loads(meta_path.read_text()).get("format")
    if fmt == FORMAT:
        model = SequentialModel(model_dir)
        log.info("model %s on %s", model.version, ", ".join(model.providers))
        return SequentialRanker(model, CooccurrenceModel.load(model_dir / "fallback"), top_k)
    return CooccurrenceRanker(CooccurrenceModel.load(model_dir), top_k)


def activate(root: str | Path, version: str) -> None:
    """Point ``root/CURRENT`` at ``version`` atomically (workers pick it up live)."""
    root = Path(root)
    if not (root / version / "metadata.json").is_file():
        raise FileNotFoundError(f"{root / version} is not a model version")
    tmp = root / f".CURRENT.{time.time_ns()}"
    tmp.write_text(version + "\n")
    tmp.replace(root / "CURRENT")


class ModelWatcher:
    """Checks ``path`` (every ``interval`` s, between batches) for a new active version
    and loads it; a version that fails to load is refused and the running one stays."""

    def __init__(
        self,
        path: str | Path,
        top_k: int,
        interval: float = 2.0,
        wrap: Callable[[CandidateRanker], Ranker] | None = None,
    ) -> None:
        self.path, self.top_k, self.interval = Path(path), top_k, interval
        self.wrap = wrap or (lambda r: r)
        self.current_dir = resolve_model_dir(self.path)
        self.ranker = self.wrap(load_ranker(self.path, top_k))
        self._next_check = time.monotonic() + interval
        self.refused: set[tuple[Path, float]] = set()

    def poll(self) -> Ranker:
        now = time.monotonic()
        if now < self._next_check:
            return self.ranker
        self._next_check = now + self.interval
        try:
            target = resolve_model_dir(self.path)
        except OSError:
            return self.ranker
        if target == self.current_dir:
            return self.ranker
        try:
            stamp = (target, (target / "metadata.json").stat().st_mtime)
        except OSError:
            stamp = (target, 0.0)
        if stamp in self.refused:
            return self.ranker  # refused already; tried again once its files change
        try:
            ranker = self.wrap(load_ranker(target, self.top_k))
        except Exception as exc:
            self.refused.add(stamp)
            log.error("refusing model %s: %s; still serving %s", target, exc, self.ranker.version)
            return self.ranker
        log.info("switched model %s -> %s", self.ranker.version, ranker.version)
        self.ranker, self.current_dir = ranker, target
        return ranker
