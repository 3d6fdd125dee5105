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

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .events import Event

# One entry per event, most recent last: [item_id | None, event_type, timestamp, event_id]
Entry = list


class SessionState:
    """A user's window of recent events, kept as columns (item ids, event types,
    timestamps, event ids; oldest first, ``None`` for a search's item) plus delivery
    bookkeeping and the sequential model's cached state.

    Columns, not one ``[item, type, ts, id]`` list per event: the worker decodes,
    updates and encodes a state for every event. With a full 50-event window decoding
    took 9.1 µs as rows and 6.5 as columns, the event-id check 1.9 and 0.6 (one C-level
    list scan; timeit); ``pipeline_cost.py --users 500`` 0.94-0.95 (HISTORY.md, session
    18). ``entries`` gives the rows for readers that want them; states stored as rows
    by earlier versions still load.
    """

    __slots__ = (
        "_history",
        "entry_ids",
        "entry_items",
        "entry_times",
        "entry_types",
        "h",
        "hn",
        "hv",
        "n_events",
        "offset",
        "partition",
    )

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        n_events: int = 0,
        partition: int = -1,
        offset: int = -1,
        h: str | None = None,
        hv: str | None = None,
        hn: int = 0,
    ) -> None:
        rows = list(entries)
        self._fill(
            [e[0] for e in rows],
            [e[1] for e in rows],
            [e[2] for e in rows],
            [e[3] for e in rows],
            n_events,
            partition,
            offset,
            h,
            hv,
            hn,
        )

    @classmethod
    def _of_columns(cls, *fields: Any) -> SessionState:
        """A state from its columns and fields as :meth:`_fill` takes them (no rows)."""
        self = cls.__new__(cls)
        self._fill(*fields)
        return self

    def _fill(
        self,
        items: list[str | None],
        types: list[str],
        times: list[int],
        ids: list[str],
        n_events: int,
        partition: int,
        offset: int,
        h: str | None,
        hv: str | None,
        hn: int,
        history: list[tuple[str, str]] | None = None,
    ) -> None:
        self.entry_items, self.entry_types, self.entry_times, self.entry_ids = (
            items,
            types,
            times,
            ids,
        )
        self.n_events, self.partition, self.offset = n_events, partition, offset
        # The sequential model's state for this user: its hidden vector (base64
        # float32), the model version that computed it and after how many events.
        self.h, self.hv, self.hn = h, hv, hn
        # history(), kept in step by apply(): the ranker and the join each read it per
        # event, and rebuilding it each time was ~7 % of the worker's GIL time (py-spy).
        # Not stored; built on first use after loading.
        self._history = history

    def _key(self) -> tuple:
        """Every field but the derived history: the four columns first."""
        return (
            self.entry_items,
            self.entry_types,
            self.entry_times,
            self.entry_ids,
            self.n_events,
            self.partition,
            self.offset,
            self.h,
            self.hv,
            self.hn,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionState):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"SessionState(entries={self.entries!r}, n_events={self.n_events}, "
            f"partition={self.partition}, offset={self.offset}, h={self.h!r}, "
            f"hv={self.hv!r}, hn={self.hn})"
        )

    @property
    def entries(self) -> list[Entry]:
        """The window as ``[item_id | None, event_type, timestamp, event_id]`` rows, oldest
        first (a new list: changing it does not change the state)."""
        return [
            list(row)
            for row in zip(
                self.entry_items, self.entry_types, self.entry_times, self.entry_ids, strict=True
            )
        ]

    @property
    def items(self) -> list[str]:
        """Item ids in the window, oldest first (searches excluded)."""
        return [item for item, _ in self.history()]

    def history(self) -> list[tuple[str, str]]:
        """(item id, event type) of the window's item events, oldest first. Shared:
        treat as read-only."""
        if self._history is None:
            self._history = [
                (i, t)
                for i, t in zip(self.entry_items, self.entry_types, strict=True)
                if i is not None
            ]
        return self._history

    def already_applied(self, event: Event, partition: int, offset: int) -> bool:
        if partition == self.partition and offset <= self.offset:
            return True
        return event.event_id in self.entry_ids  # one C-level scan

    def apply(self, event: Event, partition: int, offset: int, max_len: int) -> bool:
        """Add ``event`` unless it was applied before; returns whether it changed state."""
        if self.already_applied(event, partition, offset):
            return False
        items = self.entry_items
        items.append(event.item_id)
        self.entry_types.append(event.event_type)
        self.entry_times.append(event.timestamp)
        self.entry_ids.append(event.event_id)
        history = self._history
        if history is not None and event.item_id is not None:
            history.append((event.item_id, event.event_type))
        excess = len(items) - max_len
        if excess > 0:
            if history is not None:
                del history[: sum(1 for i in items[:excess] if i is not None)]
            del items[:excess]
            del self.entry_types[:excess]
            del self.entry_times[:excess]
            del self.entry_ids[:excess]
        self.n_events += 1
        self.partition = partition
        self.offset = offset
        return True

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "i": self.entry_items,
            "y": self.entry_types,
            "t": self.entry_times,
            "d": self.entry_ids,
            "n": self.n_events,
            "p": self.partition,
            "o": self.offset,
        }
        if self.h is not None:
            doc.update(h=self.h, hv=self.hv, hn=self.hn)
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> SessionState:
        if not data:
            return cls()
        doc = orjson.loads(data)
        rows = doc.get("e")
        if rows is not None:  # stored as rows (before 2026-12-03): same meaning
            return cls(
                rows, doc["n"], doc["p"], doc["o"], doc.get("h"), doc.get("hv"), doc.get("hn", 0)
            )
        return cls._of_columns(
            doc["i"],
            doc["y"],
            doc["t"],
            doc["d"],
            doc["n"],
            doc["p"],
            doc["o"],
            doc.get("h"),
            doc.get("hv"),
            doc.get("hn", 0),
        )

    def snapshot(self) -> SessionState:
        """A copy that later ``apply`` calls do not change."""
        items, types, times, ids, *scalars = self._key()
        return SessionState._of_columns(
            list(items), list(types), list(times), list(ids), *scalars, list(self.history())
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
