"""Session state: idempotent apply, bounded length, encoding, RocksDB files."""

from __future__ import annotations

from pathlib import Path

import orjson
from rocksdict import Options, Rdict

from streamrec.events import Event
from streamrec.state import SessionState, read_table_files


def ev(n: int, item: str | None = None, etype: str = "view") -> Event:
    return Event(f"e{n}", "u1", item or f"i{n}", etype, 1_700_000_000_000 + n, None, {})


def test_apply_appends_and_bounds_length() -> None:
    s = SessionState()
    for n in range(10):
        assert s.apply(ev(n), partition=0, offset=n, max_len=4)
    assert s.items == ["i6", "i7", "i8", "i9"]
    assert s.n_events == 10 and (s.partition, s.offset) == (0, 9)


def test_redelivered_event_is_not_applied_twice() -> None:
    s = SessionState()
    s.apply(ev(1), 0, 5, 50)
    s.apply(ev(2), 0, 6, 50)
    before = s.to_bytes()
    assert not s.apply(ev(2), 0, 6, 50)  # same offset again (redelivery after a crash)
    assert not s.apply(ev(1), 0, 5, 50)  # older offset
    assert not s.apply(ev(2), 1, 99, 50)  # same event id from elsewhere (producer retry)
    assert s.to_bytes() == before
    assert s.apply(ev(3), 0, 7, 50)


def test_roundtrip() -> None:
    s = SessionState()
    s.apply(ev(1), 0, 1, 50)
    s.apply(Event("e2", "u1", None, "search", 1, None, {"query": "q"}), 0, 2, 50)
    back = SessionState.from_bytes(s.to_bytes())
    assert back == s
    assert back.items == ["i1"]
    assert SessionState.from_bytes(None) == SessionState()


def test_history_kept_in_step_with_the_window() -> None:
    """history() is kept up to date by apply (not rebuilt): it must always equal the
    window's item events, through searches, redeliveries, trimming and snapshots."""
    s = SessionState()
    snaps = []
    for n in range(40):
        if n % 3 == 1:
            s.apply(Event(f"e{n}", "u1", None, "search", n, None, {"query": "q"}), 0, n, 7)
        else:
            s.apply(ev(n, etype="purchase" if n % 5 == 0 else "view"), 0, n, 7)
        s.apply(ev(n - 1), 0, n - 1, 7)  # a redelivery changes nothing
        if n == 2:
            s = SessionState.from_bytes(s.to_bytes())  # reloaded: no history kept yet
        if n % 4 == 0:
            snaps.append((s.snapshot(), [(e[0], e[1]) for e in s.entries if e[0] is not None]))
        rebuilt = [(e[0], e[1]) for e in s.entries if e[0] is not None]
        assert s.history() == rebuilt and s.items == [i for i, _ in rebuilt]
    assert s.history()[-1] == ("i39", "view") and len(s.entries) == 7
    for snap, then in snaps:  # later applies did not change a snapshot's history
        assert snap.history() == then


def test_read_table_files_reads_faust_layout(tmp_path: Path) -> None:
    """Faust keeps <data_dir>/v1/tables/<table>-<partition>.db plus an offset key."""
    s = SessionState()
    s.apply(ev(1), 3, 1, 50)
    path = tmp_path / "v1" / "tables" / "sessions-3.db"
    path.parent.mkdir(parents=True)
    db = Rdict(str(path), Options(raw_mode=True))
    db[b"u1"] = s.to_bytes()
    db[b"__faust\x00offset__"] = b"12"
    db.close()
    assert read_table_files(tmp_path) == {"u1": s}


def test_states_stored_as_rows_still_load() -> None:
    """States written before the window was kept as columns ({"e": rows}) load as the
    same state, and are written back in the new form."""
    s = SessionState()
    s.apply(ev(1), 0, 1, 50)
    s.apply(Event("e2", "u1", None, "search", 2, None, {"query": "q"}), 0, 2, 50)
    s.apply(ev(3, etype="purchase"), 0, 3, 50)
    s.h, s.hv, s.hn = "AAAA", "gru-1", 3
    old = orjson.dumps(
        {"e": s.entries, "n": 3, "p": 0, "o": 3, "h": "AAAA", "hv": "gru-1", "hn": 3}
    )
    back = SessionState.from_bytes(old)
    assert back == s and back.history() == [("i1", "view"), ("i3", "purchase")]
    assert b'"e"' not in back.to_bytes() and SessionState.from_bytes(back.to_bytes()) == s
    assert not back.apply(ev(2), 1, 99, 50)  # its event ids came along


def test_entries_are_rows_and_a_copy() -> None:
    s = SessionState(entries=[["i1", "view", 5, "e1"], [None, "search", 6, "e2"]], n_events=2)
    assert s.entries == [["i1", "view", 5, "e1"], [None, "search", 6, "e2"]]
    s.entries.append(["i9", "view", 7, "e9"])  # a new list each time: the state is unchanged
    assert len(s.entries) == 2 and s.items == ["i1"]
