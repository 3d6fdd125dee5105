"""Child processes (workers) started by the demo, the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def start_worker(
    *,
    model: Path,
    data_dir: Path,
    bootstrap: str,
    topology: Path | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    graph: Path | None = None,
) -> subprocess.Popen:
    """``streamrec worker`` in its own process group, output to ``log``."""
    cmd = [
        sys.executable,
        "-m",
        "streamrec.cli",
        "worker",
        "--model",
        str(model),
        "--data-dir",
        str(data_dir),
        "--bootstrap",
        bootstrap,
    ]
    if topology is not None:
        cmd += ["--topology", str(topology)]
    if graph is not None:
        cmd += ["--graph", str(graph)]
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0) -> int | None:
    """SIGTERM (Faust commits and closes RocksDB), SIGKILL if it does not exit in time."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    return proc.returncode


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL: a crash, no chance to commit or flush."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    """A TCP port that was free a moment ago (for a child's metrics endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop our children too."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
