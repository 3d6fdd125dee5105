"""Each script in benchmarks/ runs, on tiny inputs, so none can rot unnoticed.

Their figures are not asserted (they are printed for people to compare on one machine);
what is checked is that each runs to its end and prints its figures. join_cost.py had
rotted once: it handed the join dicts after the join moved to Recommendation objects.
recbole_peer.py needs RecBole's own environment (benchmarks/recbole_setup.sh) and
gpu_evidence.sh a GPU: neither runs here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.datasets import generate_log, write_jsonl

torch = pytest.importorskip("torch", reason="training needs the [train] extra")
from streamrec.model.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str | Path, timeout: float = 300) -> str:
    """Run ``benchmarks/<script>`` and return what it printed; fail on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GRU model version and a graph, trained and built on a small generated log."""
    work = tmp_path_factory.mktemp("bench-scripts")
    events, catalog = generate_log(users=200, items=120, events_per_user=12, seed=3)
    write_jsonl(work / "events.jsonl", events)
    write_jsonl(work / "catalog.jsonl", catalog)
    version = train(
        work / "events.jsonl", work / "models", TrainConfig(dim=16, epochs=1), progress=print
    )
    build = ["graph", "build", "--catalog", work / "catalog.jsonl", "--out", work / "graph"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            *map(str, build),
            "--events",
            str(work / "events.jsonl"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return {"model": version, "graph": work / "graph", "work": work}


def test_pipeline_cost_runs_alone_and_paired_against_a_commit(tiny: dict[str, Path]) -> None:
    out = bench("pipeline_cost.py", "--n", "1000", "--users", "200", "--items", "120")
    assert "process_batch" in out and "µs/event" in out
    paired = bench(
        "pipeline_cost.py",
        *("--model", tiny["model"], "--graph", tiny["graph"]),
        *("--n", "1000", "--users", "200", "--items", "120", "--against", "HEAD"),
    )
    assert "this tree / HEAD: process_batch" in paired and "answers" in paired


def test_join_cost_runs_with_unavailable_items() -> None:
    out = bench(
        "join_cost.py",
        *("--items", "2000", "--events", "5000", "--users", "50", "--unavailable", "0.1"),
    )
    assert "200 items unavailable" in out
    assert "warm users" in out and "cold users" in out


def test_model_cost_and_ort_latency_run_on_an_exported_model(tiny: dict[str, Path]) -> None:
    out = bench("model_cost.py", "--model", tiny["model"], "--repeat", "1", "--lengths", "1", "10")
    assert out.strip()
    out = bench(
        "ort_latency.py",
        *("--model", tiny["model"], "--batches", "4", "--repeat", "2", "--warmup", "1"),
    )
    assert "batch     4:" in out and "events/s" in out


def test_state_scale_runs(tmp_path: Path) -> None:
    out = bench("state_scale.py", "--users", "500", "--dir", tmp_path / "state")
    assert "bytes/user" in out and "RSS" in out


@pytest.mark.broker
def test_paced_load_runs_a_worker_at_a_fixed_rate(small_model: Path) -> None:
    out = bench("paced_load.py", "--model", small_model, "--rate", "200", "--seconds", "1")
    assert "offered 200 events/s" in out and "answered 200 of 200" in out


@pytest.mark.broker
def test_group_join_times_groups_of_workers(small_model: Path) -> None:
    out = bench("group_join.py", "--model", small_model, "--delays", "0.2", "--trials", "1")
    assert "trial 0, 0.2 s apart: settled in" in out
    assert "1 groups of 2 workers: 1 settled (median" in out
