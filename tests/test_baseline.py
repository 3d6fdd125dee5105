"""The co-occurrence + popularity recommender: learns planted structure, saves safely."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from streamrec.baseline import PAST_TENSE, TYPE_WEIGHT, CooccurrenceModel
from streamrec.datasets import generate_log


def rows(events):
    return [(e["user_id"], e["item_id"], e["event_type"], e["timestamp"]) for e in events]


def test_learns_pairs_and_explains_them() -> None:
    events = []
    for u in range(30):  # everyone who sees A then sees B; C is popular on its own
        events += [(f"u{u}", "A", "view", 1), (f"u{u}", "B", "view", 2)]
        events += [(f"x{u}", "C", "view", 1), (f"y{u}", "C", "purchase", 1)]
    m = CooccurrenceModel.fit(events, titles={"A": "Alpha"})
    recs = m.recommend([("A", "view")], k=2)
    assert recs[0].item_id == "B"
    assert recs[0].reasons == ['often together with "Alpha", which you viewed']
    assert recs[1].item_id == "C" and "popular" in recs[1].reasons[0]


def test_excludes_seen_and_fills_with_popularity_for_cold_users() -> None:
    events, _ = generate_log(users=50, items=40, events_per_user=10, seed=1)
    m = CooccurrenceModel.fit(rows(events))
    cold = m.recommend([], k=5)
    assert len(cold) == 5 and all("popular" in r.reasons[0] for r in cold)
    unknown = m.recommend([("never-seen", "view")], k=5)
    assert [r.item_id for r in unknown] == [r.item_id for r in cold]
    hist = [("i1", "view"), ("i2", "view")]
    assert not {"i1", "i2"} & {r.item_id for r in m.recommend(hist, k=20)}


def hit_rate(model, tests, k=10) -> float:
    hits = 0
    for hist, target in tests:
        hits += target in [r.item_id for r in model.recommend(hist, k=k)]
    return hits / len(tests)


def test_beats_popularity_on_planted_sequences() -> None:
    events, _ = generate_log(users=300, items=200, events_per_user=20, seed=2)
    seqs = defaultdict(list)
    for e in events:
        seqs[e["user_id"]].append(e)
    train, tests = [], []
    for s in seqs.values():
        train += s[:-1]
        tests.append(([(e["item_id"], e["event_type"]) for e in s[:-1]], s[-1]["item_id"]))
    model = CooccurrenceModel.fit(rows(train))
    pop_only = CooccurrenceModel(
        model.item_ids, np.full_like(model._nbr_idx, -1), model._nbr_score, model.popularity
    )
    hr, hr_pop = hit_rate(model, tests), hit_rate(pop_only, tests)
    print(f"HR@10 co-occurrence {hr:.3f} vs popularity {hr_pop:.3f}")
    assert hr > 0.5 and hr > 3 * hr_pop and not math.isnan(hr_pop)


def test_save_load_roundtrip_and_tamper_check(tmp_path: Path) -> None:
    events, catalog = generate_log(users=40, items=30, events_per_user=8, seed=4)
    m = CooccurrenceModel.fit(rows(events), titles={c["item_id"]: c["title"] for c in catalog})
    m.save(tmp_path)
    back = CooccurrenceModel.load(tmp_path)
    hist = [("i3", "view"), ("i4", "click")]
    assert [r.item_id for r in back.recommend(hist)] == [r.item_id for r in m.recommend(hist)]
    assert back.version == m.version and back.titles == m.titles
    (tmp_path / "cooccurrence.npz").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="hash"):
        CooccurrenceModel.load(tmp_path)


def test_load_refuses_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CooccurrenceModel.load(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        CooccurrenceModel.load(tmp_path)


def test_trimming_candidates_and_neighbour_order_do_not_change_answers() -> None:
    """ranked_batch keeps only the k + |excluded| best candidates of each request,
    and the model stores each item's neighbours in index order: both are speed-ups
    only, so the answers (items, scores, reasons) must equal untrimmed scoring over
    neighbours in any order."""
    events, _ = generate_log(users=300, items=200, events_per_user=12, seed=3)
    m = CooccurrenceModel.fit(rows(events))
    histories: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for e in events:
        histories[e["user_id"]].append((e["item_id"], e["event_type"]))
    hs = list(histories.values())[:120]
    excludes = [None if n % 2 else {h[0] for h in hs[n][:3]} for n in range(len(hs))]

    def answers(model: CooccurrenceModel) -> list:
        lists = [list(r) for r in model.ranked_batch(hs, k=15, excludes=excludes)]
        return [[(r.item_id, r.score, r.reasons) for r in lst] for lst in lists]

    reversed_columns = CooccurrenceModel(
        m.item_ids, m._nbr_idx[:, ::-1].copy(), m._nbr_score[:, ::-1].copy(), m.popularity
    )
    untrimmed = CooccurrenceModel(m.item_ids, m._nbr_idx, m._nbr_score, m.popularity)
    untrimmed._score_votes = lambda n, req, pos, idx, wts, limits=None: (  # type: ignore
        CooccurrenceModel._score_votes(untrimmed, n, req, pos, idx, wts)
    )
    expected = answers(m)
    assert answers(reversed_columns) == expected
    assert answers(untrimmed) == expected
    assert sum(len(a) for a in expected) == 15 * len(hs)


def _reference_ranking(m: CooccurrenceModel, history, k: int, recent: int = 5, decay: float = 0.7):
    """ranked_batch's scored part, written plainly: each of the ``recent`` latest known
    items votes for its neighbours (float32 vote = score x weight); an item's score is
    the sum of its votes and its reason the strongest vote, the most recent on ties;
    best first, ties in item order, history excluded."""
    score: dict[int, float] = defaultdict(float)
    strongest: dict[int, tuple[float, int]] = {}
    weight, used = 1.0, 0
    for p in range(len(history) - 1, -1, -1):
        i = m.index.get(history[p][0])
        if i is None:
            continue
        w = np.float32(weight * TYPE_WEIGHT.get(history[p][1], 1.0))
        for j, s in zip(m._nbr_idx[i].tolist(), m._nbr_score[i], strict=True):
            if j < 0:
                continue
            c = float(np.float32(s) * w)
            score[j] += c
            if j not in strongest or c > strongest[j][0]:
                strongest[j] = (c, p)
        weight *= decay
        used += 1
        if used >= recent:
            break
    seen = {item for item, _ in history}
    ranked = sorted((j for j in score if m.item_ids[j] not in seen), key=lambda j: (-score[j], j))
    out = []
    for j in ranked[:k]:
        src_item, src_type = history[strongest[j][1]]
        reason = f'often together with "{m.title(src_item)}", which you {PAST_TENSE[src_type]}'
        out.append((m.item_ids[j], score[j], [reason]))
    return out


def test_scores_and_reasons_match_a_plain_reference_also_in_chunks() -> None:
    """The whole-batch numpy scoring (one sort on request, item and vote strength)
    equals the plain definition; a batch too large for one sort key is scored in
    chunks of requests with the same answers."""
    events, catalog = generate_log(users=200, items=150, events_per_user=15, seed=11)
    m = CooccurrenceModel.from_log(events, catalog)
    histories: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for e in events:
        histories[e["user_id"]].append((e["item_id"], e["event_type"]))
    hs = [h[: 3 + n % 9] for n, h in enumerate(histories.values())]

    def answers(model: CooccurrenceModel, batch: list = hs) -> list:
        lists = [list(r) for r in model.ranked_batch(batch, k=12)]
        return [[(r.item_id, r.score, r.reasons) for r in lst] for lst in lists]

    got = answers(m)
    for history, answer in zip(hs, got, strict=True):
        expected = _reference_ranking(m, history, k=12)
        scored = answer[: len(expected)]
        assert [(i, r) for i, _, r in scored] == [(i, r) for i, _, r in expected]
        assert [s for _, s, _ in scored] == pytest.approx([s for _, s, _ in expected], rel=1e-12)
    chunked = CooccurrenceModel(m.item_ids, m._nbr_idx, m._nbr_score, m.popularity, m.titles)
    chunked._MAX_KEY = 7 * len(m.item_ids)  # 6 requests per sort
    assert answers(chunked) == got
    # More requests than the second sort's keys hold (2,048): in chunks, same answers.
    many = -(-2100 // len(hs))
    assert answers(m, hs * many) == got * many


def test_refuses_negative_neighbour_scores_and_reads_minus_zero_as_zero() -> None:
    """The scoring sorts votes by their float bits, where -0.0 would beat every score."""
    nbr = np.array([[2, -1], [2, -1], [0, 1]])
    with pytest.raises(ValueError, match="non-negative"):
        CooccurrenceModel(["a", "b", "c"], nbr, np.array([[-0.5, 0], [1, 0], [1, 1]]), np.ones(3))
    scores = np.array([[-0.0, 0.0], [0.5, 0.0], [1.0, 1.0]], dtype=np.float32)
    m = CooccurrenceModel(["a", "b", "c"], nbr, scores, np.ones(3))
    (rec,) = m.recommend([("b", "view"), ("a", "view")], k=1)
    # c's votes: -0.0 from a (the latest), 0.5 x 0.7 from b: b's is the reason.
    assert (rec.item_id, rec.reasons) == ("c", ['often together with "b", which you viewed'])
