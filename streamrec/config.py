"""Kafka client settings shared by every command and the worker.

Everything speaks plain Kafka: ``--bootstrap`` (env ``STREAMREC_BOOTSTRAP``) picks the
cluster, and any librdkafka property can be passed through the environment as
``STREAMREC_KAFKA_<PROPERTY>`` (dots become underscores), e.g.
``STREAMREC_KAFKA_SECURITY_PROTOCOL=SASL_SSL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

BOOTSTRAP_ENV = "STREAMREC_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
_PASSTHROUGH_PREFIX = "STREAMREC_KAFKA_"


def bootstrap_servers(explicit: str | None = None) -> str:
    return explicit or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def passthrough_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """librdkafka properties from ``STREAMREC_KAFKA_*`` variables (security, tuning)."""
    env = os.environ if environ is None else environ
    return {
        key[len(_PASSTHROUGH_PREFIX) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(_PASSTHROUGH_PREFIX)
    }


def client_config(bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Base confluent-kafka config. Producers hash keys with murmur2 like the Java client
    and aiokafka (Faust) do, so a user's events and their session-state changelog land in
    the same partition whichever client wrote them."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers(bootstrap),
        # librdkafka's own log lines go through Python logging, not straight to stderr.
        "logger": logging.getLogger("streamrec.kafka"),
    }
    conf.update(passthrough_settings())
    conf.update(overrides)
    return conf


def producer_config(bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    return client_config(
        bootstrap,
        **{
            "partitioner": "murmur2_random",
            "acks": "all",
            "linger.ms": 5,
            "enable.idempotence": True,
            **overrides,
        },
    )
