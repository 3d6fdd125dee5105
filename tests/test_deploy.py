"""deploy/ must be valid without a cluster: the compose file against the Compose
specification's JSON Schema, the Kubernetes manifests against Kubernetes' schemas
(kubernetes-validate), and both must agree with the code (commands, ports, topology)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from streamrec.cli import app
from streamrec.topology import parse_topology

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def compose_schema() -> dict:
    # The schema file check-jsonschema vendors; read as data (its CLI is not imported).
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec and spec.submodule_search_locations
    root = Path(spec.submodule_search_locations[0])
    return json.loads((root / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())


def test_compose_file_is_valid_compose() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validate(doc, compose_schema())
    services = doc["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "topics", "worker", "prometheus"} <= set(services)
    voters = services["kafka-1"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.count("@") == 3  # three KRaft controllers
    assert (DEPLOY / "prometheus.yml").is_file() and (DEPLOY / "Dockerfile").is_file()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def commands() -> list[list[str]]:
    out = []
    for svc in yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"].values():
        if svc.get("image", "").startswith("streamrec"):
            out.append(svc["command"])
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            out += [c["args"] for c in spec.get("containers", [])]
    return out


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a[:2]))
def test_deployed_commands_exist(argv: list[str]) -> None:
    """Every streamrec command line in deploy/ parses (run with --help, nothing starts)."""
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output


def test_k8s_topology_parses_and_metrics_port_matches() -> None:
    cm = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    topo = parse_topology(yaml.safe_load(cm["data"]["topology.yaml"]), "configmap")
    assert topo.events.partitions == topo.recommendations.partitions
    sts = next(yaml.safe_load_all((DEPLOY / "k8s" / "worker-statefulset.yaml").read_text()))
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STREAMREC_METRICS_PORT"] == str(container["ports"][0]["containerPort"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
