"""Event logs and catalogs: read/write JSONL(.gz), import real datasets, generate logs.

``import_dataset`` turns RecBole atomic files (``*.inter``/``*.item``/``*.kg``/``*.link``)
or the original MovieLens formats (``u.data``/``u.item``, ``ratings.dat``/``movies.dat``,
``ratings.csv``/``movies.csv``) into an events log ordered by time plus a catalog.
MovieLens may not be redistributed, so ``fetch_ml100k`` gets it at run time from the
``recbole`` wheel on PyPI without installing RecBole.
"""

from __future__ import annotations

import gzip
import io
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_IN_WHEEL = "recbole/dataset_example/ml-100k/"


# -- JSONL ---------------------------------------------------------------------------
def open_log(path: str | Path, mode: str = "rb") -> io.BufferedIOBase:
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode)  # type: ignore[return-value]
    return open(path, mode)


def iter_lines(path: str | Path) -> Iterator[bytes]:
    """Raw lines (newline stripped, blank lines skipped): replay sends bytes as recorded."""
    with open_log(path) as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    for line in iter_lines(path):
        yield orjson.loads(line)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open_log(path, "wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")
            n += 1
    return n


def count_lines(path: str | Path) -> int:
    return sum(1 for _ in iter_lines(path))


def training_events(path: str | Path) -> Iterator[tuple[str, str, str, int]]:
    """(user, item, type, ts) from a log, skipping lines that are not valid events: a
    recorded log may contain the same bad input the worker dead-letters."""
    from .events import Rejected, decode_event

    for line in iter_lines(path):
        try:
            e = decode_event(line, max_future_skew_ms=None)
        except Rejected:
            continue
        if e.item_id is not None:
            yield e.user_id, e.item_id, e.event_type, e.timestamp


# -- import --------------------------------------------------------------------------
@dataclass
class ImportSummary:
    source: str
    format: str
    events: int
    users: int
    items: int
    catalog_items: int
    kg_triples: int
    events_path: Path
    catalog_path: Path
    kg_path: Path | None


def _atomic_rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    """RecBole atomic file: a tab-separated header of ``name:type`` then rows."""
    f = path.open(encoding="utf-8", errors="replace")
    header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]

    def rows() -> Iterator[list[str]]:
        with f:
            for line in f:
                line = line.rstrip("\n")
                if line:
                    yield line.split("\t")

    return header, rows()


def _rating_event(user: str, item: str, rating: str, ts_seconds: str) -> dict[str, Any]:
    ts = int(float(ts_seconds) * 1000)
    return {
        "event_id": f"r-{user}-{item}-{ts}",
        "user_id": user,
        "item_id": item,
        "event_type": "rating",
        "timestamp": ts,
        "value": float(rating),
    }


_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


def _catalog_row(item: str, title: str, year: str | None, genres: list[str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if genres:
        attrs["genre"] = genres
    if year and year.isdigit():
        attrs["year"] = int(year)
    return {"item_id": item, "title": title.strip(), "available": True, "attributes": attrs}


def _load_recbole(src: Path) -> tuple[list, list, list, str]:
    inter = next(src.glob("*.inter"))
    header, rows = _atomic_rows(inter)
    col = {name: n for n, name in enumerate(header)}
    events = [
        _rating_event(
            r[col["user_id"]], r[col["item_id"]], r[col.get("rating", 2)], r[col["timestamp"]]
        )
        for r in rows
    ]
    catalog: dict[str, dict[str, Any]] = {}
    item_file = next(src.glob("*.item"), None)
    if item_file:
        header, rows = _atomic_rows(item_file)
        col = {name: n for n, name in enumerate(header)}
        for r in rows:
            get = lambda name, r=r: r[col[name]] if name in col and col[name] < len(r) else ""  # noqa: E731
            genres = get("class").split() or get("genre").split()
            catalog[get("item_id")] = _catalog_row(
                get("item_id"), get("movie_title") or get("title"), get("release_year"), genres
            )
    triples: list[dict[str, str]] = []
    link_file = next(src.glob("*.link"), None)
    if link_file:
        _, rows = _atomic_rows(link_file)
        for r in rows:
            if r[0] in catalog:
                catalog[r[0]]["entity_id"] = r[1]
    kg_file = next(src.glob("*.kg"), None)
    if kg_file:
        _, rows = _atomic_rows(kg_file)
        triples = [{"head": r[0], "relation": r[1], "tail": r[2]} for r in rows if len(r) >= 3]
    return events, list(catalog.values()), triples, "recbole-atomic"


def _load_ml100k(src: Path) -> tuple[list, list, list, str]:
    genres_names = []
    genre_file = src / "u.genre"
    if genre_file.exists():
        for line in genre_file.read_text(encoding="latin-1").splitlines():
            if "|" in line:
                genres_names.append(line.split("|")[0])
    events = []
    for line in (src / "u.data").read_text().splitlines():
        if line.strip():
            u, i, r, t = line.split("\t")
            events.append(_rating_event(u, i, r, t))
    catalog = []
    item_path = src / "u.item"
    if item_path.exists():
        for line in item_path.read_text(encoding="latin-1").splitlines():
            parts = line.split("|")
            if len(parts) < 5:
                continue
            flags = parts[5:]
            genres = [g for g, f in zip(genres_names, flags, strict=False) if f == "1"]
            m = _YEAR_RE.search(parts[1])
            year = m.group(1) if m else parts[2][-4:]
            title = _YEAR_RE.sub("", parts[1])
            catalog.append(_catalog_row(parts[0], title, year, genres))
    return events, catalog, [], "movielens-100k"


def _load_ml_dat(src: Path) -> tuple[list, list, list, str]:
    events = []
    with (src / "ratings.dat").open(encoding="latin-1") as f:
        for line in f:
            if line.strip():
                u, i, r, t = line.strip().split("::")
                events.append(_rating_event(u, i, r, t))
    catalog = []
    movies = src / "movies.dat"
    if movies.exists():
        for line in movies.read_text(encoding="latin-1").splitlines():
            item, title, genres = line.split("::")
            m = _YEAR_RE.search(title)
            catalog.append(
                _catalog_row(
                    item, _YEAR_RE.sub("", title), m.group(1) if m else None, genres.split("|")
                )
            )
    return events, catalog, [], "movielens-dat"


def _load_ml_csv(src: Path) -> tuple[list, list, list, str]:
    import csv

    events = []
    with (src / "ratings.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            events.append(
                _rating_event(row["userId"], row["movieId"], row["rating"], row["timestamp"])
            )
    catalog = []
    movies = src / "movies.csv"
    if movies.exists():
        with movies.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                m = _YEAR_RE.search(row["title"])
                genres = [g for g in row["genres"].split("|") if g != "(no genres listed)"]
                catalog.append(
                    _catalog_row(
                        row["movieId"],
                        _YEAR_RE.sub("", row["title"]),
                        m.group(1) if m else None,
                        genres,
                    )
                )
    return events, catalog, [], "movielens-csv"


def detect_format(src: Path) -> str:
    if src.is_file():
        src = src.parent
    if any(src.glob("*.inter")):
        return "recbole-atomic"
    if (src / "u.data").exists():
        return "movielens-100k"
    if (src / "ratings.dat").exists():
        return "movielens-dat"
    if (src / "ratings.csv").exists():
        return "movielens-csv"
    raise ValueError(
        f"{src}: no dataset found; expected RecBole atomic files (*.inter, *.item, *.kg, "
        "*.link) or MovieLens files (u.data/u.item, ratings.dat/movies.dat, "
        "ratings.csv/movies.csv)"
    )


LOADERS = {
    "recbole-atomic": _load_recbole,
    "movielens-100k": _load_ml100k,
    "movielens-dat": _load_ml_dat,
    "movielens-csv": _load_ml_csv,
}


def import_dataset(src: str | Path, out: str | Path) -> ImportSummary:
    """Write ``events.jsonl`` (ordered by time), ``catalog.jsonl`` and, when the source
    has a knowledge graph, ``kg.jsonl`` into ``out``."""
    src, out = Path(src), Path(out)
    fmt = detect_format(src)
    folder = src.parent if src.is_file() else src
    events, catalog, triples, fmt = LOADERS[fmt](folder)
    events.sort(key=lambda e: (e["timestamp"], e["user_id"], e["item_id"]))
    out.mkdir(parents=True, exist_ok=True)
    events_path, catalog_path = out / "events.jsonl", out / "catalog.jsonl"
    write_jsonl(events_path, events)
    write_jsonl(catalog_path, catalog)
    kg_path = None
    if triples:
        kg_path = out / "kg.jsonl"
        write_jsonl(kg_path, triples)
    return ImportSummary(
        source=str(src),
        format=fmt,
        events=len(events),
        users=len({e["user_id"] for e in events}),
        items=len({e["item_id"] for e in events}),
        catalog_items=len(catalog),
        kg_triples=len(triples),
        events_path=events_path,
        catalog_path=catalog_path,
        kg_path=kg_path,
    )


def fetch_ml100k(cache_dir: str | Path) -> Path:
    """MovieLens 100K (RecBole atomic files) from the ``recbole`` wheel on PyPI.

    Downloads the 2 MB wheel with pip (no RecBole dependencies, nothing installed) and
    extracts only the dataset. Raises ``RuntimeError`` when PyPI cannot be reached.
    """
    cache = Path(cache_dir)
    target = cache / "ml-100k"
    if (target / "ml-100k.inter").exists():
        return target
    wheel_dir = cache / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = list(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(wheel_dir),
            RECBOLE_WHEEL,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wheels = list(wheel_dir.glob("recbole-1.2.1-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {RECBOLE_WHEEL}: {proc.stderr.strip()[-500:]}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as z:
        for name in z.namelist():
            if name.startswith(ML100K_IN_WHEEL) and not name.endswith("/"):
                (target / Path(name).name).write_bytes(z.read(name))
    return target


# -- generated logs --------------------------------------------------------------------
def generate_log(
    *,
    users: int = 200,
    items: int = 300,
    events_per_user: int = 20,
    seed: int = 7,
    start_ms: int = 1_700_000_000_000,
    chain: float = 0.8,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A log with planted sequential structure: items form ``items // 10`` chains and a
    user mostly (probability ``chain``) moves to the next item of the chain they are on,
    otherwise jumps to a random item. Returns (events ordered by time, catalog)."""
    rng = random.Random(seed)
    types = ["view"] * 6 + ["click"] * 2 + ["add_to_cart", "purchase"]
    catalog = [
        {
            "item_id": f"i{n}",
            "title": f"Item {n}",
            "available": True,
            "attributes": {"category": f"c{n // 10}", "brand": f"b{n % 7}"},
        }
        for n in range(items)
    ]
    events = []
    for u in range(users):
        t = start_ms + rng.randrange(0, 3_600_000)
        cur = rng.randrange(items)
        for k in range(events_per_user):
            if k and rng.random() < chain:
                cur = (cur // 10) * 10 + (cur % 10 + 1) % 10
            elif k:
                cur = rng.randrange(items)
            t += rng.randrange(1_000, 120_000)
            events.append(
                {
                    "event_id": f"g{seed}-{u}-{k}",
                    "user_id": f"u{u}",
                    "item_id": f"i{cur}",
                    "event_type": rng.choice(types),
                    "timestamp": t,
                }
            )
    events.sort(key=lambda e: (e["timestamp"], e["user_id"]))
    return events, catalog
