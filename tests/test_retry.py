"""A batch that fails is retried until it is done: Faust acks a batch's events when the
agent asks for the next one, even after an exception, so moving on would lose them."""

from __future__ import annotations

import asyncio

import pytest

from streamrec import metrics
from streamrec.app import retry_until_done
from streamrec.pipeline import Record

RECORDS = [Record(key=b"u1", value=b"{}", topic="events", partition=2, offset=41)]


def test_a_failing_batch_is_retried_until_it_succeeds() -> None:
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        if len(calls) < 4:
            raise RuntimeError("KafkaTimeoutError: delivery timed out")

    before = metrics.BATCH_RETRIES._value.get()
    done = asyncio.run(retry_until_done(attempt, RECORDS, first_wait=0.001))
    assert done and len(calls) == 4
    assert metrics.BATCH_RETRIES._value.get() - before == 3


def test_a_batch_whose_partitions_were_reassigned_is_left_to_their_next_owner() -> None:
    calls: list[int] = []
    owned = [True, True, False]  # a rebalance takes the partition after two failures

    async def attempt() -> None:
        calls.append(1)
        raise RuntimeError("NotLeaderForPartition")

    done = asyncio.run(
        retry_until_done(attempt, RECORDS, lambda records: owned.pop(0), first_wait=0.001)
    )
    assert not done and len(calls) == 3  # not acked: the next owner re-reads them


def test_cancellation_is_not_swallowed() -> None:
    async def attempt() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retry_until_done(attempt, RECORDS, first_wait=0.001))
