"""The health checks without a server: the AWS error mapping (botocore Stubber), the agent heartbeat check,
the Kubernetes error mapping, and runtime/health.py (specs from the policy, the clients it builds, one
verdict). The checks against moto and kmock are in tests/integration/test_health_checks_aws.py and
test_health_kubernetes.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from barecount_provider.health import agents, aws, kubernetes
from barecount_provider.health.result import Dependency
from barecount_provider.policy.model import AgentDependency, EndpointProbe, VpcEndpoint, VpnConnection
from barecount_provider.runtime import health

VPN = "vpn-0a1b2c3d4e5f60718"


def _client(service: str) -> Any:
    return boto3.client(
        service, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


# ---------------------------------------------------------------------------------------------- AWS errors


@pytest.mark.parametrize(
    "code",
    ["UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "UnrecognizedClientException"],
)
def test_an_access_error_is_access_denied(code):
    ec2 = _client("ec2")
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_vpn_connections", service_error_code=code, service_message="not allowed", http_status_code=403)
        dependency = Dependency("vpn_connection", VPN, "acme", "vpn")
        result = aws.check_vpn_connection(ec2, VpnConnection(VPN), dependency=dependency, timeout_s=2)
    assert (result.status, result.error_code) == ("unhealthy", "access_denied")
    assert result.dependency == dependency
    assert "not allowed" in result.detail


@pytest.mark.parametrize(
    "code",
    ["InvalidVpnConnectionID.NotFound", "InvalidVpcEndpointId.NotFound", "ResourceNotFoundException", "EntityNotFoundException", "ClusterNotFoundException"],
)
def test_a_missing_resource_is_not_found(code):
    glue = _client("glue")
    with Stubber(glue) as stub:
        stub.add_client_error("get_job", service_error_code=code, service_message="no such thing", http_status_code=400)
        result = aws.check_glue_job(glue, "orders-etl")
    assert (result.status, result.error_code) == ("unhealthy", "not_found")
    assert result.dependency == Dependency("glue_job", "orders-etl")


@pytest.mark.parametrize(
    "error,status,code",
    [
        (ConnectTimeoutError(endpoint_url="https://ec2.example"), "unhealthy", "timeout"),
        (ReadTimeoutError(endpoint_url="https://ec2.example"), "unhealthy", "timeout"),
        (EndpointConnectionError(endpoint_url="https://ec2.example"), "unhealthy", "refused"),
        (RuntimeError("odd"), "unknown", None),
    ],
)
def test_transport_errors_map_to_timeout_refused_or_unknown(error, status, code):
    outcome = aws.classify_aws_error(error)
    assert (outcome.status, outcome.error_code) == (status, code)


def test_another_client_error_is_unknown_with_its_code():
    lam = _client("lambda")
    with Stubber(lam) as stub:
        stub.add_client_error("get_function", service_error_code="ThrottlingException", service_message="slow down", http_status_code=429)
        result = aws.check_lambda_function(lam, "ingest", "live")
    assert (result.status, result.error_code) == ("unknown", None)
    assert "ThrottlingException" in result.detail
    assert result.dependency.id == "ingest:live"


def test_the_error_text_is_redacted():
    ec2 = _client("ec2")
    secret = "AKIAIOSFODNN7EXAMPLE"
    with Stubber(ec2) as stub:
        stub.add_client_error("describe_vpc_endpoints", service_error_code="UnauthorizedOperation", service_message=f"key {secret} denied")
        endpoint = VpcEndpoint("vpce-1", EndpointProbe("10.0.0.1", 443))
        result = aws.check_vpc_endpoint(ec2, endpoint, dependency=Dependency("vpc_endpoint", "vpce-1"), timeout_s=2)
    assert result.error_code == "access_denied"
    assert secret not in result.detail


def test_lambda_not_active_is_endpoint_state_with_the_reason():
    lam = _client("lambda")
    configuration = {"State": "Failed", "LastUpdateStatus": "Failed", "StateReasonCode": "SubnetOutOfIPAddresses"}
    with Stubber(lam) as stub:
        stub.add_response("get_function", {"Configuration": configuration}, {"FunctionName": "ingest"})
        result = aws.check_lambda_function(lam, "ingest")
    assert (result.status, result.error_code) == ("unhealthy", "endpoint_state")
    assert "State Failed" in result.detail and "SubnetOutOfIPAddresses" in result.detail


def test_ssm_agents_paginate_and_name_the_missing_and_offline_ones():
    ssm = _client("ssm")
    with Stubber(ssm) as stub:
        stub.add_response(
            "describe_instance_information",
            {"InstanceInformationList": [{"InstanceId": "i-1", "PingStatus": "Online"}], "NextToken": "t"},
        )
        stub.add_response(
            "describe_instance_information", {"InstanceInformationList": [{"InstanceId": "i-2", "PingStatus": "ConnectionLost"}]}
        )
        result = aws.check_ssm_agents(ssm, ["i-1", "i-2", "i-3"])
    assert (result.status, result.error_code) == ("unhealthy", "endpoint_state")
    assert "not registered: i-3" in result.detail and "i-2 ConnectionLost" in result.detail
    assert dict(result.measurements) == {"agents_online": 1, "agents_required": 3}


# ---------------------------------------------------------------------------------------------- agents


NOW = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
GATEWAY = AgentDependency("acme-dc1-gateway", max_heartbeat_age_seconds=90)


def test_an_agent_never_seen_is_heartbeat_stale_without_an_age():
    result = agents.check_agent(GATEWAY, None, now=NOW)
    assert (result.status, result.error_code) == ("unhealthy", "heartbeat_stale")
    assert "no heartbeat received" in result.detail
    assert dict(result.measurements) == {}
    assert result.dependency == Dependency("agent", "acme-dc1-gateway")


def test_an_agent_older_than_allowed_is_heartbeat_stale():
    dependency = Dependency("agent", "acme-dc1-gateway", "acme", "on_prem")
    result = agents.check_agent(GATEWAY, NOW - timedelta(seconds=91), dependency=dependency, now=NOW)
    assert (result.status, result.error_code) == ("unhealthy", "heartbeat_stale")
    assert result.measurements["heartbeat_age_seconds"] == 91
    assert "90 s allowed" in result.detail
    assert result.dependency == dependency


def test_a_recent_heartbeat_is_healthy():
    result = agents.check_agent(GATEWAY, NOW - timedelta(seconds=90), now=NOW)
    assert (result.status, result.error_code) == ("healthy", None)
    assert result.measurements["heartbeat_age_seconds"] == 90


def test_a_naive_heartbeat_time_is_unknown_not_raised():
    result = agents.check_agent(GATEWAY, datetime(2026, 12, 8, 2, 0), now=NOW)
    assert result.status == "unknown"
    assert "timezone-aware" in result.detail


# ---------------------------------------------------------------------------------------------- Kubernetes errors


def test_kubernetes_errors_map_to_the_closed_list():
    import urllib3.exceptions as http
    from kubernetes.client.exceptions import ApiException

    def outcome(err: Exception) -> tuple[str, str | None]:
        found = kubernetes.classify_kubernetes_error(err)
        return found.status, found.error_code

    assert outcome(ApiException(status=403, reason="Forbidden")) == ("unhealthy", "access_denied")
    assert outcome(ApiException(status=401, reason="Unauthorized")) == ("unhealthy", "access_denied")
    assert outcome(ApiException(status=404, reason="Not Found")) == ("unhealthy", "not_found")
    assert outcome(ApiException(status=503, reason="Unavailable")) == ("unhealthy", "http_503")
    refused = http.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    assert outcome(http.MaxRetryError(None, "/api/v1/nodes", refused)) == ("unhealthy", "refused")
    assert outcome(http.ReadTimeoutError(None, "/api/v1/nodes", "read timed out")) == ("unhealthy", "timeout")
    assert outcome(ValueError("odd")) == ("unknown", None)


def test_the_node_selector_becomes_a_label_selector():
    assert kubernetes.label_selector({"zone": "dc1", "network": "private"}) == "network=private,zone=dc1"
    assert kubernetes.label_selector({}) == ""


# ---------------------------------------------------------------------------------------------- specs


def test_a_spec_round_trips_through_json():
    spec = health.runner_spec(
        "vpc_endpoint",
        "vpce-1",
        tenant="globex",
        network_profile="privatelink",
        conn_id="aws_health",
        region_name="eu-west-1",
        probe={"host": "api.partner.example", "port": 443, "tls_server_name": "api.partner.example"},
    )
    data = json.loads(json.dumps(spec.as_dict()))
    assert health.DependencySpec.from_dict(data) == spec
    assert data["options"] == {"probe": {"host": "api.partner.example", "port": 443, "tls_server_name": "api.partner.example"}}
    assert spec.dependency == Dependency("vpc_endpoint", "vpce-1", "globex", "privatelink")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"kind": "vpn", "id": "x"}, "kind 'vpn' is not one of vpn_connection"),
        ({"id": "x"}, "kind is missing"),
        ({"kind": "url", "id": "tcp://db:5432", "colour": "red"}, "unknown key 'colour'"),
        ({"kind": "vpn_connection", "id": VPN, "options": {"min_tunnels_up": 0}}, "option min_tunnels_up: 0 is not a whole number >= 1"),
        ({"kind": "vpn_connection", "id": VPN, "options": {"tunnels": 2}}, "unknown option 'tunnels'"),
        ({"kind": "vpc_endpoint", "id": "vpce-1"}, "option 'probe' is required"),
        ({"kind": "vpc_endpoint", "id": "vpce-1", "options": {"probe": {"host": "h", "port": 70000}}}, "probe.port: 70000 is not a port"),
        ({"kind": "url", "id": "ftp://db/"}, "scheme 'ftp' is not one of http, https, tcp"),
        ({"kind": "url", "id": "https://svc:pw@db/health"}, "health URL 'https://db/health' carries credentials"),
        ({"kind": "url", "id": "tcp://db:5432", "conn_id": "aws_default"}, "conn_id 'aws_default' is not used"),
        ({"kind": "ssm_agents", "id": "hosts", "options": {"instance_ids": "i-1"}}, "not a non-empty list of instance ids"),
        ({"kind": "kubernetes_nodes", "id": "dc1", "options": {"node_selector": {"zone": 1}}}, "not a mapping of label names"),
        ({"kind": "ecs_cluster", "id": "c", "network_profile": "moon"}, "network_profile 'moon' is not one of"),
        ({"kind": "agent", "id": "gw", "region_name": "eu-west-1"}, "region_name 'eu-west-1' is only for AWS kinds"),
        ({"kind": "glue_job", "id": ""}, "id '' is not a non-empty string"),
    ],
)
def test_a_bad_spec_raises_value_error_naming_the_key_and_value(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        health.DependencySpec.from_dict(data)


ACME = f"""\
version: 1
tenants:
  acme:
    allowed_network_profiles: [public, vpn, on_prem]
    network_profiles:
      vpn:
        dependencies:
          vpn_connections:
            - {{id: {VPN}, min_tunnels_up: 2}}
          vpc_endpoints:
            - id: vpce-01234567
              probe: {{host: 10.20.0.15, port: 5432}}
          agents:
            - {{name: acme-dc1-gateway, max_heartbeat_age_seconds: 90}}
          health_urls: [tcp://warehouse-db.corp.acme.example:5432]
          degraded: refuse
          require_healthy: true
      on_prem:
        dependencies:
          agents:
            - {{name: acme-dc2-gateway}}
"""


@pytest.fixture
def acme(policy_file):
    policy_file(ACME)


def test_specs_for_profile_follow_the_policy(acme):
    specs = health.specs_for_profile("acme", "vpn")
    assert [(s.kind, s.id, dict(s.options)) for s in specs] == [
        ("vpn_connection", VPN, {"min_tunnels_up": 2}),
        ("vpc_endpoint", "vpce-01234567", {"probe": {"host": "10.20.0.15", "port": 5432}}),
        ("agent", "acme-dc1-gateway", {"max_heartbeat_age_seconds": 90}),
        ("url", "tcp://warehouse-db.corp.acme.example:5432", {}),
    ]
    assert {(s.tenant, s.network_profile) for s in specs} == {("acme", "vpn")}
    assert health.degraded_policy("acme", "vpn") == "refuse"
    assert health.require_healthy_default("acme", "vpn") is True
    assert health.degraded_policy("acme", "on_prem") == "allow"
    assert health.require_healthy_default("acme", "on_prem") is False


def test_a_profile_with_no_dependencies_gives_none(acme):
    assert health.specs_for_profile("acme", "public") == []
    assert health.specs_for_profile("default", "vpn") == []  # the default tenant: the defaults' (none)


def test_an_unknown_tenant_or_profile_raises_naming_it(acme):
    with pytest.raises(ValueError, match="tenant 'globex' is not declared in the policy .*tenants: acme"):
        health.all_specs("globex")
    with pytest.raises(ValueError, match="tenant 'acme': network profile 'vpnn' is not one of public, vpn"):
        health.specs_for_profile("acme", "vpnn")
    with pytest.raises(ValueError, match="tenant 'globex': network profile 'vpnn'"):
        health.degraded_policy("globex", "vpnn")


def test_a_tenant_the_policy_does_not_declare_relies_on_what_the_defaults_name(policy_file):
    """Runners of an undeclared tenant run under the defaults: their health gate is the defaults' too."""
    policy_file(
        "version: 1\ndefaults:\n  network_profiles:\n    vpn:\n      dependencies:\n"
        "        health_urls: [tcp://db.internal:5432]\n        require_healthy: true\n        degraded: refuse\n"
        "tenants:\n  acme: {}\n"
    )
    assert [(s.kind, s.id, s.tenant) for s in health.specs_for_profile("newcomer", "vpn")] == [
        ("url", "tcp://db.internal:5432", "newcomer")
    ]
    assert health.require_healthy_default("newcomer", "vpn") is True
    assert health.degraded_policy("newcomer", "vpn") == "refuse"


def test_all_specs_cover_every_tenant_and_allowed_profile(acme):
    everything = health.all_specs()
    assert [(s.tenant, s.network_profile, s.id) for s in everything] == [
        ("acme", "vpn", VPN),
        ("acme", "vpn", "vpce-01234567"),
        ("acme", "vpn", "acme-dc1-gateway"),
        ("acme", "vpn", "tcp://warehouse-db.corp.acme.example:5432"),
        ("acme", "on_prem", "acme-dc2-gateway"),
    ]
    assert health.all_specs("default") == []


# ---------------------------------------------------------------------------------------------- checks


class _FakeHook:
    made: list[tuple[Any, dict[str, Any]]] = []

    def __init__(self, hook_class: Any, kwargs: dict[str, Any], client: Any) -> None:
        self.conn = client
        _FakeHook.made.append((hook_class, kwargs))


def test_aws_clients_come_from_the_upstream_hooks_once_per_connection_region_and_service(monkeypatch):
    from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
    from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook

    from barecount_provider import connections

    _FakeHook.made = []
    ec2, lam = _client("ec2"), _client("lambda")
    clients = {EC2Hook: ec2, LambdaHook: lam}
    monkeypatch.setattr(connections, "hook", lambda hook_class, **kwargs: _FakeHook(hook_class, kwargs, clients[hook_class]))
    active = {"Configuration": {"State": "Active", "LastUpdateStatus": "Successful"}}
    telemetry = [{"Status": "UP", "OutsideIpAddress": "203.0.113.1"}, {"Status": "UP", "OutsideIpAddress": "203.0.113.2"}]
    with Stubber(ec2) as ec2_stub, Stubber(lam) as lam_stub:
        for _ in range(2):
            ec2_stub.add_response(
                "describe_vpn_connections", {"VpnConnections": [{"VpnConnectionId": VPN, "State": "available", "VgwTelemetry": telemetry}]}
            )
        lam_stub.add_response("get_function", active)
        specs = [
            health.runner_spec("vpn_connection", VPN, conn_id="aws_health", region_name="eu-west-1", min_tunnels_up=2),
            health.runner_spec("vpn_connection", VPN, conn_id="aws_health", region_name="eu-west-1"),
            health.runner_spec("lambda_function", "ingest", conn_id="aws_health", region_name="eu-west-1", qualifier="live"),
        ]
        verdict = health.check(specs, timeout_s=3)
    assert verdict.passed, verdict.message()
    assert [r.status for r in verdict.results] == ["healthy"] * 3
    assert dict(verdict.results[0].measurements) == {"tunnels_up": 2, "tunnels_required": 2}
    # One hook per (connection, region, service): the two VPN checks share the EC2 client.
    assert sorted(hook_class.__name__ for hook_class, _ in _FakeHook.made) == ["EC2Hook", "LambdaHook"]
    for hook_class, kwargs in _FakeHook.made:
        assert kwargs["aws_conn_id"] == "aws_health" and kwargs["region_name"] == "eu-west-1"
        client_config = kwargs["config"]
        assert 0 < client_config.connect_timeout <= 3 and 0 < client_config.read_timeout <= 3
        assert client_config.retries == {"total_max_attempts": 1}
        assert kwargs.get("api_type") == ("client_type" if hook_class is EC2Hook else None)


def test_the_default_connection_and_timeout_come_from_the_config(monkeypatch):
    from barecount_provider import config, connections

    monkeypatch.setenv("AIRFLOW__BARECOUNT__HEALTH_AWS_CONN_ID", "aws_fleet")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__HEALTH_TIMEOUT_SECONDS", "7")
    config.cache_clear()
    seen: list[dict[str, Any]] = []

    def hook(hook_class: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise RuntimeError("no AWS here")

    monkeypatch.setattr(connections, "hook", hook)
    verdict = health.check([health.runner_spec("ecs_cluster", "runners")])
    assert seen[0]["aws_conn_id"] == "aws_fleet"
    assert 6 < seen[0]["config"].read_timeout <= 7
    (result,) = verdict.results
    assert result.status == "unknown" and "RuntimeError: no AWS here" in result.detail
    assert not verdict.passed


def test_health_timeout_seconds_is_validated(monkeypatch):
    from barecount_provider import config

    monkeypatch.setenv("AIRFLOW__BARECOUNT__HEALTH_TIMEOUT_SECONDS", "601")
    config.cache_clear()
    try:
        with pytest.raises(ValueError, match="health_timeout_seconds"):
            config.health_timeout_seconds()
    finally:
        monkeypatch.undo()
        config.cache_clear()
    assert config.health_timeout_seconds() == 10
    assert config.health_kubernetes_conn_id() == "kubernetes_default"


def test_agents_last_heartbeats_are_read_once_per_round(monkeypatch, acme):
    from barecount_provider.health import records

    calls: list[list[str]] = []

    def last_heartbeats(names):
        calls.append(list(names))
        return {"acme-dc1-gateway": datetime.now(UTC) - timedelta(seconds=5)}

    monkeypatch.setattr(records, "last_heartbeats", last_heartbeats)
    specs = [s for s in health.all_specs("acme") if s.kind == "agent"]
    verdict = health.check(specs, timeout_s=3, degraded=health.degraded_policy("acme", "vpn"))
    assert calls == [["acme-dc1-gateway", "acme-dc2-gateway"]]
    assert [(r.dependency.id, r.status, r.error_code) for r in verdict.results] == [
        ("acme-dc1-gateway", "healthy", None),
        ("acme-dc2-gateway", "unhealthy", "heartbeat_stale"),
    ]
    message = verdict.message()
    assert "agent 'acme-dc2-gateway' (tenant acme, network profile on_prem) is unhealthy, error_code heartbeat_stale" in message


def test_kubernetes_nodes_use_the_hooks_core_v1_client(monkeypatch):
    from barecount_provider import connections

    calls: list[dict[str, Any]] = []

    class CoreV1:
        def list_node(self, **kwargs):
            calls.append(kwargs)
            ready = SimpleNamespace(type="Ready", status="True")
            node = SimpleNamespace(metadata=SimpleNamespace(name="n1", labels={"zone": "dc1"}), status=SimpleNamespace(conditions=[ready]))
            return SimpleNamespace(items=[node])

    hooks: list[tuple[Any, dict[str, Any]]] = []

    def hook(hook_class, **kwargs):
        hooks.append((hook_class, kwargs))
        return SimpleNamespace(core_v1_client=CoreV1())

    monkeypatch.setattr(connections, "hook", hook)
    spec = health.runner_spec("kubernetes_nodes", "dc1", node_selector={"zone": "dc1"})
    verdict = health.check([spec], timeout_s=2)
    assert verdict.passed, verdict.message()
    assert hooks[0][0].__name__ == "KubernetesHook" and hooks[0][1] == {"conn_id": "kubernetes_default"}
    assert calls[0]["label_selector"] == "zone=dc1" and 0 < calls[0]["_request_timeout"] <= 2


def test_url_checks_run_through_check_async(monkeypatch):
    import asyncio

    from barecount_provider.health import network

    seen: list[tuple[str, float]] = []

    def check_url(url, *, timeout_s, dependency):
        seen.append((url, timeout_s))
        return network.HealthResult(status="unhealthy", dependency=dependency, latency_ms=1.0, detail="refused", error_code="refused")

    monkeypatch.setattr(network, "check_url", check_url)
    spec = health.runner_spec("url", "tcp://db.internal:5432", tenant="acme", network_profile="vpn")
    verdict = asyncio.run(health.check_async([spec], timeout_s=2))
    assert seen[0][0] == "tcp://db.internal:5432" and 0 < seen[0][1] <= 2
    assert not verdict.passed
    assert verdict.as_dict()["results"][0]["error_code"] == "refused"


def test_agents_are_judged_by_the_heartbeats_in_barecounts_database(tmp_path, monkeypatch, acme):
    """Heartbeats recorded by health.records (SQLite under evidence_dir), read back by the agent checks."""
    from barecount_provider import config
    from barecount_provider.health import records

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    records.clear_caches()
    try:
        records.record_heartbeat(
            "acme-dc1-gateway", tenants=["acme"], version="1.0", capabilities=[], reported_by=None,
            at=datetime.now(UTC) - timedelta(seconds=30),
        )
        records.record_heartbeat(
            "acme-dc2-gateway", tenants=["acme"], version="1.0", capabilities=[], reported_by=None,
            at=datetime.now(UTC) - timedelta(seconds=600),
        )
        specs = [s for s in health.all_specs("acme") if s.kind == "agent"]
        results = health.check(specs, timeout_s=5).results
    finally:
        records.clear_caches()
    assert [(r.dependency.id, r.status, r.error_code) for r in results] == [
        ("acme-dc1-gateway", "healthy", None),
        ("acme-dc2-gateway", "unhealthy", "heartbeat_stale"),  # 600 s old, 120 s allowed (the default)
    ]
    assert 29 <= results[0].measurements["heartbeat_age_seconds"] < 90
