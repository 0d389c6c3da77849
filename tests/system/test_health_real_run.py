"""Health on a real Airflow (api-server, scheduler, dag-processor and triggerer; tests/system/dags/health_dags.py,
tenant netops of tests/system/policy.yaml).

* A deferrable ``RunnerHealthSensor`` waits in the triggerer while its profile's dependencies are down (no
  agent heartbeat, nothing listening on the TCP port), and succeeds once an agent has reported through the
  REST API and the service listens; the triggerer never reports its loop blocked; the try's evidence entry
  carries the healthy results.
* A Lambda runner whose profile's VPN tunnels are down (the AWS emulator: moto, with VgwTelemetry added on its
  in-process backend) fails before launch with the connection named; the emulator received no Invoke.
* Agent heartbeats: accepted with a token for a listed agent, 401 without one, 403 for an agent the policy
  does not list; ``GET /barecount/health`` shows the agent and the last results.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import pytest

from .aws_emulator import AwsEmulator
from .stack import AirflowStack
from .test_evidence_real_run import _wait_for_record
from .test_runner_dags_real_run import _body, aws, aws_connection  # noqa: F401 (module fixtures: the emulator behind aws_default)

pytestmark = pytest.mark.system

AGENT = "netops-agent"
VPN_ID = "vpn-0b1c2d3e4f5a60719"  # tests/system/policy.yaml, tenant netops, profile vpn
BLOCKED = "Triggerer's async thread was blocked"


class TcpService:
    """A TCP listener on a given loopback port that accepts and closes: the dependency 'comes back'."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def _task_state(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> str | None:
    resp = stack.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", check=False)
    return resp.json().get("state") if resp.status_code == 200 else None


def _wait_for_state(stack: AirflowStack, dag_id: str, run_id: str, task_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = _task_state(stack, dag_id, run_id, task_id)
        if seen == state:
            return
        time.sleep(1)
    raise AssertionError(f"{dag_id}.{task_id} is {seen!r}, not {state!r}, after {timeout:g} s\n{stack.log_tails()}")


def _entry(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """The evidence entry of ``task_id``'s first try in the run's sealed record."""
    record = _wait_for_record(stack, run_id, dag_id=dag_id)
    (entry,) = [e for e in record["entries"] if e["context"]["task_id"] == task_id]
    return dict(entry)


def _heartbeat(stack: AirflowStack, name: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        f"{stack.base_url}/barecount/agents/{name}/heartbeat",
        json={"version": "1.4.2", "capabilities": ["jdbc", "sftp"]},
        headers=headers,
        timeout=30,
    )


def test_agent_heartbeats_need_a_token_and_a_listed_agent(airflow_stack: AirflowStack) -> None:
    assert _heartbeat(airflow_stack, AGENT, None).status_code == 401
    refused = _heartbeat(airflow_stack, "rogue-agent", airflow_stack.token)
    assert refused.status_code == 403, refused.text
    assert "rogue-agent" in refused.json()["detail"]
    accepted = _heartbeat(airflow_stack, AGENT, airflow_stack.token)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["tenants"] == ["netops"]

    health = airflow_stack.api("GET", "/barecount/health").json()
    (agent,) = [a for a in health["agents"] if a["name"] == AGENT]
    assert agent["version"] == "1.4.2" and agent["tenants"] == ["netops"]
    assert not [a for a in health["agents"] if a["name"] == "rogue-agent"]


def test_deferrable_runner_health_sensor_waits_for_its_dependencies_then_succeeds(
    airflow_stack: AirflowStack, health_port: int
) -> None:
    dag_id, task_id = "health_wait_dag", "wait_for_on_prem"
    airflow_stack.wait_for_dag(dag_id)
    airflow_stack.unpause(dag_id)
    run_id = airflow_stack.trigger(dag_id)
    _wait_for_state(airflow_stack, dag_id, run_id, task_id, "deferred")

    # The agent reports, the TCP service is still down: the sensor keeps waiting in the triggerer.
    assert _heartbeat(airflow_stack, AGENT, airflow_stack.token).status_code == 200
    time.sleep(8)  # several poke intervals (2 s) of the trigger
    assert _task_state(airflow_stack, dag_id, run_id, task_id) == "deferred"

    service = TcpService(health_port)
    try:
        assert airflow_stack.wait_for_run(dag_id, run_id, timeout=120) == "success"
    finally:
        service.close()

    # The trigger checked in the triggerer (Airflow 3.3 keeps its lines next to the try's log, in
    # ``attempt=1.log.trigger.<triggerer id>.log``) until the service came back; the triggerer never said
    # its loop was blocked.
    task_log = airflow_stack.task_log_path(dag_id, run_id, task_id)
    assert "deferring" in task_log.read_text(errors="replace")
    trigger_logs = sorted(task_log.parent.glob(f"{task_log.name}.trigger.*.log"))
    assert trigger_logs, f"no trigger log next to {task_log}"
    trigger_log = "".join(path.read_text(errors="replace") for path in trigger_logs)
    assert f"url 'tcp://127.0.0.1:{health_port}' (tenant netops, network profile on_prem) is unhealthy" in trigger_log
    assert "none blocking" in trigger_log
    assert BLOCKED not in airflow_stack.component_log("triggerer").read_text(errors="replace")

    entry = _entry(airflow_stack, dag_id, run_id, task_id)
    kinds = {(r["dependency"]["kind"], r["status"]) for r in entry["health"]}
    assert kinds == {("agent", "healthy"), ("url", "healthy")}
    assert {r["dependency"]["tenant"] for r in entry["health"]} == {"netops"}

    listed = airflow_stack.api("GET", "/barecount/health").json()
    url_results = [r for r in listed["results"] if r["dependency"]["kind"] == "url"]
    assert url_results and url_results[0]["status"] == "healthy"


def test_a_runner_whose_vpn_tunnels_are_down_fails_before_launch(
    airflow_stack: AirflowStack,
    aws: AwsEmulator,  # noqa: F811
    aws_connection: str,  # noqa: F811
) -> None:
    aws.seed_vpn_connection(VPN_ID, tunnels=("DOWN", "DOWN"))
    dag_id, task_id = "health_gate_dag", "ingest"
    airflow_stack.wait_for_dag(dag_id)
    airflow_stack.unpause(dag_id)
    before = len([r for r in aws.recorded_requests() if "/invocations" in r["url"]])
    run_id = airflow_stack.trigger(dag_id)
    assert airflow_stack.wait_for_run(dag_id, run_id, timeout=180) == "failed"

    log = airflow_stack.task_log_path(dag_id, run_id, task_id).read_text(errors="replace")
    assert VPN_ID in log and "tunnel_down" in log, log[-3000:]
    invocations = [r for r in aws.recorded_requests() if "/invocations" in r["url"]]
    assert len(invocations) == before, "the Lambda function was invoked although its VPN was down"
    assert any("Action=DescribeVpnConnections" in _body(r) for r in aws.recorded_requests())

    entry = _entry(airflow_stack, dag_id, run_id, task_id)
    (vpn,) = [r for r in entry["health"] if r["dependency"]["kind"] == "vpn_connection"]
    assert (vpn["status"], vpn["error_code"], vpn["dependency"]["id"]) == ("unhealthy", "tunnel_down", VPN_ID)
