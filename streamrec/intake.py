"""Events go from Faust's fetcher to the agent in whole batches, not one message at a time.

Profiled (py-spy on the worker at its maximum rate, ``streamrec bench``): per message,
faust-streaming 0.15.3's fetch loop starts two tasks (``wait_first`` on the callback
and the flow switch), builds a ``Message``, the conductor takes a lock and decodes it
into an ``Event``, the stream queues it and runs the take buffer's processor — ~16 % of
the worker's event loop, for work a batch needs once. The worker reads the events topic
through :class:`BatchConsumer` instead: its fetch loop hands each fetched record batch of
that topic to an :class:`Intake` as it is (aiokafka's records, read as
:class:`~streamrec.pipeline.Consumed`); when the agent is free they are cut into a
batch (what came meanwhile, at most ``batch_size``, waiting ``linger_ms`` for more),
each batch is one event on a Faust channel that the agent consumes, and once a batch
is answered and delivered its offsets are acked into Faust's commit book-keeping in one
call.

Everything else stays Faust's: group membership and rebalancing, the sessions table
(RocksDB, changelog, recovery, standbys), offset commits, the producer. Records of other
topics (changelogs while recovering) go through Faust's own per-message path. On a
rebalance Faust stops the flow, clears what it buffered (the batches queued for the
agent with it) and waits until in-flight events are acked; the intake clears its buffer
and waits for the batches the agent has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from .pipeline import Consumed

log = logging.getLogger("streamrec.intake")


class Intake:
    """Fetched events waiting for the agent, with room for ``capacity`` of them.

    Lives on the worker's event loop: the fetch loop puts, the batcher takes."""

    def __init__(self, topic: str, capacity: int) -> None:
        self.topic = topic
        self.capacity = capacity
        self._buffer: list[Consumed] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()  # every batch begun is done()
        self._idle.set()
        self._working = 0
        self._agent_free = asyncio.Event()  # the agent is not processing a batch
        self._agent_free.set()

    def __len__(self) -> int:
        return len(self._buffer)

    def put(self, records: Sequence[Consumed]) -> None:
        if records:
            self._buffer.extend(records)
            self._arrived.set()
            if len(self._buffer) >= self.capacity:
                self._room.clear()

    async def wait_room(self) -> None:
        """Back-pressure: the fetch loop waits here while the buffer is full."""
        await self._room.wait()

    async def take(self, max_records: int, within: float) -> list[Consumed]:
        """Up to ``max_records``: waits for the first, then at most ``within`` seconds
        for the batch to fill (Faust's ``take(max_, within)``)."""
        while not self._buffer:
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._buffer) < max_records:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while len(self._buffer) < max_records:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
        batch = self._buffer[:max_records]
        del self._buffer[:max_records]
        if len(self._buffer) < self.capacity:
            self._room.set()
        return batch

    async def wait_for_agent(self) -> None:
        """Until the agent has finished processing the batch it was handed.

        The next batch is cut only then, from everything fetched meanwhile ("natural"
        batching): under load a batch holds what came while the last one was processed,
        and an idle agent gets the next events at once. Cutting batches ahead of the
        agent (two waited in its channel) made them small under load — a fixed cost
        each — and left events behind them in the queue."""
        await self._agent_free.wait()

    def handed(self) -> None:
        """A batch went to the agent: the next is cut once it calls :meth:`agent_free`."""
        self._agent_free.clear()

    def agent_free(self) -> None:
        self._agent_free.set()

    def begin(self) -> None:
        """The agent started on a batch: a rebalance waits until it is :meth:`done`.
        (Batches still queued for the agent are cleared by the rebalance with Faust's
        stream buffers and read again from the committed offsets.)"""
        self._working += 1
        self._idle.clear()

    def done(self) -> None:
        """A batch begun is finished: acked, or left to be read again."""
        self._working = max(0, self._working - 1)
        if not self._working:
            self._idle.set()

    def clear(self) -> int:
        """Drop what is buffered (a rebalance re-reads from the committed offsets)."""
        dropped = len(self._buffer)
        self._buffer.clear()
        self._room.set()
        self._agent_free.set()  # a batch handed over may be cleared with Faust's buffers
        return dropped

    async def wait_idle(self, timeout: float) -> bool:
        """Wait for the batches in flight to finish; False when ``timeout`` ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


#: The pause after an empty fetch that a broker answered at once (see PatientFetchThread).
EMPTY_FETCH_PAUSE_S = 0.005


class PatientFetchThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, pausing briefly after an empty fetch answered at once.

    Kafka holds a fetch that finds no data for ``fetch.max.wait.ms`` (Faust asks for
    1.5 s) and answers as soon as data arrives. noida-db, the embedded broker, answers
    at once, so aiokafka's fetch loop spins: an idle worker used 86-95 % of a core
    (measured on the 2-core dev machine), CPU the broker and the agent then lack. After
    an empty answer that came back in under a tenth of the wait, the next fetch waits
    ``EMPTY_FETCH_PAUSE_S``: at most that much added latency, and against a broker that
    honours the wait it never triggers. It also stops the worker if aiokafka's group
    coordination fails (:func:`crash_when_failed`)."""

    async def on_start(self) -> None:
        await super().on_start()
        fetcher = self._consumer._fetcher
        fetcher._proc_fetch_request = patient(
            fetcher._proc_fetch_request, fetcher._fetch_max_wait_ms / 1000
        )
        coordinator = getattr(self._consumer, "_coordinator", None)
        task = getattr(coordinator, "_coordination_task", None)
        if task is not None:
            task.add_done_callback(crash_when_failed(self.app.crash, self.app.loop))


def crash_when_failed(crash: Callable[[BaseException], Any], loop: asyncio.AbstractEventLoop):
    """A done-callback for aiokafka's group coordination task: if it failed, stop the
    worker (``crash`` run on the app's ``loop``; the task ends in the consumer thread).

    aiokafka logs the failure and ends the task, but Faust's fetch path never looks at
    it: the worker stayed up, a group member that never rejoins, and every other member
    of the group waited for it (four workers on the H100: noida-db sent one of them an
    empty assignment, aiokafka could not decode it). Stopped, it is restarted, and
    until then the broker drops it from the group after the session timeout."""

    def on_done(task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is None:
            return  # closed with the consumer
        exc = task.exception()
        log.critical("Kafka group coordination stopped: %r; stopping the worker", exc)
        asyncio.run_coroutine_threadsafe(crash(exc), loop)

    return on_done


def patient(fetch: Callable[..., Any], max_wait_s: float, pause_s: float = EMPTY_FETCH_PAUSE_S):
    """Wrap aiokafka's per-request fetch coroutine (it returns whether records came):
    after an empty answer in under a tenth of ``max_wait_s``, wait ``pause_s``."""
    honest = max_wait_s / 10

    async def patient_fetch(*args: Any) -> bool:
        started = time.monotonic()
        got_records = await fetch(*args)
        if not got_records and time.monotonic() - started < honest:
            # Cancelled: closing or unassigned; aiokafka's own fetch returns quietly too.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(pause_s)
        return got_records

    return patient_fetch


class BatchConsumer(AIOKafkaConsumer):
    """faust-streaming's aiokafka consumer with a batch path for one topic.

    Install before the app creates its consumer: ``app.transport.Consumer =
    BatchConsumer``, then set :attr:`intake`. Without an intake it is Faust's consumer,
    except that jumps in fetched offsets are never counted as done (offsets.py)."""

    intake: Intake | None = None
    #: How long a rebalance waits for the batch in flight (Faust waits for acks too).
    rebalance_wait_s: float = 5.0

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return PatientFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust files a jump in fetched offsets as offsets that do not exist, which its
        commit counts as done (see offsets.py). Events topics here are neither compacted
        nor transactional, so a jump is events not yet delivered: log it and leave the
        offsets to the agent (which re-reads them, or confirms them absent)."""
        log.info(
            "%s[%d]: fetched offsets jumped over %d..%d; not counting them as done",
            tp.topic,
            tp.partition,
            offset_from,
            offset_to - 1,
        )

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - on a broker
        """Faust's fetch loop, with the intake's topic handed over a fetch at a time."""
        intake = self.intake
        if intake is None:
            return await super()._drain_messages(fetcher)
        consumer_stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                generation = self.app.consumer_generation_id
                fetched, active = await self._wait_next_records(1.0)
                if not fetched or self.should_stop:
                    await self.sleep(0)
                    continue
                if not self.flow_active:  # fetched across a rebalance: Faust seeks back
                    for tp, records in fetched.items():
                        if records and tp.topic == intake.topic:
                            self._rewind(TP(tp.topic, tp.partition), records, "flow stopped")
                    await self.perform_seek()
                    continue
                events: list[Consumed] = []
                handed: list[tuple[TP, Sequence[Any]]] = []  # the intake's, per partition
                for tp, records in fetched.items():
                    if not records:
                        continue
                    if not (active is None or tp in active or tp in self._buffered_partitions):
                        # Paused meanwhile (as Faust's getmany skips it).
                        if tp.topic == intake.topic:
                            self._rewind(TP(tp.topic, tp.partition), records, "not active")
                        continue
                    if tp.topic == intake.topic:
                        # aiokafka's records as they are: copying each into a
                        # (frozen) Record cost ~1.4 µs an event (timeit).
                        events.extend(records)
                        self._read_offset[TP(tp.topic, tp.partition)] = records[-1].offset
                        handed.append((TP(tp.topic, tp.partition), records))
                    else:
                        await self._deliver_one_by_one(TP(tp.topic, tp.partition), records)
                if self.flow_active and self.app.consumer_generation_id == generation:
                    intake.put(events)
                elif events:  # a rebalance began meanwhile
                    why = "flow stopped" if not self.flow_active else "generation changed"
                    for tp, records in handed:
                        self._rewind(tp, records, why)
                await self._maybe_commit()
                await intake.wait_room()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise

    def _rewind(self, tp: TP, records: Sequence[Any], why: str) -> None:
        """Fetched events not handed to the agent: read them again from the first.

        Faust's seek to the committed offsets (after recovery or a rebalance) leaves a
        partition with no commit yet where the fetch left it, past these events
        (aiokafka's seek_to_committed moves only those committed above 0): a
        restarted worker whose first fetch came while its partitions were paused never
        read them (test_sigkill_mid_replay_loses_nothing failed so, now and then).
        Where Faust seeks afterwards, its committed offset wins."""
        first = records[0].offset
        try:
            self._thread.seek(tp, first)
        except Exception as exc:  # revoked meanwhile: its next owner reads it
            log.info("%s[%d]: not rewound (%r)", tp.topic, tp.partition, exc)
            return
        self._read_offset[tp] = first if first else None  # as Faust's seek()
        log.info(
            "%s[%d]: %d fetched events not delivered (%s); reading again from %d (to %d)",
            tp.topic,
            tp.partition,
            len(records),
            why,
            first,
            records[-1].offset,
        )

    async def _deliver_one_by_one(self, tp: TP, records: Sequence[Any]) -> None:
        """Faust's own path for any other topic (changelogs while recovering)."""
        for record in records:
            if not self.flow_active:
                return
            read = self._read_offset[tp]
            if read is not None and record.offset < read:
                continue  # Faust drops what lies before its read offset
            if read is not None and record.offset - read > 1:
                await self._add_gap(tp, read + 1, record.offset)
            message = self._to_message(tp, record)
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = record.offset

    async def _maybe_commit(self) -> None:
        every = self._commit_every
        if every is not None and self._n_acked >= every:
            self._n_acked = 0
            await self.commit()

    def ack_records(self, records: Sequence[Consumed]) -> int:
        """Mark answered records done for Faust's next commit (``Consumer.ack`` for a
        batch: its rules, one lock). Returns how many were newly acked."""
        by_tp: dict[TP, list[int]] = {}
        for rec in records:
            by_tp.setdefault(TP(rec.topic, rec.partition), []).append(rec.offset)
        newly = 0
        with ack_lock:
            for tp, offsets in by_tp.items():
                committed = self._committed_offset[tp]
                index, acked = self._acked_index[tp], self._acked[tp]
                for offset in offsets:
                    if (committed is None or offset >= committed) and offset not in index:
                        index.add(offset)
                        acked.append(offset)
                        newly += 1
            self._n_acked += newly
            notify(self._waiting_for_ack)
        return newly

    def stop_flow(self) -> None:
        """A rebalance begins: like Faust's cleared stream buffers, drop the fetched
        events (every partition is re-read from its committed offset afterwards)."""
        super().stop_flow()
        if self.intake is not None:
            dropped = self.intake.clear()
            if dropped:
                log.info("rebalance: %d fetched events will be re-read", dropped)

    async def wait_empty(self) -> None:
        """A rebalance waits for events in flight to be acked: the intake's batches too."""
        intake = self.intake
        waiting = intake is not None and not self.should_stop
        if waiting and not await intake.wait_idle(self.rebalance_wait_s):
            log.warning(
                "rebalance: batches in flight did not finish in %.0fs; their events "
                "will be read again from the committed offsets",
                self.rebalance_wait_s,
            )
        await super().wait_empty()


def still_assigned(assignment: Callable[[], set]) -> Callable[[Sequence[Consumed]], bool]:
    """Whether every record's partition is still this worker's."""

    def check(records: Sequence[Consumed]) -> bool:
        owned = {(tp.topic, tp.partition) for tp in assignment()}
        return all((r.topic, r.partition) in owned for r in records)

    return check
