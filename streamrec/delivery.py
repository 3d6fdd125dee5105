"""Batches on their way to Kafka: the agent sends the next batch while Kafka
acknowledges the last ones, and batches are finished strictly in order.

Profiled (``streamrec bench``, embedded broker): the agent waited ~50 ms a batch for
Kafka's acknowledgement before taking the next, so at moderate load each batch paid
linger + processing + that wait in series and events queued up behind it. Now a batch
is finished — its changelog offsets stored, its events acked for Faust's commit — by
:class:`Deliveries` once Kafka has all of it, while the agent already works on the
next (at most ``depth`` batches in flight).

Nothing is lost or reordered by this: a batch's offsets are acked only after every
message of it is delivered, and only after every earlier batch's; if a delivery fails,
every batch in flight is sent again in its original order (so the changelog's last
write for a user is still the newest state), with backoff, until Kafka has them or a
rebalance has taken their partitions away (then their next owner re-reads them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .pipeline import Consumed
from .sink import Messages, send_batches

log = logging.getLogger("streamrec.delivery")


@dataclass
class Outgoing:
    """One batch's output: kept until Kafka has it, to send again if it does not."""

    records: list[Consumed]
    topics: list[tuple[str, dict[int, Messages]]]  # topic -> partition -> messages
    info: Any = None  # what ``finish`` needs (the batch result, timings)
    sent: list[tuple[str, int, int, asyncio.Future]] = field(default_factory=list)
    sent_at: float = 0.0

    def sent_to(self, topic: str) -> list[tuple[int, int, asyncio.Future]]:
        """(partition, messages, delivery future) of each record batch sent to ``topic``."""
        return [(p, n, f) for t, p, n, f in self.sent if t == topic]


class Backoff:
    """The wait between attempts at a batch that failed: ``first_wait``, doubling, at
    most ``max_wait``. Every retry counts in ``streamrec_batch_retries_total``."""

    def __init__(self, first_wait: float = 0.5, max_wait: float = 30.0) -> None:
        self.first_wait, self.max_wait = first_wait, max_wait
        self.reset()

    def reset(self) -> None:
        self.failures, self.wait = 0, self.first_wait

    def failed(self) -> int:
        """Count a failure; returns how many in a row."""
        self.failures += 1
        return self.failures

    async def retry(self) -> None:
        """Wait before the next attempt (the retry is counted)."""
        metrics.BATCH_RETRIES.inc()
        await asyncio.sleep(self.wait)
        self.wait = min(self.max_wait, self.wait * 2)


class Deliveries:
    """Outgoing batches in send order; :meth:`run` finishes them as Kafka confirms.

    ``finish(out)`` runs once per delivered batch, in order; ``dropped(out)`` once per
    batch abandoned because ``owned(records)`` turned false (a rebalance)."""

    def __init__(
        self,
        producer: Callable[[], Any],
        depth: int,
        finish: Callable[[Outgoing], None],
        dropped: Callable[[Outgoing], None],
        owned: Callable[[Sequence[Consumed]], bool],
        first_wait: float = 0.5,
        max_wait: float = 30.0,
        stall_warning_s: float = 10.0,
    ) -> None:
        self.producer, self.depth = producer, max(1, depth)
        self.finish, self.dropped, self.owned = finish, dropped, owned
        self.backoff = Backoff(first_wait, max_wait)
        self.stall_warning_s = stall_warning_s
        self._flights: deque[Outgoing] = deque()
        self._changed = asyncio.Event()
        self._order = asyncio.Lock()  # a resend and a new send never interleave

    async def send(self, out: Outgoing) -> None:
        """Send a batch (waits while ``depth`` batches are in flight)."""
        while len(self._flights) >= self.depth:
            self._changed.clear()
            await self._changed.wait()
        async with self._order:
            await self._send(out)
            self._flights.append(out)
        self._changed.set()

    async def _send(self, out: Outgoing) -> None:
        producer = self.producer()
        out.sent, out.sent_at = [], time.perf_counter()
        for topic, grouped in out.topics:
            if grouped:
                sent = await send_batches(producer, topic, grouped)
                out.sent += [(topic, p, n, f) for p, n, f in sent]

    async def run(self) -> None:
        """Finish batches in order as their deliveries complete (a long-running task)."""
        backoff = self.backoff
        while True:
            while not self._flights:
                self._changed.clear()
                await self._changed.wait()
            out = self._flights[0]
            outcomes = await self._delivered(out)
            error = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if error is None:
                self._flights.popleft()
                self._changed.set()
                backoff.reset()
                self._finish(out)
                continue
            log.error(
                "delivery of a batch of %d events failed (attempt %d): %r; sending the "
                "%d batches in flight again in %.1fs",
                len(out.records), backoff.failed(), error, len(self._flights), backoff.wait,
            )  # fmt: skip
            await backoff.retry()
            await self._resend_or_drop()

    async def _delivered(self, out: Outgoing) -> list:
        """The outcome of each record batch of ``out``; says so while Kafka is slow."""
        outcomes = asyncio.gather(*(f for *_, f in out.sent), return_exceptions=True)
        started = time.monotonic()
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(outcomes), self.stall_warning_s)
            except TimeoutError:
                pending = sorted({(t, p) for t, p, _, f in out.sent if not f.done()})
                log.warning(
                    "a batch of %d events has waited %.0fs for Kafka to acknowledge %s",
                    len(out.records),
                    time.monotonic() - started,
                    ", ".join(f"{t}[{p}]" for t, p in pending),
                )

    async def _resend_or_drop(self) -> None:
        async with self._order:
            if not all(self.owned(o.records) for o in self._flights):
                # A rebalance took partitions away: Faust re-reads every partition from
                # its committed offset, which none of these batches moved.
                log.warning(
                    "partitions were reassigned; %d undelivered batches are left to be read again",
                    len(self._flights),
                )
                while self._flights:
                    self.dropped(self._flights.popleft())
                self._changed.set()
                return
            for o in self._flights:
                try:
                    await self._send(o)
                except Exception as exc:  # the next round retries (or drops) again
                    log.error("sending again failed: %r", exc)
                    return

    def _finish(self, out: Outgoing) -> None:
        try:
            self.finish(out)
        except Exception:  # a bug in book-keeping must not stop later deliveries
            log.exception("finishing a delivered batch failed")
