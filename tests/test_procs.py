"""Supervised children: started again after a failure, never after a stop or a kill."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from streamrec.procs import Supervised, kill_process, stop_process

from .helpers import wait_for


def _child(code: str, starts: Path) -> subprocess.Popen:
    """A Python child that appends a line to ``starts`` when it starts, then runs ``code``."""
    script = f"open({str(starts)!r}, 'a').write('start\\n'); {code}"
    return subprocess.Popen([sys.executable, "-c", script], start_new_session=True)


def _starts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_failing_child_is_started_again_up_to_the_limit(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    child = Supervised(lambda: _child("raise SystemExit(3)", starts), max_restarts=2)
    assert wait_for(lambda: child.restarts == 2 and child.poll() == 3, 30)
    time.sleep(0.5)  # no third restart
    assert _starts(starts) == 3 and child.restarts == 2


def test_a_child_that_exits_cleanly_is_not_started_again(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    child = Supervised(lambda: _child("pass", starts))
    assert wait_for(lambda: child.poll() == 0, 30)
    time.sleep(0.5)
    assert _starts(starts) == 1 and child.restarts == 0


def test_stop_and_kill_are_final(tmp_path: Path) -> None:
    # Through stop_process and kill_process, which hand a Supervised to its own methods.
    for end in (stop_process, kill_process):
        starts = tmp_path / f"starts-{end.__name__}"
        child = Supervised(lambda s=starts: _child("import time; time.sleep(60)", s))
        assert wait_for(lambda s=starts: _starts(s) == 1, 30)
        first = child.pid
        end(child)
        time.sleep(0.5)
        assert child.pid == first and child.poll() is not None and child.restarts == 0
        assert _starts(starts) == 1
