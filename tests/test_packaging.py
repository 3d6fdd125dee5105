"""What `pip install streamrec` (not an editable checkout) ships: every subpackage and the
schemas and topologies, so a plain install can train, serve and validate."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_package_schema_and_topology(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a clean copy: a stale build/ in the checkout would hide gaps
    for part in ("streamrec", "schemas", "topologies"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("streamrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (REPO / "streamrec").rglob("__init__.py"):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} is missing from the wheel (pyproject packages)"
    for schema in (REPO / "schemas").glob("*.json"):
        assert f"streamrec/schemas/{schema.name}" in names
    for topo in (REPO / "topologies").glob("*.yaml"):
        assert f"streamrec/topologies/{topo.name}" in names
    assert "streamrec/model/runtime.py" in names
