"""The offset guard: no event of a partition may skip the agent (see streamrec/offsets.py)."""

from __future__ import annotations

import pytest

from streamrec.offsets import Hole, OffsetGuard, first_offset_from
from streamrec.pipeline import Record


def recs(partition: int, *offsets: int) -> list[Record]:
    return [
        Record(key=b"u", value=b"{}", topic="ev", partition=partition, offset=o) for o in offsets
    ]


def test_in_order_records_pass_and_duplicates_are_kept() -> None:
    guard = OffsetGuard(lambda tp: 10)
    first = guard.admit(recs(0, 10, 11, 12))
    assert [r.offset for r in first.records] == [10, 11, 12] and not first.holes
    again = guard.admit(recs(0, 11, 12, 13))  # redelivered after a seek: harmless
    assert [r.offset for r in again.records] == [11, 12, 13] and not again.holes


def test_a_hole_holds_back_the_rest_of_that_partition_only() -> None:
    guard = OffsetGuard(lambda tp: {("ev", 0): 510, ("ev", 1): 40}[tp])
    batch = recs(0, 518, 519) + recs(1, 40, 41) + recs(0, 520)
    out = guard.admit(batch)
    assert out.holes == {("ev", 0): Hole(510, 518, repeated=False)}
    assert [(r.partition, r.offset) for r in out.records] == [(1, 40), (1, 41)]
    # After the seek the missing ones come, in order, then the held-back ones again.
    after = guard.admit(recs(0, *range(510, 521)))
    assert [r.offset for r in after.records] == list(range(510, 521)) and not after.holes


def test_a_hole_inside_an_assignment_is_found() -> None:
    guard = OffsetGuard(lambda tp: None)  # nothing committed yet: start where it starts
    assert not guard.admit(recs(0, 0, 1, 2)).holes
    out = guard.admit(recs(0, 5, 6))
    assert out.holes == {("ev", 0): Hole(3, 5, repeated=False)} and out.records == []


def test_a_hole_that_comes_back_is_flagged_and_skipped_only_when_told() -> None:
    guard = OffsetGuard(lambda tp: 0)
    assert guard.admit(recs(0, 3)).holes[("ev", 0)] == Hole(0, 3, repeated=False)
    again = guard.admit(recs(0, 3, 4))  # the same hole right after seeking back
    assert again.holes[("ev", 0)] == Hole(0, 3, repeated=True) and again.records == []
    guard.skip(("ev", 0), 3)  # the broker says 0..2 do not exist (compacted)
    out = guard.admit(recs(0, 3, 4))
    assert not out.holes and [r.offset for r in out.records] == [3, 4]


def test_a_revoked_partition_starts_again_from_its_committed_offset() -> None:
    committed = {("ev", 0): 100}
    guard = OffsetGuard(committed.get)
    guard.admit(recs(0, 100, 101))
    guard.revoked([("ev", 0)])
    committed[("ev", 0)] = 250  # another worker went on meanwhile
    out = guard.admit(recs(0, 250))
    assert not out.holes and [r.offset for r in out.records] == [250]


def test_the_faust_internals_the_worker_relies_on_are_there() -> None:
    """faust-streaming is pinned; an upgrade that renames these must fail here first
    (offsets.py and intake.py reach into its consumer)."""
    import inspect

    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import Transport

    from streamrec.intake import BatchConsumer

    drain = inspect.getsource(Consumer._drain_messages)
    assert "self._add_gap(tp, r_offset + 1, offset)" in drain
    assert "getmany(timeout=1.0)" in drain and "commit_every" in drain
    init = inspect.getsource(Consumer.__init__)
    for name in ("_gap", "_committed_offset", "_acked", "_acked_index", "_read_offset"):
        assert f"self.{name} =" in init, name
    assert "self._read_offset[ensure_TP(partition)] = offset" in inspect.getsource(Consumer.seek)
    ack = inspect.getsource(Consumer.ack)
    assert "acked_for_tp.append(offset)" in ack and "self._n_acked += 1" in ack
    waiting = inspect.getsource(Consumer._wait_next_records)
    assert "return records, active_partitions" in waiting
    assert "self.flow_active = False" in inspect.getsource(Consumer.stop_flow)
    assert "Consumer = Consumer" in inspect.getsource(Transport)
    for name in ("_wait_next_records", "perform_seek", "_to_message", "wait_empty"):
        assert hasattr(BatchConsumer, name), name
    # intake.PatientFetchThread: the fetcher it wraps and the coordination task it
    # watches exist once Faust's consumer thread has started aiokafka's consumer.
    from aiokafka.consumer.consumer import AIOKafkaConsumer
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "await self._consumer.start()" in inspect.getsource(AIOKafkaConsumerThread.on_start)
    assert "self._coordinator = GroupCoordinator(" in inspect.getsource(AIOKafkaConsumer.start)
    coordination = inspect.getsource(GroupCoordinator.__init__)
    assert "self._coordination_task = create_task(self._coordination_routine())" in coordination


def test_jumps_in_fetched_offsets_are_not_counted_as_done() -> None:
    import asyncio

    from faust.types import TP

    from streamrec.intake import BatchConsumer

    class Fake:  # what _add_gap touches: nothing (Faust's version fills self._gap)
        pass

    asyncio.run(BatchConsumer._add_gap(Fake(), TP("ev", 0), 573, 580))


@pytest.mark.broker
def test_the_direct_read_finds_the_first_record_from_an_offset(broker: str) -> None:
    from confluent_kafka import Producer

    from streamrec.broker import create_topics
    from streamrec.config import producer_config
    from streamrec.topology import TopicSpec

    create_topics([TopicSpec("offset-check", 1, {})], broker)
    producer = Producer(producer_config(broker))
    for n in range(5):
        producer.produce("offset-check", value=b"%d" % n, partition=0)
    assert producer.flush(10) == 0
    assert first_offset_from(broker, "offset-check", 0, 2) == 2
    assert first_offset_from(broker, "offset-check", 0, 0) == 0
    assert first_offset_from(broker, "offset-check", 0, 5) is None  # nothing there yet
