"""Import of real dataset formats (small fixtures written here, same formats as the
originals) and the generated log."""

from __future__ import annotations

import gzip
from pathlib import Path

from typer.testing import CliRunner

from streamrec.cli import app
from streamrec.datasets import generate_log, import_dataset, iter_lines, read_jsonl


def test_recbole_atomic_files(tmp_path: Path) -> None:
    src = tmp_path / "ml"
    src.mkdir()
    (src / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "2\t10\t4\t881250950\n1\t10\t3\t881250949\n1\t11\t5\t881250960\n"
    )
    (src / "ml.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n11\tHeat\t1995\tAction\n"
    )
    (src / "ml.link").write_text("item_id:token\tentity_id:token\n10\tm.0dyb1\n")
    (src / "ml.kg").write_text(
        "head_id:token\trelation_id:token\ttail_id:token\n"
        "m.0dyb1\tfilm.film.directed_by\tm.0lasseter\n"
    )
    s = import_dataset(src, tmp_path / "out")
    assert (s.format, s.events, s.users, s.items, s.kg_triples) == ("recbole-atomic", 3, 2, 2, 1)
    events = list(read_jsonl(s.events_path))
    assert [e["timestamp"] for e in events] == [881250949000, 881250950000, 881250960000]
    assert events[0] == {
        "event_id": "r-1-10-881250949000",
        "user_id": "1",
        "item_id": "10",
        "event_type": "rating",
        "timestamp": 881250949000,
        "value": 3.0,
    }
    catalog = {c["item_id"]: c for c in read_jsonl(s.catalog_path)}
    assert catalog["10"]["attributes"] == {"genre": ["Animation", "Comedy"], "year": 1995}
    assert catalog["10"]["entity_id"] == "m.0dyb1" and "entity_id" not in catalog["11"]


def test_original_movielens_formats(tmp_path: Path) -> None:
    ml100 = tmp_path / "ml-100k"
    ml100.mkdir()
    (ml100 / "u.data").write_text("1\t1\t5\t874965758\n2\t1\t3\t874965700\n")
    (ml100 / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n")
    (ml100 / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n".encode("latin-1")
    )
    s = import_dataset(ml100 / "u.data", tmp_path / "o1")
    assert (s.format, s.events) == ("movielens-100k", 2)
    (cat,) = read_jsonl(s.catalog_path)
    assert cat["title"] == "Toy Story" and cat["attributes"] == {"genre": ["Comedy"], "year": 1995}

    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("1::1193::5::978300760\n")
    (ml1m / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    s = import_dataset(ml1m, tmp_path / "o2")
    (cat,) = read_jsonl(s.catalog_path)
    assert s.format == "movielens-dat" and cat["attributes"]["year"] == 1975

    ml20 = tmp_path / "ml-20m"
    ml20.mkdir()
    (ml20 / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n")
    (ml20 / "movies.csv").write_text('movieId,title,genres\n2,"Jumanji (1995)",Adventure|Fantasy\n')
    s = import_dataset(ml20, tmp_path / "o3")
    assert s.format == "movielens-csv" and next(read_jsonl(s.events_path))["value"] == 3.5


def test_import_command_reports_unknown_folders(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["import", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no dataset found" in result.output


def test_generated_log_is_deterministic_and_gz_readable(tmp_path: Path) -> None:
    a, cat = generate_log(users=5, items=20, events_per_user=4, seed=9)
    b, _ = generate_log(users=5, items=20, events_per_user=4, seed=9)
    assert a == b and len(a) == 20 and len(cat) == 20
    assert [e["timestamp"] for e in a] == sorted(e["timestamp"] for e in a)
    path = tmp_path / "log.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"a":1}\n\n{"a":2}\n')
    assert list(iter_lines(path)) == [b'{"a":1}', b'{"a":2}']
