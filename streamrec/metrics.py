"""A worker's HTTP port (``--metrics-port``): Prometheus metrics, liveness, readiness.

* ``/metrics`` — prometheus-client exposition;
* ``/healthz`` — 200 while the worker's event loop is turning (a Faust timer beats every
  second; silent for ``STALE_S`` means stuck), else 503;
* ``/ready``  — 200 once table recovery is done and no rebalance is in progress, else 503.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

EVENTS = Counter(
    "streamrec_events_total", "Events consumed, by outcome", ["outcome"]
)  # valid | invalid | redelivered | rekeyed
RECOMMENDATIONS = Counter("streamrec_recommendations_total", "Recommendations published")
OFFSET_HOLES = Counter(
    "streamrec_offset_holes_total",
    "Times events of a partition skipped the agent and were re-read (offsets.py)",
)
BATCH_RETRIES = Counter(
    "streamrec_batch_retries_total", "Batches that failed and were retried (none are skipped)"
)
CATALOG_UPDATES = Counter("streamrec_catalog_updates_total", "Catalog changes applied")
BATCH_SIZE = Histogram(
    "streamrec_batch_size",
    "Events per agent batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
)
STAGE_SECONDS = Histogram(
    "streamrec_stage_seconds",
    "Worker time per batch and stage",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # process (= decode + state + model + graph + encode) | state_write | publish
END_TO_END_SECONDS = Histogram(
    "streamrec_event_to_recommendation_seconds",
    "From the event's Kafka timestamp to its recommendation being acknowledged",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MODEL_VERSION = Gauge("streamrec_model_info", "The model version serving (value 1)", ["version"])
CONSUMER_LAG = Gauge(
    "streamrec_consumer_lag",
    "Events in the partition not answered yet (high watermark - next offset), after each batch",
    ["partition"],
)


STALE_S = 30.0


class Health:
    """What the probes answer; the worker updates it from a Faust timer."""

    def __init__(self) -> None:
        self.beat = time.monotonic()
        self.ready = False
        self.reason = "starting"

    def alive(self) -> bool:
        return time.monotonic() - self.beat < STALE_S


HEALTH = Health()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = HEALTH.alive()
            self._send(200 if ok else 503, b"ok\n" if ok else b"event loop stalled\n")
        elif path == "/ready":
            ok = HEALTH.ready and HEALTH.alive()
            self._send(200 if ok else 503, (HEALTH.reason + "\n").encode())
        else:
            self._send(404, b"try /metrics, /healthz or /ready\n")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # probes every few seconds: stay quiet
        return


def serve(port: int) -> bool:
    """Serve metrics and probes in a thread; a busy port is logged, not fatal (the
    stream matters more than its metrics)."""
    if port <= 0:
        return False
    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    except OSError as exc:
        log.warning("metrics port %d unavailable (%s); metrics not served", port, exc)
        return False
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    log.info("metrics, /healthz and /ready on :%d", port)
    return True


_current_version: list[str] = []


def record_batch(
    result, records, version: str, process_s: float, state_s: float, publish_s: float, done: float
) -> None:
    """One agent batch: outcomes, sizes, per-stage times, event->recommendation time."""
    EVENTS.labels("valid").inc(result.valid)
    EVENTS.labels("invalid").inc(result.invalid)
    EVENTS.labels("redelivered").inc(result.redelivered)
    EVENTS.labels("rekeyed").inc(len(result.rekeyed))
    RECOMMENDATIONS.inc(result.answered)
    BATCH_SIZE.observe(len(records))
    STAGE_SECONDS.labels("process").observe(process_s)
    for stage, seconds in result.stages.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    STAGE_SECONDS.labels("state_write").observe(state_s)
    STAGE_SECONDS.labels("publish").observe(publish_s)
    for rec in records:
        if rec.timestamp:
            END_TO_END_SECONDS.observe(max(0.0, done - rec.timestamp / 1000))
    if _current_version != [version]:
        MODEL_VERSION.clear()
        MODEL_VERSION.labels(version=version).set(1)
        _current_version[:] = [version]
