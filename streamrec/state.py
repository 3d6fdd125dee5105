"""Per-user session state: what it holds, how an event changes it, how it is stored.

State lives in a Faust table backed by RocksDB (rocksdict) and a compacted changelog
topic (see app.py); this module is the plain, Kafka-free part: a small value type with
an idempotent ``apply`` and a compact orjson encoding.

Idempotence matters because delivery is at-least-once: after a crash the worker
re-reads events past the last committed offset whose effects are already in the
changelog. Each state remembers the (partition, offset) of the last event applied and
the event ids in its window, so a re-delivered event is answered again but never
applied twice; the state after a crash equals the state of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import orjson

from .events import Event

_EVENT_ID = itemgetter(3)

# One entry per event, most recent last: [item_id | None, event_type, timestamp, event_id]
Entry = list


@dataclass(slots=True)
class SessionState:
    entries: list[Entry] = field(default_factory=list)
    n_events: int = 0
    partition: int = -1
    offset: int = -1
    # The sequential model's state for this user: its hidden vector (base64 float32),
    # the model version that computed it and after how many events (see ranking.py).
    h: str | None = None
    hv: str | None = None
    hn: int = 0
    # history(), kept in step by apply(): the ranker and the join each read it per
    # event, and rebuilding it from the entries each time was ~7 % of the worker's GIL
    # time (py-spy). Not stored; built on first use after loading.
    _history: list[tuple[str, str]] | None = field(default=None, repr=False, compare=False)

    @property
    def items(self) -> list[str]:
        """Item ids in the window, oldest first (searches excluded)."""
        return [item for item, _ in self.history()]

    def history(self) -> list[tuple[str, str]]:
        """(item id, event type) of the window's item events, oldest first. Shared:
        treat as read-only."""
        if self._history is None:
            self._history = [(e[0], e[1]) for e in self.entries if e[0] is not None]
        return self._history

    def already_applied(self, event: Event, partition: int, offset: int) -> bool:
        if partition == self.partition and offset <= self.offset:
            return True
        # `in` over a map runs in C: a generator here was ~4 % of the batch (line_profiler)
        return event.event_id in map(_EVENT_ID, self.entries)

    def apply(self, event: Event, partition: int, offset: int, max_len: int) -> bool:
        """Add ``event`` unless it was applied before; returns whether it changed state."""
        if self.already_applied(event, partition, offset):
            return False
        self.entries.append([event.item_id, event.event_type, event.timestamp, event.event_id])
        history = self._history
        if history is not None and event.item_id is not None:
            history.append((event.item_id, event.event_type))
        excess = len(self.entries) - max_len
        if excess > 0:
            if history is not None:
                del history[: sum(1 for e in self.entries[:excess] if e[0] is not None)]
            del self.entries[:excess]
        self.n_events += 1
        self.partition = partition
        self.offset = offset
        return True

    def to_bytes(self) -> bytes:
        doc = {"e": self.entries, "n": self.n_events, "p": self.partition, "o": self.offset}
        if self.h is not None:
            doc.update(h=self.h, hv=self.hv, hn=self.hn)
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> SessionState:
        if not data:
            return cls()
        doc = orjson.loads(data)
        return cls(
            entries=doc["e"],
            n_events=doc["n"],
            partition=doc["p"],
            offset=doc["o"],
            h=doc.get("h"),
            hv=doc.get("hv"),
            hn=doc.get("hn", 0),
        )

    def snapshot(self) -> SessionState:
        """A copy that later ``apply`` calls do not change."""
        return SessionState(
            list(self.entries),
            self.n_events,
            self.partition,
            self.offset,
            self.h,
            self.hv,
            self.hn,
            list(self.history()),
        )

    def content(self) -> dict:
        """What a user's state means, without delivery bookkeeping (for comparisons)."""
        return {"entries": self.entries, "n_events": self.n_events}


def read_table_files(data_dir: str | Path, table: str = "sessions") -> dict[str, SessionState]:
    """Every user's state from a stopped worker's RocksDB files (read-only).

    Faust keeps one RocksDB per table partition at ``<data_dir>/v1/tables/<table>-<p>.db``
    next to the changelog offset it has applied (key ``__faust\\0offset__``), which is
    skipped here.
    """
    from rocksdict import AccessType, Options, Rdict

    states: dict[str, SessionState] = {}
    paths = sorted(Path(data_dir).glob(f"v*/tables/{table}-*.db"))
    for path in paths:
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if key.startswith(b"__faust"):
                    continue
                states[key.decode()] = SessionState.from_bytes(value)
        finally:
            db.close()
    return states
