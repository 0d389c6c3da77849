"""The kubernetes_nodes health check against a fake Kubernetes API on 127.0.0.1 (kmock's KubernetesEmulator),
through runtime/health.py: the cncf-kubernetes KubernetesHook builds the client from an Airflow connection
whose kube config file points at the emulator (real HTTP). kmock stores the nodes the test creates and serves
them back; it ignores label selectors, so the check's own matching of the node selector is what decides here
(tests/unit/test_health_checks.py checks that the selector is sent to the API server)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from barecount_provider.health.result import HealthResult
from barecount_provider.runtime import health

pytestmark = pytest.mark.integration

CONN_ID = "kube_health"


class FakeApiServer:
    """kmock's KubernetesEmulator on a loopback port, in its own thread and event loop."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="kmock-health", daemon=True)
        self.port = 0
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported to the test through self.error
            self.error = err
            self._ready.set()

    async def _main(self) -> None:
        import kmock

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            emulator.resources["v1/nodes"] = {}  # listing needs the resource declared
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self.error is not None:
            raise RuntimeError(f"kmock did not start: {self.error!r}")
        self.config_file.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: kmock\n  cluster:\n    server: http://127.0.0.1:{self.port}\n"
            "users:\n- name: kmock\n  user:\n    token: not-a-real-token\n"
            "contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n"
            "current-context: kmock\n",
            encoding="utf-8",
        )

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def add_node(self, name: str, labels: dict[str, str], ready: str) -> None:
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(self.config_file)))
        api.create_node(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]},
            }
        )


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApiServer]:
    server = FakeApiServer(tmp_path_factory.mktemp("kube") / "kubeconfig.yaml")
    server.start()
    variable = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    saved = os.environ.get(variable)
    os.environ[variable] = json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(server.config_file)}})
    try:
        server.add_node("dc1-a", {"zone": "dc1", "network": "private"}, "True")
        server.add_node("dc1-b", {"zone": "dc1", "network": "private"}, "False")
        server.add_node("dc2-a", {"zone": "dc2", "network": "private"}, "False")
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


def test_a_ready_node_matching_the_selector_is_healthy(api_server: FakeApiServer) -> None:
    result = _nodes({"zone": "dc1", "network": "private"})
    assert (result.status, result.error_code) == ("healthy", None), result.detail
    assert result.detail == "1 of 2 nodes matching network=private,zone=dc1 Ready: dc1-a"
    assert dict(result.measurements) == {"nodes_ready": 1, "nodes_matching": 2}
    assert result.dependency.as_dict() == {"kind": "kubernetes_nodes", "id": "pods", "tenant": "acme", "network_profile": "private_vpc"}


def test_nodes_matching_but_none_ready_are_endpoint_state(api_server: FakeApiServer) -> None:
    result = _nodes({"zone": "dc2"})
    assert (result.status, result.error_code) == ("unhealthy", "endpoint_state")
    assert "none of the 1 nodes matching zone=dc2 is Ready" in result.detail


def test_no_node_matching_is_not_found(api_server: FakeApiServer) -> None:
    result = _nodes({"zone": "dc3"})
    assert (result.status, result.error_code) == ("unhealthy", "not_found")
    assert result.measurements["nodes_matching"] == 0


def test_an_empty_selector_takes_any_node(api_server: FakeApiServer) -> None:
    result = _nodes({})
    assert result.status == "healthy"
    assert result.measurements["nodes_matching"] == 3


def test_an_api_server_that_refuses_is_refused(api_server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    config_file = tmp_path / "closed.yaml"
    config_file.write_text(api_server.config_file.read_text().replace(f":{api_server.port}", f":{port}"), encoding="utf-8")
    monkeypatch.setenv("AIRFLOW_CONN_KUBE_CLOSED", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(config_file)}}))
    result = _nodes({"zone": "dc1"}, conn_id="kube_closed")
    assert (result.status, result.error_code) == ("unhealthy", "refused"), result.detail
