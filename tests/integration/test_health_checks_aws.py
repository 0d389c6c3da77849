"""The AWS health checks against moto in server mode on 127.0.0.1, through runtime/health.py: specs checked
with clients the upstream hooks build from the Airflow connection ``aws_moto`` (real boto3, real HTTP), and
VPC endpoints probed through a real TCP server on 127.0.0.1.

What moto 5.2.5 lacks, the tests set on moto's in-process backend (the server runs in this process), and each
such test says "in-process backend" in its name and docstring: VPN tunnels' ``VgwTelemetry`` (moto creates
VPN connections without it; the backend's ``vgw_telemetry`` attribute is what moto serializes), a VPC
endpoint's state other than ``available``, and SSM ``DescribeInstanceInformation`` (not implemented: a
response method on moto's SSM responses, reading the agents' ping statuses the test sets).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from barecount_provider.health.result import HealthResult
from barecount_provider.runtime import health

from .conftest import MOTO_CONN_ID, REGION, MotoServer

pytestmark = pytest.mark.integration


def _ec2_backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    return ec2_backends[DEFAULT_ACCOUNT_ID][REGION]


def _check(kind: str, id: str, **options: Any) -> HealthResult:
    spec = health.runner_spec(kind, id, tenant="acme", network_profile="vpn", conn_id=MOTO_CONN_ID, **options)
    (result,) = health.check([spec], timeout_s=5).results
    assert result.dependency.as_dict() == {"kind": kind, "id": id, "tenant": "acme", "network_profile": "vpn"}
    return result


@pytest.fixture
def tcp_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts and closes every connection; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.close()

    thread = threading.Thread(target=serve, name="tcp-server", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------- VPN


@pytest.fixture(scope="module")
def vpn_id(moto_server: MotoServer) -> str:
    ec2 = moto_server.client("ec2")
    customer = ec2.create_customer_gateway(Type="ipsec.1", PublicIp="198.51.100.7", BgpAsn=65010)
    gateway = ec2.create_vpn_gateway(Type="ipsec.1")
    return str(
        ec2.create_vpn_connection(
            Type="ipsec.1",
            CustomerGatewayId=customer["CustomerGateway"]["CustomerGatewayId"],
            VpnGatewayId=gateway["VpnGateway"]["VpnGatewayId"],
        )["VpnConnection"]["VpnConnectionId"]
    )


@pytest.fixture
def tunnels(vpn_id: str) -> Iterator[Any]:
    """Sets the VPN connection's ``VgwTelemetry`` on moto's in-process backend: ``tunnels("UP", "DOWN")``."""
    connection = _ec2_backend().vpn_connections[vpn_id]
    changed = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)

    def set_statuses(*statuses: str, state: str = "available") -> None:
        connection.state = state
        connection.vgw_telemetry = [
            {
                "OutsideIpAddress": f"203.0.113.{index + 1}",
                "Status": status,
                "LastStatusChange": changed + timedelta(minutes=index),
                "StatusMessage": "" if status == "UP" else "IPSEC IS DOWN",
                "AcceptedRouteCount": 4 if status == "UP" else 0,
            }
            for index, status in enumerate(statuses)
        ]

    yield set_statuses
    connection.state = "available"
    connection.vgw_telemetry = None


def test_vpn_with_enough_tunnels_up_is_healthy_in_process_backend(vpn_id: str, tunnels: Any) -> None:
    """VgwTelemetry set on moto's in-process backend: both tunnels UP, two required."""
    tunnels("UP", "UP")
    result = _check("vpn_connection", vpn_id, min_tunnels_up=2)
    assert (result.status, result.error_code) == ("healthy", None), result.detail
    assert dict(result.measurements) == {"tunnels_up": 2, "tunnels_required": 2}
    assert "tunnel 203.0.113.1 UP since 2026-12-08T01:00:00+00:00 4 routes accepted" in result.detail


def test_vpn_with_fewer_tunnels_up_than_required_is_degraded_in_process_backend(vpn_id: str, tunnels: Any) -> None:
    """VgwTelemetry set on moto's in-process backend: one tunnel UP, two required."""
    tunnels("UP", "DOWN")
    result = _check("vpn_connection", vpn_id, min_tunnels_up=2)
    assert (result.status, result.error_code) == ("degraded", "tunnel_down")
    assert dict(result.measurements) == {"tunnels_up": 1, "tunnels_required": 2}
    assert "tunnel 203.0.113.2 DOWN" in result.detail and "IPSEC IS DOWN" in result.detail
    # One UP is enough when the profile asks for one.
    assert _check("vpn_connection", vpn_id, min_tunnels_up=1).status == "healthy"


def test_vpn_with_no_tunnel_up_is_tunnel_down_in_process_backend(vpn_id: str, tunnels: Any) -> None:
    """VgwTelemetry set on moto's in-process backend: both tunnels DOWN."""
    tunnels("DOWN", "DOWN")
    result = _check("vpn_connection", vpn_id)
    assert (result.status, result.error_code) == ("unhealthy", "tunnel_down")
    assert result.measurements["tunnels_up"] == 0


def test_vpn_not_available_is_tunnel_down_with_its_state_in_process_backend(vpn_id: str, tunnels: Any) -> None:
    """The connection's state set to ``deleting`` on moto's in-process backend, its tunnels still UP."""
    tunnels("UP", "UP", state="deleting")
    result = _check("vpn_connection", vpn_id)
    assert (result.status, result.error_code) == ("unhealthy", "tunnel_down")
    assert f"VPN connection {vpn_id} is deleting, not available" in result.detail


def test_an_unknown_vpn_connection_is_not_found(moto_server: MotoServer) -> None:
    result = _check("vpn_connection", "vpn-0000000000000dead")
    assert (result.status, result.error_code) == ("unhealthy", "not_found")
    assert "InvalidVpnConnectionID.NotFound" in result.detail or "does not exist" in result.detail


# ---------------------------------------------------------------------------------------------- VPC endpoints


@pytest.fixture(scope="module")
def endpoint_id(moto_server: MotoServer) -> str:
    ec2 = moto_server.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    created = ec2.create_vpc_endpoint(
        VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.execute-api", VpcEndpointType="Interface"
    )
    return str(created["VpcEndpoint"]["VpcEndpointId"])


def test_an_available_endpoint_is_probed_and_keeps_the_probes_timings(endpoint_id: str, tcp_server: int) -> None:
    result = _check("vpc_endpoint", endpoint_id, probe={"host": "127.0.0.1", "port": tcp_server})
    assert (result.status, result.error_code) == ("healthy", None), result.detail
    assert result.detail.startswith(f"VPC endpoint {endpoint_id} available; 127.0.0.1:{tcp_server}: TCP connect")
    assert result.phases.dns is not None and result.phases.connect is not None
    assert result.phases.tls is None and result.phases.http is None
    assert result.latency_ms >= result.phases.connect


def test_an_available_endpoint_whose_target_refuses_is_refused(endpoint_id: str) -> None:
    result = _check("vpc_endpoint", endpoint_id, probe={"host": "127.0.0.1", "port": _closed_port()})
    assert (result.status, result.error_code) == ("unhealthy", "refused")
    assert result.phases.connect is not None


def test_an_endpoint_not_available_is_endpoint_state_in_process_backend(endpoint_id: str, tcp_server: int) -> None:
    """The endpoint's state set to ``pendingAcceptance`` on moto's in-process backend: not probed."""
    endpoint = _ec2_backend().vpc_end_points[endpoint_id]
    endpoint.state = "pendingAcceptance"
    try:
        result = _check("vpc_endpoint", endpoint_id, probe={"host": "127.0.0.1", "port": tcp_server})
    finally:
        endpoint.state = "available"
    assert (result.status, result.error_code) == ("unhealthy", "endpoint_state")
    assert f"VPC endpoint {endpoint_id} is pendingAcceptance, not available" in result.detail
    assert result.phases.connect is None  # nothing was probed


def test_an_unknown_endpoint_is_not_found(moto_server: MotoServer) -> None:
    result = _check("vpc_endpoint", "vpce-0000000000000dead", probe={"host": "127.0.0.1", "port": 9})
    assert (result.status, result.error_code) == ("unhealthy", "not_found")


# ---------------------------------------------------------------------------------------------- URLs, the profile


def test_a_profiles_urls_are_checked_end_to_end(tcp_server: int, policy_file: Any, moto_server: MotoServer) -> None:
    closed = _closed_port()
    policy_file(
        "version: 1\ntenants:\n  acme:\n    allowed_network_profiles: [vpn]\n    network_profiles:\n      vpn:\n"
        f"        dependencies:\n          health_urls: [tcp://127.0.0.1:{tcp_server}, tcp://127.0.0.1:{closed}]\n"
    )
    verdict = health.check(health.specs_for_profile("acme", "vpn"), timeout_s=5)
    assert [(r.dependency.id, r.status, r.error_code) for r in verdict.results] == [
        (f"tcp://127.0.0.1:{tcp_server}", "healthy", None),
        (f"tcp://127.0.0.1:{closed}", "unhealthy", "refused"),
    ]
    assert not verdict.passed
    assert f"url 'tcp://127.0.0.1:{closed}' (tenant acme, network profile vpn) is unhealthy, error_code refused" in verdict.message()


# ---------------------------------------------------------------------------------------------- runners


HANDLER = "def handler(event, context):\n    return event\n"


@pytest.fixture(scope="module")
def function_name(moto_server: MotoServer) -> str:
    role = moto_server.client("iam").create_role(
        RoleName="barecount-health-lambda",
        AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        ),
    )["Role"]["Arn"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HANDLER)
    client = moto_server.client("lambda")
    client.create_function(
        FunctionName="barecount-health-echo", Runtime="python3.11", Role=role, Handler="app.handler",
        Code={"ZipFile": buffer.getvalue()}, Publish=True,
    )
    client.create_alias(FunctionName="barecount-health-echo", Name="live", FunctionVersion="1")
    return "barecount-health-echo"


def test_lambda_function_ready_and_not_found(function_name: str) -> None:
    assert _check("lambda_function", function_name).status == "healthy"
    live = health.check([health.runner_spec("lambda_function", function_name, conn_id=MOTO_CONN_ID, qualifier="live")], timeout_s=5)
    (result,) = live.results
    assert (result.status, result.dependency.id) == ("healthy", function_name), result.detail
    assert f"Lambda function {function_name}:live: State Active, LastUpdateStatus Successful" == result.detail
    missing = _check("lambda_function", "barecount-health-missing")
    assert (missing.status, missing.error_code) == ("unhealthy", "not_found")
    alias = health.check([health.runner_spec("lambda_function", function_name, conn_id=MOTO_CONN_ID, qualifier="nope")], timeout_s=5)
    assert alias.results[0].error_code == "not_found"


def test_ecs_cluster_ready_without_capacity_and_not_found(moto_server: MotoServer) -> None:
    ecs = moto_server.client("ecs")
    ecs.create_cluster(clusterName="barecount-health-fargate", capacityProviders=["FARGATE", "FARGATE_SPOT"])
    ecs.create_cluster(clusterName="barecount-health-empty")
    ready = _check("ecs_cluster", "barecount-health-fargate")
    assert ready.status == "healthy", ready.detail
    assert "capacity providers FARGATE, FARGATE_SPOT" in ready.detail
    empty = _check("ecs_cluster", "barecount-health-empty")
    assert (empty.status, empty.error_code) == ("unhealthy", "endpoint_state")
    assert "ACTIVE without capacity" in empty.detail
    missing = _check("ecs_cluster", "barecount-health-missing")
    assert (missing.status, missing.error_code) == ("unhealthy", "not_found")
    assert "MISSING" in missing.detail


def test_glue_job_ready_a_missing_connection_and_a_missing_job(moto_server: MotoServer) -> None:
    glue = moto_server.client("glue")
    glue.create_connection(
        ConnectionInput={
            "Name": "barecount-health-warehouse",
            "ConnectionType": "JDBC",
            "ConnectionProperties": {"JDBC_CONNECTION_URL": "jdbc:postgresql://warehouse:5432/db", "USERNAME": "etl", "PASSWORD": "x"},
        }
    )
    command = {"Name": "glueetl", "ScriptLocation": "s3://barecount-health/etl.py"}
    role = "arn:aws:iam::123456789012:role/glue"
    glue.create_job(Name="barecount-health-etl", Role=role, Command=command, Connections={"Connections": ["barecount-health-warehouse"]})
    glue.create_job(Name="barecount-health-broken", Role=role, Command=command, Connections={"Connections": ["barecount-health-gone"]})
    ready = _check("glue_job", "barecount-health-etl")
    assert ready.status == "healthy", ready.detail
    assert "its connections barecount-health-warehouse exist" in ready.detail
    broken = _check("glue_job", "barecount-health-broken")
    assert (broken.status, broken.error_code) == ("unhealthy", "not_found")
    assert "its connection barecount-health-gone does not exist" in broken.detail
    missing = _check("glue_job", "barecount-health-missing")
    assert (missing.status, missing.error_code) == ("unhealthy", "not_found")


def test_emr_serverless_application_ready_stopped_and_not_found(moto_server: MotoServer) -> None:
    emr = moto_server.client("emr-serverless")
    application = emr.create_application(name="barecount-health-spark", releaseLabel="emr-7.0.0", type="SPARK")["applicationId"]
    created = _check("emr_serverless_application", application)
    assert created.status == "healthy", created.detail
    assert created.detail.startswith(f"EMR Serverless application {application} (barecount-health-spark) is ")
    assert created.detail.rsplit(" ", 1)[1] in ("CREATED", "STARTED")
    emr.stop_application(applicationId=application)
    stopped = _check("emr_serverless_application", application)
    assert (stopped.status, stopped.error_code) == ("unhealthy", "endpoint_state")
    assert "is STOPPED, not CREATED or STARTED" in stopped.detail
    missing = _check("emr_serverless_application", "00fbarecountmissing")
    assert (missing.status, missing.error_code) == ("unhealthy", "not_found")


@pytest.fixture
def ssm_agents(moto_server: MotoServer) -> Iterator[dict[str, str]]:
    """SSM DescribeInstanceInformation on moto's in-process backend: the agents of the dict the test fills
    (instance id -> PingStatus) answer, paged by MaxResults."""
    from moto.core.responses import ActionResult
    from moto.ssm.responses import SimpleSystemManagerResponse

    assert not hasattr(SimpleSystemManagerResponse, "describe_instance_information"), "moto has it now: use it"
    statuses: dict[str, str] = {}

    def describe_instance_information(self: Any) -> Any:
        wanted: set[str] | None = None
        for entry in self._get_param("Filters") or []:
            if entry.get("Key") == "InstanceIds":
                wanted = set(entry.get("Values") or [])
        found = [
            {"InstanceId": instance, "PingStatus": status, "PlatformType": "Linux", "ResourceType": "EC2Instance"}
            for instance, status in sorted(statuses.items())
            if wanted is None or instance in wanted
        ]
        start = int(self._get_param("NextToken") or 0)
        size = int(self._get_param("MaxResults") or 50)
        page: dict[str, Any] = {"InstanceInformationList": found[start : start + size]}
        if start + size < len(found):
            page["NextToken"] = str(start + size)
        return ActionResult(page)

    responses: Any = SimpleSystemManagerResponse
    responses.describe_instance_information = describe_instance_information
    try:
        yield statuses
    finally:
        del responses.describe_instance_information


def test_ssm_agents_online_lost_and_unregistered_in_process_backend(ssm_agents: dict[str, str]) -> None:
    """DescribeInstanceInformation answered by moto's in-process backend (moto lacks it)."""
    hosts = [f"i-0barecount{index:07d}" for index in range(60)]  # more than one page of 50
    ssm_agents.update({host: "Online" for host in hosts})
    online = _check("ssm_agents", "dedicated-hosts", instance_ids=hosts)
    assert online.status == "healthy", online.detail
    assert dict(online.measurements) == {"agents_online": 60, "agents_required": 60}
    ssm_agents[hosts[59]] = "ConnectionLost"
    lost = _check("ssm_agents", "dedicated-hosts", instance_ids=hosts)
    assert (lost.status, lost.error_code) == ("unhealthy", "endpoint_state")
    assert f"{hosts[59]} ConnectionLost" in lost.detail
    unregistered = _check("ssm_agents", "dedicated-hosts", instance_ids=[hosts[0], "i-0barecountmissing"])
    assert (unregistered.status, unregistered.error_code) == ("unhealthy", "not_found")
    assert "not registered: i-0barecountmissing" in unregistered.detail


# ---------------------------------------------------------------------------------------------- many at once


def test_many_checks_share_clients_and_finish_together(vpn_id: str, tunnels: Any, endpoint_id: str, tcp_server: int) -> None:
    """VgwTelemetry set on moto's in-process backend; forty checks of three kinds in one round."""
    tunnels("UP", "UP")
    specs = [health.runner_spec("vpn_connection", vpn_id, conn_id=MOTO_CONN_ID) for _ in range(20)] + [
        health.runner_spec("vpc_endpoint", endpoint_id, conn_id=MOTO_CONN_ID, probe={"host": "127.0.0.1", "port": tcp_server})
        for _ in range(20)
    ]
    verdict = health.check(specs, timeout_s=10)
    assert verdict.passed, verdict.message()
    assert len(verdict.results) == 40
