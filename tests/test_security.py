"""Kafka security settings reach every client: the confluent-kafka commands and the
worker's own Faust (aiokafka) clients read the same STREAMREC_KAFKA_* variables."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.auth import AuthProtocol

from streamrec.app import WorkerSettings, create_app
from streamrec.config import aiokafka_security, client_config, faust_credentials
from streamrec.topology import load_topology

SASL_SSL = {
    "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMREC_KAFKA_SASL_USERNAME": "streamrec",
    "STREAMREC_KAFKA_SASL_PASSWORD": "s3cret",
}


def _settings(env: dict[str, str]) -> dict[str, str]:
    return {k[len("STREAMREC_KAFKA_") :].lower().replace("_", "."): v for k, v in env.items()}


def test_plaintext_by_default() -> None:
    assert faust_credentials({}) is None
    assert aiokafka_security({}) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_reaches_confluent_and_faust_clients(monkeypatch) -> None:
    for key, value in SASL_SSL.items():
        monkeypatch.setenv(key, value)
    conf = client_config("broker:9093")
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("streamrec", "s3cret")
    creds = faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol == AuthProtocol.SASL_SSL
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    auth = aiokafka_security()
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_plain_username"] == "streamrec"


def test_sasl_plaintext_and_tls_options() -> None:
    plain = faust_credentials(
        {"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u", "sasl.password": "p"}
    )
    assert plain.protocol == AuthProtocol.SASL_PLAINTEXT and plain.ssl_context is None
    tls = faust_credentials(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
            "enable.ssl.certificate.verification": "false",
        }
    )
    assert isinstance(tls, faust.SSLCredentials)
    assert tls.context.verify_mode == ssl.CERT_NONE


def test_client_certificate_is_loaded(tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=streamrec", "-days", "1"]
    subprocess.run(
        ["openssl", *args, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    creds = faust_credentials(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": str(cert),
            "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key),
        }
    )
    assert creds.context.verify_mode == ssl.CERT_REQUIRED
    assert creds.context.cert_store_stats()["x509_ca"] == 1  # our CA, loaded
    with pytest.raises(ssl.SSLError):  # a wrong key for the certificate is refused
        other = tmp_path / "other.key"
        subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True)
        faust_credentials(
            {
                "security.protocol": "SSL",
                "ssl.certificate.location": str(cert),
                "ssl.key.location": str(other),
            }
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"}, "not supported"),
        ({"security.protocol": "SASL_PLAINTEXT"}, "SASL_USERNAME"),
        ({"security.protocol": "TLS"}, "not a Kafka security protocol"),
    ],
)
def test_unusable_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faust_credentials(settings)


def test_worker_app_carries_the_credentials(monkeypatch, small_model: Path, tmp_path) -> None:
    for key, value in SASL_SSL.items():
        monkeypatch.setenv(key, value)
    app = create_app(
        WorkerSettings(
            topology=load_topology(),
            bootstrap="broker:9093",
            model_path=small_model,
            data_dir=tmp_path,
        )
    )
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "streamrec"
    assert creds.protocol == AuthProtocol.SASL_SSL
