"""process_batch: the worker's whole per-batch logic, without Kafka."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streamrec.baseline import CooccurrenceModel
from streamrec.events import validator
from streamrec.graph import GraphIndex
from streamrec.join import GraphJoin, JoinSettings
from streamrec.pipeline import Record, process_batch
from streamrec.ranking import CooccurrenceRanker, GraphRanker, known_items
from streamrec.replay import user_key
from streamrec.state import SessionState
from streamrec.topology import WorkerSpec

SPEC = WorkerSpec(top_k=5, session_length=10)


@pytest.fixture
def ranker(small_model: Path) -> CooccurrenceRanker:
    return CooccurrenceRanker(CooccurrenceModel.load(small_model), top_k=SPEC.top_k)


def event(n: int, user: str = "u1", item: str = "i1", **extra) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{n}",
            "user_id": user,
            "item_id": item,
            "event_type": "view",
            "timestamp": 1_700_000_000_000 + n,
            **extra,
        }
    )


def records(values, keys=None, partition=0):
    keys = keys or [user_key(v) for v in values]
    return [
        Record(k, v, "events", partition, n, 1000 + n)
        for n, (k, v) in enumerate(zip(keys, values, strict=True))
    ]


def test_valid_events_answered_in_order_with_state(ranker: CooccurrenceRanker) -> None:
    store: dict[str, bytes] = {}
    batch = records([event(1, item="i1"), event(2, item="i2"), event(3, user="u2", item="i5")])
    result = process_batch(batch, lambda u, r: store.get(u), ranker, SPEC)
    assert result.valid == 3 and result.invalid == 0
    docs = [orjson.loads(v) for _, v in result.recommendations]
    assert [d["event_id"] for d in docs] == ["e1", "e2", "e3"]
    for d in docs:
        validator("recommendation")(d)
        assert len(d["items"]) == 5 and d["timings"]["batch_size"] == 3
    # Each answer reflects the state at its own event: the 2nd never recommends i1 or i2.
    assert "i1" not in {i["item_id"] for i in docs[0]["items"]}
    assert not {"i1", "i2"} & {i["item_id"] for i in docs[1]["items"]}
    assert set(result.state_writes) == {"u1", "u2"}  # one write per user per batch
    u1 = SessionState.from_bytes(result.state_writes["u1"][0])
    assert u1.items == ["i1", "i2"] and result.state_writes["u1"][1].offset == 1


class Recording(CooccurrenceRanker):
    """Notes what each request's state holds when the batch is ranked."""

    seen: list[tuple[str, int, list[str]]]

    def rank_batch(self, requests):
        self.seen = [(r.user_id, r.state.n_events, r.state.items) for r in requests]
        return super().rank_batch(requests)


def test_each_event_is_ranked_on_its_users_state_as_of_that_event(small_model: Path) -> None:
    """A user's later events in the batch change the live state (copied only then)."""
    ranker = Recording(CooccurrenceModel.load(small_model), top_k=SPEC.top_k)
    values = [
        event(1, item="i1"),
        event(2, user="u2", item="i5"),
        event(3, item="i2"),
        event(4, item="i3"),
        event(3, item="i2"),  # redelivered within the batch: changes nothing
    ]
    process_batch(records(values), lambda u, r: None, ranker, SPEC)
    assert ranker.seen == [
        ("u1", 1, ["i1"]),
        ("u2", 1, ["i5"]),
        ("u1", 2, ["i1", "i2"]),
        ("u1", 3, ["i1", "i2", "i3"]),
        ("u1", 3, ["i1", "i2", "i3"]),
    ]


def test_invalid_records_dead_lettered_valid_ones_unaffected(ranker: CooccurrenceRanker) -> None:
    values = [b"\xff", event(1), b"{oops", event(2, event_type="nope"), event(3)]
    result = process_batch(records(values), lambda u, r: None, ranker, SPEC)
    assert result.valid == 2 and result.invalid == 3
    assert [orjson.loads(v)["event_id"] for _, v in result.recommendations] == ["e1", "e3"]
    dead = [orjson.loads(v) for _, v in result.dead_letters]
    assert [d["error_code"] for d in dead] == ["not_utf8", "not_json", "schema"]
    assert [d["offset"] for d in dead] == [0, 2, 3]


def test_redelivered_events_answered_but_not_reapplied(ranker: CooccurrenceRanker) -> None:
    store: dict[str, bytes] = {}
    batch = records([event(1), event(2, item="i2")])
    first = process_batch(batch, lambda u, r: store.get(u), ranker, SPEC)
    store.update({u: v for u, (v, _) in first.state_writes.items()})
    again = process_batch(batch, lambda u, r: store.get(u), ranker, SPEC)
    assert again.redelivered == 2 and len(again.recommendations) == 2
    # written again unchanged, so a changelog that lost the first write catches up
    assert {u: v for u, (v, _) in again.state_writes.items()} == store


def test_wrong_key_is_rekeyed_not_answered(ranker: CooccurrenceRanker) -> None:
    batch = records([event(1), event(2)], keys=[None, b"someone-else"])
    result = process_batch(batch, lambda u, r: None, ranker, SPEC)
    assert result.rekeyed == [(b"u1", event(1)), (b"u1", event(2))]
    assert not result.recommendations and not result.state_writes


class Exploding(CooccurrenceRanker):
    def rank_batch(self, requests):
        if any(r.user_id == "bad" for r in requests):
            raise RuntimeError("boom")
        return super().rank_batch(requests)


def test_stage_times_say_where_the_batch_went(ranker: CooccurrenceRanker) -> None:
    """Each stage gets its own time: a slow state store shows in ``state``, a slow model
    in ``model``, and the stages add up to the batch."""

    class SlowModel(CooccurrenceRanker):
        def candidates(self, requests):
            time.sleep(0.05)
            return super().candidates(requests)

    slow = SlowModel(ranker.model, top_k=30)
    joined = GraphRanker(slow, GraphJoin(GraphIndex(), JoinSettings(top_k=5), known_items(slow)))

    def slow_store(user: str, rec: Record) -> bytes | None:
        time.sleep(0.02)  # once per user and batch
        return None

    batch = records([event(n, user=f"u{n % 3}") for n in range(60)] + [b"not json"])
    started = time.perf_counter()
    result = process_batch(batch, slow_store, joined, SPEC)
    wall = time.perf_counter() - started
    st = result.stages
    assert set(st) == {"decode", "state", "model", "graph", "encode"}
    assert st["state"] >= 0.06 and st["model"] >= 0.05
    assert max(st["decode"], st["graph"], st["encode"]) < 0.05
    assert 0.95 * wall <= sum(st.values()) <= wall
    # A ranker that does not split its time counts it all as the model's.
    assert set(process_batch(records([event(1)]), lambda u, r: None, ranker, SPEC).stages) == {
        "decode", "state", "model", "encode",
    }  # fmt: skip


def test_the_join_counts_as_graph_though_it_runs_as_answers_are_encoded(
    ranker: CooccurrenceRanker,
) -> None:
    """GraphRanker joins each request as its answer is read, between encodings: that
    time is ``graph``'s, not ``encode``'s, and each answer's ``batch_ms`` is the time
    from the batch's start until it was made."""

    class SlowJoin(GraphJoin):
        def join(self, *args, **kwargs):
            time.sleep(0.002)
            return super().join(*args, **kwargs)

    joined = GraphRanker(ranker, SlowJoin(GraphIndex(), JoinSettings(top_k=5), known_items(ranker)))
    result = process_batch(
        records([event(n, user=f"u{n % 7}") for n in range(40)]), lambda u, r: None, joined, SPEC
    )
    assert result.stages["graph"] >= 0.08 and result.stages["encode"] < 0.04
    made = [orjson.loads(v)["timings"]["batch_ms"] for _, v in result.recommendations]
    assert made == sorted(made) and made[-1] - made[0] >= 0.002 * 39 * 1000


def test_a_join_failure_part_way_costs_one_dead_letter(ranker: CooccurrenceRanker) -> None:
    """A join that fails for one request while the answers are read: the answers before
    it stand, it is dead-lettered, and the rest are ranked one by one."""

    class FailsForBad(GraphJoin):
        def join(self, state, candidates, explain=None):
            if state.items and state.items[-1] == "poison":
                raise ValueError("bad join")
            return super().join(state, candidates, explain)

    join = FailsForBad(GraphIndex(), JoinSettings(top_k=3), known_items(ranker))
    values = [event(1), event(2, user="u2", item="poison"), event(3, user="u3"), event(4)]
    result = process_batch(records(values), lambda u, r: None, GraphRanker(ranker, join), SPEC)
    assert [orjson.loads(v)["event_id"] for _, v in result.recommendations] == ["e1", "e3", "e4"]
    (dead,) = [orjson.loads(v) for _, v in result.dead_letters]
    assert dead["error_code"] == "internal" and "bad join" in dead["error"]
    assert set(result.state_writes) == {"u1", "u2", "u3"}  # every event's state is kept


def test_a_ranking_failure_costs_one_dead_letter_not_the_batch(ranker: CooccurrenceRanker) -> None:
    boom = Exploding(ranker.model, top_k=3)
    batch = records([event(1), event(2, user="bad"), event(3)])
    result = process_batch(batch, lambda u, r: None, boom, SPEC)
    assert [orjson.loads(v)["event_id"] for _, v in result.recommendations] == ["e1", "e3"]
    (dead,) = [orjson.loads(v) for _, v in result.dead_letters]
    assert dead["error_code"] == "internal" and "boom" in dead["error"]
