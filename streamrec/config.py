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


# The embedded broker (noida-db) answers a fetch with everything after the offset,
# whatever fetch.max.bytes says; librdkafka refuses a response over
# receive.message.max.bytes (100 MB by default) and retries forever, so a consumer that
# fell that far behind never read again. Apache Kafka keeps a response within
# fetch.max.bytes (50 MB), where this ceiling changes nothing.
MAX_RESPONSE_BYTES = 2_147_483_647  # librdkafka's largest


def consumer_config(bootstrap: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A confluent-kafka consumer's config; ``STREAMREC_KAFKA_*`` may lower the ceiling."""
    conf = client_config(bootstrap, **overrides)
    conf.setdefault("receive.message.max.bytes", MAX_RESPONSE_BYTES)
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


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def faust_credentials(settings: dict[str, str] | None = None) -> Any:
    """The same ``STREAMREC_KAFKA_*`` security settings as Faust credentials, for the
    worker's own (aiokafka) consumer, producer and admin client, so the worker connects
    exactly like the confluent-kafka commands do. ``None`` means PLAINTEXT.

    Understood: ``security.protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    ``sasl.mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), ``sasl.username``,
    ``sasl.password``, ``ssl.ca.location``, ``ssl.certificate.location``,
    ``ssl.key.location``, ``ssl.key.password``,
    ``enable.ssl.certificate.verification``. Anything else is refused with a clear
    error rather than silently connecting without it."""
    import faust

    s = passthrough_settings() if settings is None else settings
    protocol = s.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ValueError(f"security.protocol {protocol!r} is not a Kafka security protocol")
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        import ssl

        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=s.get("ssl.ca.location"),
            certfile=s.get("ssl.certificate.location"),
            keyfile=s.get("ssl.key.location"),
            password=s.get("ssl.key.password"),
        )
        if s.get("enable.ssl.certificate.verification", "true").lower() == "false":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = s.get("sasl.mechanism", "PLAIN").upper()
    if mechanism not in SASL_MECHANISMS:
        raise ValueError(
            f"sasl.mechanism {mechanism!r} is not supported by the worker "
            f"(supported: {', '.join(SASL_MECHANISMS)})"
        )
    if not s.get("sasl.username") or s.get("sasl.password") is None:
        raise ValueError("SASL needs STREAMREC_KAFKA_SASL_USERNAME and _SASL_PASSWORD")
    return faust.SASLCredentials(
        username=s["sasl.username"],
        password=s["sasl.password"],
        ssl_context=context,
        mechanism=mechanism,
    )


def aiokafka_security(settings: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for an aiokafka client built outside Faust (the catalog reader)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return dict(credentials_to_aiokafka_auth(faust_credentials(settings)))
