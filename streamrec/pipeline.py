"""One batch of raw Kafka records -> state writes, recommendations and dead letters.

This is the whole per-batch logic of the worker with no Kafka and no Faust in it, so it
is tested directly. The Faust agent (app.py) only feeds it records and ships its output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .events import Event, Rejected, decode_event, encode_dead_letter, encode_recommendation
from .ranking import Ranker, RankRequest
from .state import SessionState
from .topology import WorkerSpec

log = logging.getLogger(__name__)


class Consumed(Protocol):
    """What the worker reads of a consumed Kafka message. The worker's intake hands
    over aiokafka's ``ConsumerRecord``s as fetched (intake.py); :class:`Record` is the
    same shape for everything else (tests, benchmarks, the catalog reader)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...  # ms, the message's Kafka timestamp


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed Kafka message (see :class:`Consumed`)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: int | None = None  # ms, the message's Kafka timestamp


@dataclass
class BatchResult:
    recommendations: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    # Valid events whose key is not their user_id: re-published keyed by user_id so each
    # user's events and state live in one partition; they are answered when they return.
    rekeyed: list[tuple[bytes, bytes]] = field(default_factory=list)
    # user_id -> (encoded state, the record that last changed it); one write per user.
    state_writes: dict[str, tuple[bytes, Consumed]] = field(default_factory=dict)
    valid: int = 0
    invalid: int = 0
    redelivered: int = 0
    # Seconds this batch spent per stage: decode (+ validate), state (read, apply, encode
    # the session states), model, graph (the join), encode (the recommendations).
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return len(self.recommendations)


def dead_letter_for(rec: Consumed, err: Rejected, max_payload: int = 65536) -> bytes:
    """The dead-letter message for a record that cannot be used."""
    return encode_dead_letter(
        error=err,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        max_payload=max_payload,
    )


def _dead_letter(result: BatchResult, rec: Consumed, err: Rejected, spec: WorkerSpec) -> None:
    result.invalid += 1
    result.dead_letters.append((rec.key, dead_letter_for(rec, err, spec.max_event_bytes)))


def process_batch(
    records: Sequence[Consumed],
    load_state: Callable[[str, Consumed], bytes | None],
    ranker: Ranker,
    spec: WorkerSpec,
    now_ms: int | None = None,
) -> BatchResult:
    """Decode, validate, update state, rank once, encode. Never raises for bad input."""
    clock = time.perf_counter
    started = clock()
    result = BatchResult()
    states: dict[str, SessionState] = {}
    answered: list[tuple[Consumed, Event]] = []
    requests: list[RankRequest] = []
    live: dict[str, int] = {}  # user -> their request that holds the live state
    decode_s = 0.0  # the rest of this loop is state work
    for rec in records:
        t = clock()
        try:
            event = decode_event(
                rec.value,
                max_bytes=spec.max_event_bytes,
                max_future_skew_ms=spec.max_future_skew_ms,
                now_ms=now_ms,
            )
        except Rejected as err:
            _dead_letter(result, rec, err, spec)
            continue
        finally:
            decode_s += clock() - t
        user_key = event.user_id.encode()
        if rec.key != user_key:
            result.rekeyed.append((user_key, rec.value))  # type: ignore[arg-type]
            continue
        result.valid += 1
        state = states.get(event.user_id)
        if state is None:
            state = states[event.user_id] = SessionState.from_bytes(load_state(event.user_id, rec))
        else:
            # Rank each event on the state as of that event: the user's previous request
            # in this batch holds the live state, so it gets a copy before this event
            # changes it. Most users have one event in a batch, and a copy for every
            # event cost ~0.7 µs (timeit).
            earlier = live.get(event.user_id)
            if earlier is not None:
                requests[earlier] = RankRequest(event.user_id, state.snapshot())
        if not state.apply(event, rec.partition, rec.offset, spec.session_length):
            result.redelivered += 1
        # A redelivered event changes nothing, but its state is written again: after a
        # crash, local RocksDB may hold a write whose changelog message was lost with the
        # producer's buffer, and the changelog must catch up (found by the SIGKILL test).
        result.state_writes[event.user_id] = (b"", rec)
        live[event.user_id] = len(requests)
        requests.append(RankRequest(event.user_id, state))
        answered.append((rec, event))

    ranking_started = clock()
    ranked, model_states, rank_stages, read_stage = _rank_isolating_failures(ranker, requests)
    ranked_at = clock()
    # The ranker's own split (model, graph) where it gives one, else all of it is model.
    rank_stages = rank_stages or {"model": ranked_at - ranking_started}
    last_rec = {event.user_id: rec for rec, event in answered}
    for user, (h, hv, hn) in model_states.items():
        state = states[user]
        state.h, state.hv, state.hn = h, hv, hn
        result.state_writes.setdefault(user, (b"", last_rec[user]))
    for user, (_, rec) in result.state_writes.items():
        result.state_writes[user] = (states[user].to_bytes(), rec)
    encode_started = clock()
    # Each answer is encoded as soon as the ranker has made it (see RankResult.items);
    # the loop's time outside encoding is reading the answers: the ranker's
    # ``read_stage``.
    encode_s = 0.0
    n_records = len(records)
    version = ranker.version
    for (rec, event), items in zip(answered, ranked, strict=True):
        made = clock()
        if isinstance(items, Rejected):
            _dead_letter(result, rec, items, spec)
        else:
            result.recommendations.append(
                (
                    event.user_id.encode(),
                    encode_recommendation(
                        user_id=event.user_id,
                        event_id=event.event_id,
                        items=items,
                        model_version=version,
                        source_ts=rec.timestamp,
                        batch_size=n_records,
                        batch_ms=round((made - started) * 1000, 3),
                    ),
                )
            )
        encode_s += clock() - made
    read_s = clock() - encode_started - encode_s
    rank_stages[read_stage] = rank_stages.get(read_stage, 0.0) + read_s
    result.stages = {
        "decode": decode_s,
        "state": ranking_started - started - decode_s + encode_started - ranked_at,
        **rank_stages,
        "encode": encode_s,
    }
    return result


def _rank_isolating_failures(
    ranker: Ranker, requests: list[RankRequest]
) -> tuple[Iterator[list[dict] | Rejected], dict, dict[str, float], str]:
    """One ranking call for the batch; if it fails, or reading its answers fails part
    way, the requests left are ranked one by one, so a single poisonous request becomes
    one dead letter instead of losing the batch. Also returns the ranker's time per
    stage where it splits it (``RankResult.stages``) and the stage reading counts as."""
    try:
        result = ranker.rank_batch(requests)
    except Exception:
        log.exception("ranking failed for a batch of %d; retrying one by one", len(requests))
        # One by one, a request no longer sees its user's earlier events of this batch
        # through the model state, so no model state is stored from this path.
        return _one_by_one(ranker, requests), {}, {}, "model"
    answers = _read_isolating_failures(result.items, ranker, requests)
    return answers, result.model_states, result.stages, result.read_stage


def _read_isolating_failures(
    items: Iterable[list[dict]], ranker: Ranker, requests: list[RankRequest]
) -> Iterator[list[dict] | Rejected]:
    """``items`` as read; if reading fails at a request, that one and the rest one by one
    (a generator that raised cannot go on). The model states of the batch call stay:
    what failed came after the model."""
    done = 0
    try:
        for found in items:
            yield found
            done += 1
    except Exception:
        log.exception(
            "ranking failed at request %d of %d; the rest one by one", done + 1, len(requests)
        )
        yield from _one_by_one(ranker, requests[done:])


def _one_by_one(ranker: Ranker, requests: list[RankRequest]) -> Iterator[list[dict] | Rejected]:
    for req in requests:
        try:
            (found,) = ranker.rank_batch([req]).items
        except Exception as exc:
            found = Rejected("internal", f"ranking failed: {type(exc).__name__}: {exc}")
        yield found
