"""The kubernetes_nodes health check against a fake Kubernetes API on 127.0.0.1 (kmock's KubernetesEmulator),
through runtime/health.py: the cncf-kubernetes KubernetesHook builds the client from an Airflow connection
whose kube config file points at the emulator (real HTTP). kmock stores the nodes the test creates and serves
them back; it ignores label selectors, so the check's own matching of the node selector is what decides here
(tests/unit/test_health_checks.py checks that the selector is sent to the API server)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from barecount_provider.health.result import HealthResult
from barecount_provider.runtime import health

from .test_kubernetes_runner import FakeKubernetes

pytestmark = pytest.mark.integration

CONN_ID = "kube_health"


def _add_node(api_server: FakeKubernetes, name: str, labels: dict[str, str], ready: str) -> None:
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(api_server.config_file))
    api.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]},
        }
    )


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubernetes]:
    server = FakeKubernetes(tmp_path_factory.mktemp("kube"), resources=("v1/nodes",))
    server.start()
    variable = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    saved = os.environ.get(variable)
    os.environ[variable] = json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(server.config_file)}})
    try:
        _add_node(server, "dc1-a", {"zone": "dc1", "network": "private"}, "True")
        _add_node(server, "dc1-b", {"zone": "dc1", "network": "private"}, "False")
        _add_node(server, "dc2-a", {"zone": "dc2", "network": "private"}, "False")
        yield server
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved
        server.stop()


def _nodes(selector: dict[str, str], conn_id: str = CONN_ID) -> HealthResult:
    spec = health.runner_spec("kubernetes_nodes", "pods", tenant="acme", network_profile="private_vpc", conn_id=conn_id, node_selector=selector)
    (result,) = health.check([spec], timeout_s=5).results
    return result


def test_a_ready_node_matching_the_selector_is_healthy(api_server: FakeKubernetes) -> None:
    result = _nodes({"zone": "dc1", "network": "private"})
    assert (result.status, result.error_code) == ("healthy", None), result.detail
    assert result.detail == "1 of 2 nodes matching network=private,zone=dc1 Ready: dc1-a"
    assert dict(result.measurements) == {"nodes_ready": 1, "nodes_matching": 2}
    assert result.dependency.as_dict() == {"kind": "kubernetes_nodes", "id": "pods", "tenant": "acme", "network_profile": "private_vpc"}


def test_nodes_matching_but_none_ready_are_endpoint_state(api_server: FakeKubernetes) -> None:
    result = _nodes({"zone": "dc2"})
    assert (result.status, result.error_code) == ("unhealthy", "endpoint_state")
    assert "none of the 1 nodes matching zone=dc2 is Ready" in result.detail


def test_no_node_matching_is_not_found(api_server: FakeKubernetes) -> None:
    result = _nodes({"zone": "dc3"})
    assert (result.status, result.error_code) == ("unhealthy", "not_found")
    assert result.measurements["nodes_matching"] == 0


def test_an_empty_selector_takes_any_node(api_server: FakeKubernetes) -> None:
    result = _nodes({})
    assert result.status == "healthy"
    assert result.measurements["nodes_matching"] == 3


def test_an_api_server_that_refuses_is_refused(api_server: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    config_file = tmp_path / "closed.yaml"
    config_file.write_text(Path(api_server.config_file).read_text().replace(f":{api_server.port}", f":{port}"), encoding="utf-8")
    monkeypatch.setenv("AIRFLOW_CONN_KUBE_CLOSED", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(config_file)}}))
    result = _nodes({"zone": "dc1"}, conn_id="kube_closed")
    assert (result.status, result.error_code) == ("unhealthy", "refused"), result.detail
