"""Prometheus metrics of a worker (prometheus-client), served on ``--metrics-port``."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS = Counter(
    "streamrec_events_total", "Events consumed, by outcome", ["outcome"]
)  # valid | invalid | redelivered | rekeyed
RECOMMENDATIONS = Counter("streamrec_recommendations_total", "Recommendations published")
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
)  # process (decode, state, rank, join) | state_write | publish
END_TO_END_SECONDS = Histogram(
    "streamrec_event_to_recommendation_seconds",
    "From the event's Kafka timestamp to its recommendation being acknowledged",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MODEL_VERSION = Gauge("streamrec_model_info", "The model version serving (value 1)", ["version"])


def serve(port: int) -> bool:
    """Start the metrics endpoint; a busy port is logged, not fatal (the stream matters
    more than its metrics)."""
    if port <= 0:
        return False
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics port %d unavailable (%s); metrics not served", port, exc)
        return False
    log.info("metrics on :%d/metrics", port)
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
    STAGE_SECONDS.labels("state_write").observe(state_s)
    STAGE_SECONDS.labels("publish").observe(publish_s)
    for rec in records:
        if rec.timestamp:
            END_TO_END_SECONDS.observe(max(0.0, done - rec.timestamp / 1000))
    if _current_version != [version]:
        MODEL_VERSION.clear()
        MODEL_VERSION.labels(version=version).set(1)
        _current_version[:] = [version]
