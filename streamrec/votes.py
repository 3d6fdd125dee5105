"""Co-occurrence votes -> each request's best items: the one compiled loop of the worker.

A request's recent items each vote for their neighbours; an item's score is the sum of
its votes and its reason the strongest one. Done with numpy, this took two sorts over
every vote of the batch (~88,000 for 500 events) and was the largest single part of the
batch function (HISTORY.md, session 21). Compiled with numba, each request's votes are
summed in a dense per-item table and only its ``limit`` best are selected and sorted:
2.3x less time for the same answers (timeit, 30 captured 500-event batches).

numba caches the compiled code on disk (``cache=True``: in ``__pycache__`` beside this
file, else in the user's cache directory), so only a machine's first process compiles
it (~6 s on the 2-core dev machine); :func:`warm_up` does that when a model is loaded
rather than on a worker's first event.
"""

from __future__ import annotations

import numpy as np
from numba import njit


class Scratch:
    """Per-model working memory for :func:`top_votes`: which request last touched each
    item (a stamp that only grows, so nothing is cleared between batches) and where
    its votes are."""

    def __init__(self, n_items: int) -> None:
        self.stamp = np.full(n_items, -1, np.int64)
        self.slot = np.zeros(n_items, np.int64)
        self.next_stamp = 0

    def take(self, n_requests: int) -> int:
        """The first stamp for a call with ``n_requests`` requests."""
        first = self.next_stamp
        self.next_stamp += n_requests
        return first


@njit(cache=True)
def top_votes(
    nbr_idx: np.ndarray,  # (items, neighbours) int32: each item's neighbours, -1 padding
    nbr_score: np.ndarray,  # (items, neighbours) float32, non-negative and finite
    starts: np.ndarray,  # int64, requests + 1: request r's votes are starts[r]:starts[r + 1]
    idx: np.ndarray,  # int64 per vote: the voting item
    pos: np.ndarray,  # int64 per vote: its position in the request's history
    wts: np.ndarray,  # float32 per vote: its weight
    limits: np.ndarray,  # int64 per request: how many of its best items to return
    stamp: np.ndarray,  # Scratch.stamp
    slot: np.ndarray,  # Scratch.slot
    first_stamp: int,  # Scratch.take(requests)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per request, its best items (index, score, reason position), best first, the
    requests' lists back to back; and the bounds of each request's list.

    An item's score is the float64 sum of its votes (vote = neighbour score x weight,
    float32), strongest first; its reason the position of its strongest vote, the
    earlier vote (the more recent item) on ties. Best first means score descending,
    item index ascending on ties, scores counting as tied within ~2^-40 of their size
    (2^-(51 - index bits) for catalogs over 2,048 items): the order's key packs the
    score's leading bits and the item index into one int64."""
    n_requests = len(limits)
    n_items, width = nbr_idx.shape
    index_bits = 1
    while (1 << index_bits) < n_items:
        index_bits += 1
    # 52 bits of descending score, less what the index needs beyond 11 (63 bits in all)
    score_shift = max(0, index_bits - 11)
    index_mask = (np.int64(1) << index_bits) - 1
    voters = 1
    for r in range(n_requests):
        voters = max(voters, starts[r + 1] - starts[r])
    cap = voters * width  # the most items one request can have
    item = np.empty(cap, np.int64)
    count = np.zeros(cap, np.int64)
    vote = np.empty((cap, voters), np.float32)  # per item, its votes strongest first
    vote_pos = np.empty((cap, voters), np.int64)
    score = np.empty(cap, np.float64)
    key = np.empty(cap, np.int64)
    as_bits = np.empty(1, np.float64)
    bits = as_bits.view(np.int64)
    out_item = np.empty(len(idx) * width, np.int64)
    out_score = np.empty(len(idx) * width, np.float64)
    out_pos = np.empty(len(idx) * width, np.int64)
    bounds = np.zeros(n_requests + 1, np.int64)
    filled = 0
    for r in range(n_requests):
        mark = first_stamp + r
        found = 0
        for v in range(starts[r], starts[r + 1]):
            row, weight, p = idx[v], wts[v], pos[v]
            for w in range(width):
                j = nbr_idx[row, w]
                if j < 0:  # padding
                    continue
                c = nbr_score[row, w] * weight
                if stamp[j] != mark:
                    stamp[j] = mark
                    slot[j] = found
                    item[found] = j
                    count[found] = 0
                    found += 1
                q = slot[j]
                t = count[q]
                while t > 0 and vote[q, t - 1] < c:  # insertion: at most `voters` each
                    vote[q, t] = vote[q, t - 1]
                    vote_pos[q, t] = vote_pos[q, t - 1]
                    t -= 1
                vote[q, t] = c
                vote_pos[q, t] = p
                count[q] += 1
        for q in range(found):
            total = 0.0
            for t in range(count[q]):
                total += np.float64(vote[q, t])
            score[q] = total
            as_bits[0] = total  # a non-negative float64's bits order like its value
            descending = np.int64((1 << 52) - 1) - (bits[0] >> 11)
            key[q] = ((descending >> score_shift) << index_bits) | item[q]
        keep = max(0, min(limits[r], found))
        best = key[:found]
        if 0 < keep < found:
            best = np.partition(best, keep - 1)[:keep]
        best = np.sort(best[:keep])
        for t in range(keep):
            q = slot[best[t] & index_mask]
            out_item[filled] = item[q]
            out_score[filled] = score[q]
            out_pos[filled] = vote_pos[q, 0]
            filled += 1
        bounds[r + 1] = filled
    return out_item[:filled], out_score[:filled], out_pos[:filled], bounds


def warm_up() -> None:
    """Compile :func:`top_votes` now (or load it from numba's cache), for the argument
    types the co-occurrence model passes."""
    nbr_idx = np.array([[1], [-1]], np.int32)
    scratch = Scratch(2)
    top_votes(
        nbr_idx,
        np.ones(nbr_idx.shape, np.float32),
        np.array([0, 1], np.int64),
        np.array([0], np.int64),
        np.array([0], np.int64),
        np.ones(1, np.float32),
        np.array([1], np.int64),
        scratch.stamp,
        scratch.slot,
        scratch.take(1),
    )
