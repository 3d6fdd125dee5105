"""The worker's HTTP port: metrics, liveness and readiness answers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from streamrec import metrics
from streamrec.procs import free_port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as page:
            return page.status, page.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_probes_follow_health() -> None:
    port = free_port()
    assert metrics.serve(port)
    assert not metrics.serve(port)  # busy port: logged, not fatal
    metrics.HEALTH.beat, metrics.HEALTH.ready = time.monotonic(), False
    metrics.HEALTH.reason = "recovering state"
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/ready") == (503, "recovering state\n")
    metrics.HEALTH.ready, metrics.HEALTH.reason = True, "ready"
    assert get(port, "/ready")[0] == 200
    metrics.HEALTH.beat = time.monotonic() - metrics.STALE_S - 1  # the loop stopped turning
    assert get(port, "/healthz")[0] == 503 and get(port, "/ready")[0] == 503
    code, body = get(port, "/metrics")
    assert code == 200 and "streamrec_events_total" in body
    assert get(port, "/nope")[0] == 404
