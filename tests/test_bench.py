"""A small run of `streamrec bench` so it cannot rot (figures are not asserted: the
benchmark prints them; the machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamrec.bench import BenchConfig, run_bench

pytestmark = pytest.mark.broker


def test_bench_smoke(broker: str, tmp_path: Path) -> None:
    cfg = BenchConfig(
        events=600,
        users=100,
        items=300,
        load_seconds=1.0,
        workdir=tmp_path,
        bootstrap=broker,
        systems=("raw", "worker"),
    )
    lines: list[str] = []
    result = run_bench(cfg, progress=lines.append)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["systems"].keys() == {"worker", "raw"}
    for name, r in saved["systems"].items():
        assert r["max_rate"] > 0, name
        assert [x["fraction"] for x in r["loads"]] == [0.25, 0.5, 0.75]
        assert all(x["p50"] > 0 for x in r["loads"]), name
    worker = saved["systems"]["worker"]
    assert set(worker["stages_ms"]) == {"process", "state_write", "publish"}
    assert worker["rss_mb"] > 0 and "worker/raw" in result
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert any(line.startswith("worker: max") for line in lines)
