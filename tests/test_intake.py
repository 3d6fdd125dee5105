"""The batch intake (events from Faust's fetcher to the agent) and the in-order
delivery pipeline, without a broker: their rules are what keeps at-least-once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import pytest
from aiokafka.errors import IllegalStateError
from faust.types import TP
from intervaltree import IntervalTree

from streamrec import metrics
from streamrec.delivery import Deliveries, Outgoing
from streamrec.intake import BatchConsumer, Intake, crash_when_failed, patient
from streamrec.pipeline import Record


def recs(partition: int, *offsets: int, topic: str = "ev") -> list[Record]:
    return [Record(b"u", b"{}", topic, partition, o) for o in offsets]


# -- Intake ------------------------------------------------------------------------------
def test_failed_group_coordination_in_the_consumer_thread_stops_the_worker() -> None:
    """aiokafka's coordination task dies in Faust's consumer thread (its own loop);
    the app, on the main loop, must be crashed, and a normal close must not."""
    import threading

    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def consumer_thread() -> None:
            async def coordination(fail: bool) -> None:
                if fail:
                    raise ValueError("unpack requires a buffer of 2 bytes")

            async def run() -> None:
                for fail in (False, True):
                    task = asyncio.ensure_future(coordination(fail))
                    task.add_done_callback(crash_when_failed(crash, loop))
                    with contextlib.suppress(ValueError):
                        await task

            asyncio.run(run())

        thread = threading.Thread(target=consumer_thread)
        thread.start()
        await asyncio.to_thread(thread.join)
        for _ in range(100):
            if crashed:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [str(e) for e in crashed] == ["unpack requires a buffer of 2 bytes"]


def test_take_returns_a_full_batch_at_once_and_keeps_the_rest() -> None:
    async def run() -> tuple[list[int], int]:
        intake = Intake("ev", capacity=100)
        intake.put(recs(0, *range(7)))
        batch = await intake.take(5, within=10.0)  # full: no waiting for `within`
        return [r.offset for r in batch], len(intake)

    assert asyncio.run(run()) == ([0, 1, 2, 3, 4], 2)


def test_take_waits_for_the_first_record_then_at_most_within() -> None:
    async def run() -> tuple[list[int], float]:
        intake = Intake("ev", capacity=100)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, intake.put, recs(0, 1))
        loop.call_later(0.08, intake.put, recs(0, 2))
        start = loop.time()
        batch = await intake.take(500, within=0.1)
        return [r.offset for r in batch], loop.time() - start

    offsets, took = asyncio.run(run())
    assert offsets == [1, 2]
    assert 0.14 <= took < 0.5  # first record at 0.05 s, then the 0.1 s linger


def test_a_full_intake_holds_the_fetcher_back_until_the_agent_takes() -> None:
    async def run() -> list[str]:
        intake = Intake("ev", capacity=4)
        seen: list[str] = []
        intake.put(recs(0, *range(4)))

        async def fetcher() -> None:
            await intake.wait_room()
            seen.append("fetcher resumed")

        task = asyncio.create_task(fetcher())
        await asyncio.sleep(0.02)
        seen.append("agent takes")
        await intake.take(2, within=0)
        await task
        return seen

    assert asyncio.run(run()) == ["agent takes", "fetcher resumed"]


def test_a_rebalance_waits_for_batches_begun_and_clear_drops_the_buffer() -> None:
    async def run() -> tuple[bool, bool, bool, int, int]:
        intake = Intake("ev", capacity=100)
        intake.put(recs(0, 1, 2, 3))
        idle_before = await intake.wait_idle(0.01)  # taken is not begun
        await intake.take(1, within=0)
        intake.begin()
        intake.begin()  # two batches in flight (pipelined deliveries)
        intake.done()
        busy = await intake.wait_idle(0.01)
        intake.done()
        idle_after = await intake.wait_idle(0.01)
        dropped = intake.clear()
        return idle_before, busy, idle_after, dropped, len(intake)

    assert asyncio.run(run()) == (True, False, True, 2, 0)


def test_the_next_batch_is_cut_only_when_the_agent_is_free() -> None:
    """Natural batching: events fetched while the agent works go into one next batch
    (cut ahead of the agent, they were split into small batches queued behind it)."""

    async def run() -> tuple[list[int], list[int], bool]:
        intake = Intake("ev", capacity=100)
        intake.put(recs(0, 1))
        await intake.wait_for_agent()
        first = await intake.take(500, within=0)
        intake.handed()
        cutter = asyncio.create_task(intake.wait_for_agent())
        for offset in (2, 3, 4):  # fetched while the agent processes the first batch
            intake.put(recs(0, offset))
            await asyncio.sleep(0.01)
        waited = not cutter.done()
        intake.agent_free()
        await cutter
        second = await intake.take(500, within=0)
        return [r.offset for r in first], [r.offset for r in second], waited

    assert asyncio.run(run()) == ([1], [2, 3, 4], True)


def test_a_rebalance_clearing_the_handed_batch_frees_the_cutter() -> None:
    """Faust clears a batch still queued for the agent on a rebalance; the agent never
    finishes it, so clearing the intake must let the next batch be cut."""

    async def run() -> bool:
        intake = Intake("ev", capacity=100)
        intake.handed()
        cutter = asyncio.create_task(intake.wait_for_agent())
        await asyncio.sleep(0.01)
        blocked = not cutter.done()
        intake.clear()
        await asyncio.wait_for(cutter, 1.0)
        return blocked

    assert asyncio.run(run()) is True


# -- acking into Faust's commit book-keeping ----------------------------------------------
def bare_consumer(committed: dict[TP, int | None]) -> BatchConsumer:
    """Only the book-keeping attributes ``ack_records`` uses (Faust's Consumer.__init__)."""
    consumer = BatchConsumer.__new__(BatchConsumer)
    consumer._committed_offset = defaultdict(lambda: None, committed)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._n_acked = 0
    consumer._waiting_for_ack = None
    consumer._gap = defaultdict(IntervalTree)
    return consumer


def test_acked_records_are_what_faust_commits() -> None:
    consumer = bare_consumer({TP("ev", 0): 10})
    newly = consumer.ack_records(recs(0, 8, 9, 10, 11) + recs(1, 0, 1) + recs(0, 11))
    assert newly == 4  # 8, 9 are below the committed offset; 11 twice counts once
    assert consumer._acked[TP("ev", 0)] == [10, 11]
    assert consumer._acked[TP("ev", 1)] == [0, 1]
    assert consumer._n_acked == 4
    assert consumer._new_offset(TP("ev", 0)) == 12  # Faust's own commit arithmetic


class SeekingThread:
    """The consumer thread's seek, as the rewind uses it; ``revoked`` raise as aiokafka."""

    def __init__(self, revoked: set[TP] = frozenset()) -> None:
        self.seeks: list[tuple[TP, int]] = []
        self.revoked = revoked

    def seek(self, tp: TP, offset: int) -> None:
        if tp in self.revoked:
            raise IllegalStateError(f"No current assignment for partition {tp}")
        self.seeks.append((tp, offset))


def test_fetched_events_not_handed_over_are_read_again_from_the_first() -> None:
    """A fetch that found its partitions paused (recovery) moved past their events, and
    aiokafka's seek to committed offsets leaves a partition with no commit where it is:
    the consumer must seek back itself, or those events wait forever (the restart stall
    of test_sigkill_mid_replay_loses_nothing)."""
    consumer = bare_consumer({})
    consumer._read_offset = defaultdict(lambda: None)
    consumer._thread = SeekingThread(revoked={TP("ev", 1)})
    consumer._rewind(TP("ev", 0), recs(0, 0, 1, 2), "not active")
    consumer._rewind(TP("ev", 2), recs(2, 40, 41), "flow stopped")
    consumer._rewind(TP("ev", 1), recs(1, 7), "generation changed")  # revoked: no seek
    assert consumer._thread.seeks == [(TP("ev", 0), 0), (TP("ev", 2), 40)]
    assert consumer._read_offset[TP("ev", 2)] == 40
    assert consumer._read_offset[TP("ev", 0)] is None  # Faust's seek() says 0 so


# -- the patient fetch ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("records", "answer_s", "pauses"),
    [(False, 0.0, True), (True, 0.0, False), (False, 0.2, False)],
    ids=["empty-at-once", "records", "empty-after-a-real-wait"],
)
def test_only_an_empty_answer_at_once_pauses_the_next_fetch(
    records: bool, answer_s: float, pauses: bool
) -> None:
    async def fetch(*args: object) -> bool:
        await asyncio.sleep(answer_s)
        return records

    async def run() -> float:
        wrapped = patient(fetch, max_wait_s=1.5, pause_s=0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await wrapped("assignment", 1, "request") is records
        return loop.time() - start - answer_s

    extra = asyncio.run(run())
    assert (extra >= 0.09) is pauses


# -- deliveries ---------------------------------------------------------------------------
class _Batch(list):
    """aiokafka's BatchBuilder, as far as ``send_batches`` uses it."""

    def append(self, key=None, value=None, timestamp=None):
        super().append((key, value))
        return True  # never full


class FakeProducer:
    """Stands in for Faust's producer under ``send_batches``: records every record
    batch sent and hands out its delivery future."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[bytes]]] = []
        self.futures: list[asyncio.Future] = []

    def _ensure_producer(self) -> FakeProducer:
        return self

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: list, topic: str, partition: int) -> asyncio.Future:
        self.sent.append((topic, partition, [v for _, v in batch]))
        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


class Meta:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def ignore(out: Outgoing) -> None:
    pass


def owned(records: list[Record]) -> bool:
    return True


def outgoing(n: int) -> Outgoing:
    return Outgoing(recs(0, n), [("recs", {0: [(b"u", f"r{n}".encode())]})], info=n)


def test_batches_finish_in_send_order_whatever_order_kafka_confirms() -> None:
    async def run() -> list[int]:
        producer, finished = FakeProducer(), []
        d = Deliveries(lambda: producer, 4, lambda o: finished.append(o.info), ignore, owned)
        runner = asyncio.create_task(d.run())
        for n in range(3):
            await d.send(outgoing(n))
        producer.futures[2].set_result(Meta(2))
        producer.futures[1].set_result(Meta(1))
        await asyncio.sleep(0.01)
        assert finished == []  # batch 0 not confirmed yet: nothing may be acked
        producer.futures[0].set_result(Meta(0))
        await asyncio.sleep(0.01)
        runner.cancel()
        return finished

    assert asyncio.run(run()) == [0, 1, 2]


def test_at_most_depth_batches_are_in_flight() -> None:
    async def run() -> tuple[int, int]:
        producer = FakeProducer()
        d = Deliveries(lambda: producer, 2, lambda o: None, ignore, owned)
        runner = asyncio.create_task(d.run())
        await d.send(outgoing(0))
        await d.send(outgoing(1))
        third = asyncio.create_task(d.send(outgoing(2)))
        await asyncio.sleep(0.02)
        waiting = len(producer.sent)
        producer.futures[0].set_result(Meta(0))
        await third
        runner.cancel()
        return waiting, len(producer.sent)

    assert asyncio.run(run()) == (2, 3)


def test_a_failed_delivery_sends_every_batch_in_flight_again_in_order() -> None:
    async def run() -> tuple[list[str], list[int]]:
        producer, finished = FakeProducer(), []
        d = Deliveries(
            lambda: producer, 4, lambda o: finished.append(o.info), ignore, owned, first_wait=0.01
        )
        runner = asyncio.create_task(d.run())
        for n in range(3):
            await d.send(outgoing(n))
        producer.futures[1].set_result(Meta(1))
        producer.futures[0].set_exception(RuntimeError("KafkaTimeoutError"))
        await asyncio.sleep(0.1)
        for fut in producer.futures[3:]:
            fut.set_result(Meta(0))
        producer.futures[2].set_result(Meta(2))
        await asyncio.sleep(0.05)
        runner.cancel()
        return [v[0].decode() for _, _, v in producer.sent], finished

    before = metrics.BATCH_RETRIES._value.get()
    order, finished = asyncio.run(run())
    # batch 0 failed: 0, 1 and 2 go again, in order, so a user's newest state stays last
    assert order == ["r0", "r1", "r2", "r0", "r1", "r2"]
    assert finished == [0, 1, 2]
    assert metrics.BATCH_RETRIES._value.get() - before == 1


def test_batches_whose_partitions_were_reassigned_are_dropped_not_acked() -> None:
    async def run() -> tuple[list[int], list[int]]:
        producer, finished, dropped = FakeProducer(), [], []
        d = Deliveries(
            lambda: producer,
            4,
            lambda o: finished.append(o.info),
            lambda o: dropped.append(o.info),
            lambda records: False,  # a rebalance took the partition
            first_wait=0.01,
        )
        runner = asyncio.create_task(d.run())
        await d.send(outgoing(0))
        await d.send(outgoing(1))
        producer.futures[0].set_exception(RuntimeError("NotLeaderForPartition"))
        await asyncio.sleep(0.05)
        runner.cancel()
        return finished, dropped

    assert asyncio.run(run()) == ([], [0, 1])


def test_a_slow_acknowledgement_is_reported_and_still_awaited(caplog) -> None:
    async def run() -> list[int]:
        producer, finished = FakeProducer(), []
        d = Deliveries(
            lambda: producer, 4, lambda o: finished.append(o.info), ignore, owned,
            stall_warning_s=0.02,
        )  # fmt: skip
        runner = asyncio.create_task(d.run())
        await d.send(outgoing(7))
        await asyncio.sleep(0.07)
        producer.futures[0].set_result(Meta(7))
        await asyncio.sleep(0.01)
        runner.cancel()
        return finished

    with caplog.at_level("WARNING", logger="streamrec.delivery"):
        assert asyncio.run(run()) == [7]
    assert "waited" in caplog.text and "recs[0]" in caplog.text
