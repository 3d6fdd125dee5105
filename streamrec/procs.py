"""Child processes (workers) started by the demo, the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable
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


def stop_process(proc: subprocess.Popen | Supervised | None, timeout: float = 30.0) -> int | None:
    """SIGTERM (Faust commits and closes RocksDB), SIGKILL if it does not exit in time."""
    if proc is None:
        return None
    if isinstance(proc, Supervised):
        return proc.stop(timeout)
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


def kill_process(proc: subprocess.Popen | Supervised) -> None:
    """SIGKILL: a crash, no chance to commit or flush."""
    if isinstance(proc, Supervised):
        return proc.kill()  # and not started again, as stop_process does
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Supervised:
    """A child process started again when it exits on its own with a non-zero code, at
    most ``max_restarts`` times: what ``restart: on-failure`` (deploy/docker-compose.yml)
    and Kubernetes do for workers.

    A worker stops itself when its Kafka group coordination fails
    (``intake.crash_when_failed``) and counts on being restarted; with a static instance
    id the new process takes the old one's place in the group at once. noida-db, the
    embedded broker, now and then answers a group join only after the rebalance timeout
    (60 s) and then sends an assignment aiokafka cannot decode. Without a restart the
    group waited for the stopped member forever."""

    def __init__(self, start: Callable[[], subprocess.Popen], max_restarts: int = 3) -> None:
        self._start = start
        self.max_restarts = max_restarts
        self.restarts = 0
        self._lock = threading.Lock()
        self._ending = False  # stop() or kill() asked for it: not restarted
        self.proc = start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while True:
            proc = self.proc
            rc = proc.wait()
            with self._lock:
                if self._ending or rc == 0 or self.restarts >= self.max_restarts:
                    return
                self.restarts += 1
                print(
                    f"process {proc.pid} exited with {rc}; starting it again "
                    f"({self.restarts}/{self.max_restarts})",
                    file=sys.stderr,
                )
                self.proc = self._start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """None while the child (the latest start of it) runs, else its exit code."""
        with self._lock:
            return self.proc.poll()

    def stop(self, timeout: float = 30.0) -> int | None:
        """:func:`stop_process`, and no restart after it."""
        with self._lock:
            self._ending = True
        return stop_process(self.proc, timeout)

    def kill(self) -> None:
        """:func:`kill_process` (a crash), and no restart after it."""
        with self._lock:
            self._ending = True
        kill_process(self.proc)


def serving(group: str, bootstrap: str, ports: Iterable[int]) -> bool:
    """Whether the workers with these metrics ports are all members of ``group`` and all
    answer ``/ready`` (assigned, recovered, not rebalancing): the group has settled."""
    from .broker import group_members

    ports = list(ports)
    try:
        members = group_members(group, bootstrap)
    except Exception:  # the group does not exist yet, or the broker is busy
        return False
    return len(members) == len(ports) and all(_ready(port) for port in ports)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as page:
            return page.status == 200
    except OSError:
        return False


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
