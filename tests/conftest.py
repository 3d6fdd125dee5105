"""Shared fixtures: one embedded broker per test session, isolated topics per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.baseline import CooccurrenceModel
from streamrec.broker import BROKER_NAME, EmbeddedBroker
from streamrec.datasets import generate_log
from streamrec.topology import Topology

from .helpers import fresh_topology

DATA = Path(__file__).parent / "data"


def pytest_report_header(config: pytest.Config) -> str:
    return f"broker for end-to-end tests: {BROKER_NAME} (embedded, started by the tests)"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Bootstrap address of a real Kafka-protocol broker for this test session."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    b = EmbeddedBroker(log=log)
    b.start()
    yield b.bootstrap
    b.stop()


@pytest.fixture
def topology(broker: str, tmp_path: Path) -> tuple[Topology, Path]:
    """A topology with unique topic names (created on the broker) and its YAML file."""
    return fresh_topology(broker, tmp_path)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A co-occurrence model trained on a generated log with the replay log's catalog."""
    events, catalog = generate_log(users=150, items=200, events_per_user=20, seed=3)
    model = CooccurrenceModel.from_log(events, catalog)
    return model.save(tmp_path_factory.mktemp("model"))
