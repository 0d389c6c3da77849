"""The health sensors: poke and reschedule mode against TCP servers on 127.0.0.1 and agents' heartbeats in
BareCount's database, deferrable mode (the HealthTrigger they defer to, and how they resume), the tenant
resolved from the DAG, and what they leave for the evidence and publish."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from barecount_provider.health.plan import Verdict
from barecount_provider.health.result import Dependency, HealthResult
from barecount_provider.runtime import health as runtime_health
from barecount_provider.sensors import health as sensors
from barecount_provider.sensors.health import (
    AgentHeartbeatSensor,
    PrivateEndpointSensor,
    RunnerHealthSensor,
    VpnTunnelSensor,
)
from barecount_provider.triggers.health import HealthTrigger

from ..conftest import PolicyFile
from .test_health_trigger import Listener, _free_port


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[HealthResult], str]]:
    """What the sensors publish (metrics and last results), captured instead of sent."""
    seen: list[tuple[list[HealthResult], str]] = []
    monkeypatch.setattr(sensors.health_report, "publish", lambda results, *, source: seen.append((list(results), source)))
    return seen


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def _policy(policy_file: PolicyFile, urls: list[str], *, degraded: str = "allow", profile: str = "on_prem") -> None:
    listed = ", ".join(f'"{url}"' for url in urls)
    policy_file(
        "version: 1\n"
        "tenants:\n"
        "  acme:\n"
        "    network_profiles:\n"
        f"      {profile}:\n"
        "        dependencies:\n"
        f"          health_urls: [{listed}]\n"
        f"          degraded: {degraded}\n"
    )


def _ctx() -> dict[str, Any]:
    return {"ti": SimpleNamespace(get_first_reschedule_date=lambda context: None)}


def _runner_sensor(**kwargs: Any) -> RunnerHealthSensor:
    defaults: dict[str, Any] = {
        "task_id": "wait_healthy", "tenant": "acme", "network_profile": "on_prem", "check_timeout_s": 2.0,
        "poke_interval": 0.2, "timeout": 30,
    }  # fmt: skip
    return RunnerHealthSensor(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------- poke mode


def test_runner_health_sensor_pokes_every_dependency_of_the_profile(
    policy_file: PolicyFile, listener: Listener, published: list[Any]
) -> None:
    up = f"tcp://127.0.0.1:{listener.port}"
    _policy(policy_file, [up])
    sensor = _runner_sensor()
    assert sensor.poke(_ctx()) is True
    assert sensor.barecount_health is not None
    [result] = sensor.barecount_health
    assert (result["status"], result["dependency"]) == (
        "healthy", {"kind": "url", "id": up, "tenant": "acme", "network_profile": "on_prem"},
    )  # fmt: skip
    [(results, source)] = published
    assert [r.as_dict() for r in results] == sensor.barecount_health and source == "sensor:wait_healthy"


def test_poke_mode_waits_until_a_dependency_comes_up(
    policy_file: PolicyFile, published: list[Any]
) -> None:
    port = _free_port()
    _policy(policy_file, [f"tcp://127.0.0.1:{port}"])
    started: list[Listener] = []
    timer = threading.Timer(0.6, lambda: started.append(Listener(port)))
    timer.start()
    try:
        _runner_sensor(timeout=20).execute(_ctx())
    finally:
        timer.cancel()
        for server in started:
            server.close()
    statuses = [results[0].status for results, _ in published]
    assert statuses[0] == "unhealthy" and statuses[-1] == "healthy"  # refused first, then up


def test_poke_mode_times_out_naming_the_dependency_status_and_error_code(
    policy_file: PolicyFile, published: list[Any]
) -> None:
    closed = f"tcp://127.0.0.1:{_free_port()}"
    _policy(policy_file, [closed])
    sensor = _runner_sensor(timeout=0.5)
    with pytest.raises(AirflowSensorTimeout) as raised:
        sensor.execute(_ctx())
    message = str(raised.value)
    assert "Sensor has timed out" in message
    assert f"url {closed!r}" in message and "unhealthy" in message and "error_code refused" in message
    assert sensor.barecount_health and sensor.barecount_health[0]["error_code"] == "refused"


def test_poke_mode_soft_fail_skips(policy_file: PolicyFile, published: list[Any]) -> None:
    _policy(policy_file, [f"tcp://127.0.0.1:{_free_port()}"])
    with pytest.raises(AirflowSkipException):
        _runner_sensor(timeout=0.3, soft_fail=True).execute(_ctx())


def test_reschedule_mode_frees_the_slot_and_records_the_check(
    policy_file: PolicyFile, published: list[Any]
) -> None:
    _policy(policy_file, [f"tcp://127.0.0.1:{_free_port()}"])
    sensor = _runner_sensor(mode="reschedule", poke_interval=30)
    before = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as raised:
        sensor.execute(_ctx())
    assert raised.value.reschedule_date >= before + timedelta(seconds=29)
    assert sensor.barecount_health and sensor.barecount_health[0]["status"] == "unhealthy"
    assert len(published) == 1


def test_degraded_refused_by_the_profile_does_not_pass(
    policy_file: PolicyFile, published: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile's ``degraded: refuse`` reaches the verdict (the check replaced by a degraded VPN)."""
    _policy(policy_file, ["tcp://127.0.0.1:9"], degraded="refuse")
    seen: list[str] = []

    def degraded_vpn(specs: Any, *, timeout_s: Any = None, degraded: str = "allow") -> Verdict:
        seen.append(degraded)
        result = HealthResult(
            status="degraded", dependency=Dependency("vpn_connection", "vpn-0123abcd", "acme", "on_prem"),
            latency_ms=1.0, detail="1 of 2 tunnels UP",
        )  # fmt: skip
        return Verdict((result,), degraded=degraded)

    monkeypatch.setattr(runtime_health, "check", degraded_vpn)
    assert _runner_sensor().poke(_ctx()) is False
    assert _runner_sensor(degraded="allow").poke(_ctx()) is True
    assert seen == ["refuse", "allow"]


def test_a_profile_with_nothing_to_check_fails_clearly(policy_file: PolicyFile, published: list[Any]) -> None:
    policy_file("version: 1\ntenants:\n  acme: {}\n")
    with pytest.raises(AirflowFailException, match="declares no dependencies .* nothing to check"):
        _runner_sensor(network_profile="vpn").poke(_ctx())


def test_the_runner_target_is_checked_with_the_profile(policy_file: PolicyFile, listener: Listener) -> None:
    _policy(policy_file, [f"tcp://127.0.0.1:{listener.port}"])
    sensor = _runner_sensor(
        runner_kind="lambda_function", runner_id="orders-ingest", runner_options={"qualifier": "vpn-s"},
        aws_conn_id="aws_prod", region_name="eu-west-1",
    )  # fmt: skip
    specs = sensor.health_specs("acme")
    assert [spec.kind for spec in specs] == ["url", "lambda_function"]
    assert specs[1] == runtime_health.runner_spec(
        "lambda_function", "orders-ingest", tenant="acme", network_profile="on_prem", conn_id="aws_prod",
        region_name="eu-west-1", qualifier="vpn-s",
    )  # fmt: skip
    nodes = _runner_sensor(
        runner_kind="kubernetes_nodes", runner_id="pool=etl", runner_options={"node_selector": {"pool": "etl"}},
        kubernetes_conn_id="k8s_prod", aws_conn_id="aws_prod",
    ).health_specs("acme")[-1]  # fmt: skip
    assert (nodes.kind, nodes.conn_id, nodes.options) == ("kubernetes_nodes", "k8s_prod", {"node_selector": {"pool": "etl"}})


def test_the_tenant_comes_from_the_dag_when_not_given(policy_file: PolicyFile, listener: Listener) -> None:
    _policy(policy_file, [f"tcp://127.0.0.1:{listener.port}"])
    with DAG("health_dag", schedule=None, tags=["tenant:acme"]) as dag:
        sensor = RunnerHealthSensor(task_id="wait", network_profile="on_prem", check_timeout_s=2.0)
    ti = SimpleNamespace(task=sensor, dag_id=dag.dag_id, run_id="r1", task_id="wait", try_number=1, map_index=-1)
    assert sensor.resolved_tenant({"ti": ti}) == "acme"
    assert sensor.poke({"ti": ti}) is True
    assert sensor.barecount_health and sensor.barecount_health[0]["dependency"]["tenant"] == "acme"


def test_agent_heartbeat_sensor_reads_the_agent_s_last_heartbeat(index_url: str, published: list[Any]) -> None:
    from barecount_provider.health import records

    sensor = AgentHeartbeatSensor(
        task_id="agent", agent_name="acme-dc1-gateway", max_heartbeat_age_seconds=60, tenant="acme", timeout=5
    )
    assert sensor.poke(_ctx()) is False  # never seen
    assert sensor.barecount_health and sensor.barecount_health[0]["status"] == "unhealthy"
    records.record_heartbeat(
        "acme-dc1-gateway", tenants=["acme"], version="1.0", capabilities=[], reported_by="test",
        at=datetime.now(UTC) - timedelta(seconds=10),
    )  # fmt: skip
    assert sensor.poke(_ctx()) is True
    [result] = published[-1][0]
    assert result.status == "healthy" and 9 <= result.measurements["heartbeat_age_seconds"] <= 60


def test_each_sensor_checks_its_own_dependency() -> None:
    vpn = VpnTunnelSensor(
        task_id="vpn", vpn_connection_id="vpn-0a1b2c3d", min_tunnels_up=2, aws_conn_id="aws_prod",
        region_name="eu-west-1", network_profile="vpn",
    )  # fmt: skip
    assert vpn.health_specs("acme") == [
        runtime_health.DependencySpec(
            kind="vpn_connection", id="vpn-0a1b2c3d", tenant="acme", network_profile="vpn",
            options={"min_tunnels_up": 2}, conn_id="aws_prod", region_name="eu-west-1",
        )
    ]  # fmt: skip
    endpoint = PrivateEndpointSensor(
        task_id="pl", vpc_endpoint_id="vpce-0f1e2d3c", host="api.partner.example", port=443,
        tls_server_name="api.partner.example", http_path="/health",
    )  # fmt: skip
    [spec] = endpoint.health_specs("globex")
    assert (spec.kind, spec.id, spec.tenant, spec.network_profile) == ("vpc_endpoint", "vpce-0f1e2d3c", "globex", None)
    assert spec.options == {
        "probe": {"host": "api.partner.example", "port": 443, "tls_server_name": "api.partner.example", "http_path": "/health"}
    }
    [agent] = AgentHeartbeatSensor(task_id="a", agent_name="dc1", max_heartbeat_age_seconds=90).health_specs("acme")
    assert (agent.kind, agent.id, agent.options) == ("agent", "dc1", {"max_heartbeat_age_seconds": 90})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: VpnTunnelSensor(task_id="t", vpn_connection_id="vpn-1", min_tunnels_up=0), "min_tunnels_up: 0"),
        (lambda: PrivateEndpointSensor(task_id="t", vpc_endpoint_id="vpce-1", host="h", port=0), "port: 0"),
        (lambda: AgentHeartbeatSensor(task_id="t", agent_name=""), "agent_name: '' is required"),
        (lambda: RunnerHealthSensor(task_id="t", network_profile="vpn", runner_kind="glue_job"), "give both"),
        (lambda: RunnerHealthSensor(task_id="t", network_profile="vpn", tenant="{{ dag_run.conf.t }}"), "templates are refused"),
        (lambda: RunnerHealthSensor(task_id="t", network_profile="vpn", degraded="sometimes"), "degraded: 'sometimes'"),
        (lambda: VpnTunnelSensor(task_id="t", vpn_connection_id="vpn-1", network_profile="lan"), "network_profile: 'lan'"),
    ],
)
def test_bad_arguments_are_refused_when_the_dag_is_parsed(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------------------------------------ deferrable


def test_a_deferrable_sensor_defers_to_a_health_trigger_that_round_trips(
    policy_file: PolicyFile, published: list[Any]
) -> None:
    closed = f"tcp://127.0.0.1:{_free_port()}"
    _policy(policy_file, [closed], degraded="refuse")
    sensor = _runner_sensor(deferrable=True, timeout=600, poke_interval=15)
    before = datetime.now(UTC)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(_ctx())
    assert deferred.value.method_name == "execute_complete"
    trigger = deferred.value.trigger
    assert isinstance(trigger, HealthTrigger)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    [spec] = [runtime_health.DependencySpec.from_dict(s) for s in kwargs["specs"]]
    assert (spec.kind, spec.id, spec.tenant, spec.network_profile) == ("url", closed, "acme", "on_prem")
    assert (kwargs["degraded"], kwargs["poke_interval"], kwargs["timeout_s"]) == ("refuse", 15.0, 2.0)
    end_at = datetime.fromisoformat(kwargs["end_at"])
    assert before + timedelta(seconds=600) <= end_at <= datetime.now(UTC) + timedelta(seconds=600)
    assert deferred.value.timeout is not None and deferred.value.timeout > timedelta(seconds=600)
    assert sensor.barecount_health and sensor.barecount_health[0]["status"] == "unhealthy"  # the first check


def test_a_deferrable_sensor_that_is_healthy_at_once_does_not_defer(
    policy_file: PolicyFile, listener: Listener, published: list[Any]
) -> None:
    _policy(policy_file, [f"tcp://127.0.0.1:{listener.port}"])
    assert _runner_sensor(deferrable=True).execute(_ctx()) is None
    assert len(published) == 1


def _event(status: str, result_status: str, error_code: str | None) -> dict[str, Any]:
    result = HealthResult(
        status=result_status,  # type: ignore[arg-type]
        dependency=Dependency("vpn_connection", "vpn-0a1b2c3d", "acme", "vpn"),
        latency_ms=40.0,
        detail="0 of 2 tunnels UP" if error_code else "2 of 2 tunnels UP",
        error_code=error_code,
        measurements={"tunnels_up": 0 if error_code else 2},
    )
    return {"status": status, "verdict": Verdict((result,)).as_dict()}


def test_execute_complete_healthy_records_and_publishes(published: list[Any]) -> None:
    sensor = VpnTunnelSensor(task_id="vpn", vpn_connection_id="vpn-0a1b2c3d", deferrable=True)
    assert sensor.execute_complete(_ctx(), _event("healthy", "healthy", None)) is None
    assert sensor.barecount_health and sensor.barecount_health[0]["measurements"] == {"tunnels_up": 2}
    [(results, source)] = published
    assert results[0].status == "healthy" and source == "sensor:vpn"


def test_execute_complete_unhealthy_fails_with_the_verdict(published: list[Any]) -> None:
    sensor = VpnTunnelSensor(task_id="vpn", vpn_connection_id="vpn-0a1b2c3d", deferrable=True, timeout=300)
    with pytest.raises(AirflowSensorTimeout) as raised:
        sensor.execute_complete(_ctx(), _event("unhealthy", "unhealthy", "tunnel_down"))
    message = str(raised.value)
    assert "not healthy within the sensor's timeout of 300" in message
    assert "vpn_connection 'vpn-0a1b2c3d'" in message and "tenant acme" in message
    assert "is unhealthy, error_code tunnel_down: 0 of 2 tunnels UP" in message
    assert sensor.barecount_health and sensor.barecount_health[0]["error_code"] == "tunnel_down"
    assert len(published) == 1


def test_execute_complete_soft_fail_skips_and_an_error_event_fails(published: list[Any]) -> None:
    soft = VpnTunnelSensor(task_id="vpn", vpn_connection_id="vpn-0a1b2c3d", deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException, match="tunnel_down"):
        soft.execute_complete(_ctx(), _event("unhealthy", "unhealthy", "tunnel_down"))
    hard = VpnTunnelSensor(task_id="vpn", vpn_connection_id="vpn-0a1b2c3d", deferrable=True)
    with pytest.raises(AirflowSensorTimeout, match="could not be checked: health check failed: boom"):
        hard.execute_complete(_ctx(), {"status": "error", "message": "health check failed: boom"})


# ------------------------------------------------- defer, run the trigger, resume (as the task runner does)


def _trigger_event(deferred: TaskDeferred) -> dict[str, Any]:
    """Rebuild the trigger from what Airflow stores (its classpath and kwargs) and run it to its event."""
    import asyncio

    classpath, kwargs = deferred.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**kwargs)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first())


def test_deferred_until_the_dependency_comes_up_then_resumed_healthy(
    policy_file: PolicyFile, published: list[Any]
) -> None:
    port = _free_port()
    _policy(policy_file, [f"tcp://127.0.0.1:{port}"])
    sensor = _runner_sensor(deferrable=True, poke_interval=1, timeout=30)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(_ctx())
    started: list[Listener] = []
    timer = threading.Timer(1.5, lambda: started.append(Listener(port)))
    timer.start()
    try:
        payload = _trigger_event(deferred.value)
    finally:
        timer.cancel()
        for server in started:
            server.close()
    assert payload["status"] == "healthy"
    # the task runner resumes with the event as next_kwargs (BaseSensorOperator.resume_execution)
    assert sensor.resume_execution(deferred.value.method_name, {"event": payload}, _ctx()) is None
    assert [results[0].status for results, _ in published] == ["unhealthy", "healthy"]
    assert sensor.barecount_health and sensor.barecount_health[0]["status"] == "healthy"


def test_deferred_past_the_timeout_resumes_into_a_failure_or_a_skip(
    policy_file: PolicyFile, published: list[Any]
) -> None:
    closed = f"tcp://127.0.0.1:{_free_port()}"
    _policy(policy_file, [closed])
    for soft_fail, expected in ((False, AirflowSensorTimeout), (True, AirflowSkipException)):
        sensor = _runner_sensor(deferrable=True, poke_interval=1, timeout=1, soft_fail=soft_fail)
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(_ctx())
        payload = _trigger_event(deferred.value)
        assert payload["status"] == "unhealthy"
        with pytest.raises(expected) as raised:
            sensor.resume_execution(deferred.value.method_name, {"event": payload}, _ctx())
        # Airflow's resume_execution replaces a soft-failed exception by its own skip, chained to ours
        error = raised.value.__cause__ if soft_fail else raised.value
        assert f"url {closed!r}" in str(error) and "error_code refused" in str(error)
