"""AWS health checks: VPN tunnels, VPC interface endpoints, and the runners' readiness from the services.

Each check takes a boto3 client (built by the caller: ``barecount_provider.runtime.health`` builds them from
the upstream amazon hooks, with short timeouts and no retries) and returns one ``HealthResult``; none raises.
The services' errors map to the closed list of error codes in one place, :func:`classify_aws_error`:

======================================================================  ================
ClientError code                                                         error code
======================================================================  ================
ending in ``NotFound`` or ``NotFoundException`` (``ResourceNotFoundException``,  ``not_found``
``EntityNotFoundException``, ``ClusterNotFoundException``,
``InvalidVpnConnectionID.NotFound``, ``InvalidVpcEndpointId.NotFound``)
``AccessDenied*``, ``UnauthorizedOperation``, ``UnrecognizedClientException``  ``access_denied``
botocore ``ConnectTimeoutError``, ``ReadTimeoutError``                   ``timeout``
botocore ``EndpointConnectionError``                                     ``refused``
anything else                                                            ``unknown`` (no code)
======================================================================  ================

A resource the service reports in a state other than the ready one (a VPC endpoint not ``available``, a
Lambda function not ``Active``/``Successful``, ...) is ``unhealthy`` with ``endpoint_state``; a VPN connection
with too few tunnels UP is ``tunnel_down`` (``degraded`` while at least one is UP).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from barecount_provider.health.network import probe
from barecount_provider.health.plan import Outcome, timed
from barecount_provider.health.result import Dependency, HealthResult
from barecount_provider.policy.model import VpcEndpoint, VpnConnection
from barecount_provider.redaction import redact_text

_NOT_FOUND_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "EntityNotFoundException",
        "ClusterNotFoundException",
        "InvalidVpnConnectionID.NotFound",
        "InvalidVpcEndpointId.NotFound",
    }
)
_ACCESS_DENIED_CODES = frozenset({"UnauthorizedOperation", "AccessDeniedException", "UnrecognizedClientException"})
FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")
EMR_SERVERLESS_READY = ("CREATED", "STARTED")


def _error_text(err: BaseException) -> str:
    try:
        return redact_text(str(err))
    except Exception:  # pragma: no cover - redaction never stops a check from answering
        return type(err).__name__


def classify_aws_error(err: Exception) -> Outcome:
    """The outcome of an error a boto3 call raised (the table in the module's docstring)."""
    text = _error_text(err)
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code") or "")
        if code in _NOT_FOUND_CODES or code.endswith(("NotFound", "NotFoundException")):
            return Outcome("unhealthy", f"not found: {text}", "not_found")
        if code in _ACCESS_DENIED_CODES or code.startswith("AccessDenied"):
            return Outcome("unhealthy", f"access denied: {text}", "access_denied")
        return Outcome("unknown", f"{code or 'ClientError'}: {text}")
    if isinstance(err, ConnectTimeoutError | ReadTimeoutError):
        return Outcome("unhealthy", f"the service did not answer in time: {text}", "timeout")
    if isinstance(err, EndpointConnectionError):
        return Outcome("unhealthy", f"the service cannot be reached: {text}", "refused")
    return Outcome("unknown", f"{type(err).__name__}: {text}")


def _checked(dependency: Dependency, body: Callable[[], Outcome | HealthResult]) -> HealthResult:
    return timed(dependency, body, classify_aws_error)


def _when(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _tunnel(telemetry: Mapping[str, Any]) -> str:
    """One tunnel, for the detail: outside address, status, since when, accepted routes, status message."""
    parts = [f"tunnel {telemetry.get('OutsideIpAddress') or '?'} {telemetry.get('Status') or '?'}"]
    if telemetry.get("LastStatusChange") is not None:
        parts.append(f"since {_when(telemetry['LastStatusChange'])}")
    if telemetry.get("AcceptedRouteCount") is not None:
        parts.append(f"{telemetry['AcceptedRouteCount']} routes accepted")
    if telemetry.get("StatusMessage"):
        parts.append(f"({telemetry['StatusMessage']})")
    return " ".join(parts)


def check_vpn_connection(
    ec2_client: Any, vpn: VpnConnection, *, dependency: Dependency, timeout_s: float | None = None
) -> HealthResult:
    """An EC2 Site-to-Site VPN connection: ``DescribeVpnConnections``, then each tunnel's ``VgwTelemetry``.

    Healthy when at least ``vpn.min_tunnels_up`` tunnels are UP; degraded (``tunnel_down``) when fewer but at
    least one; unhealthy ``tunnel_down`` when none is, or when the connection is not ``available`` (its state
    in the detail). Measurements: ``tunnels_up``, ``tunnels_required``. ``timeout_s`` is bounded by the
    client's own timeouts (the caller builds it so).
    """

    def body() -> Outcome:
        answer = ec2_client.describe_vpn_connections(VpnConnectionIds=[vpn.id])
        connections = [c for c in answer.get("VpnConnections") or [] if c.get("VpnConnectionId") == vpn.id]
        if not connections:
            return Outcome("unhealthy", f"VPN connection {vpn.id} does not exist", "not_found")
        connection = connections[0]
        tunnels = connection.get("VgwTelemetry") or []
        up = sum(1 for tunnel in tunnels if str(tunnel.get("Status", "")).upper() == "UP")
        measurements = {"tunnels_up": up, "tunnels_required": vpn.min_tunnels_up}
        described = "; ".join(_tunnel(tunnel) for tunnel in tunnels) or "no tunnel telemetry"
        state = connection.get("State")
        if state != "available":
            detail = f"VPN connection {vpn.id} is {state}, not available: {described}"
            return Outcome("unhealthy", detail, "tunnel_down", measurements)
        summary = f"VPN connection {vpn.id}: {up} of {len(tunnels)} tunnels UP ({vpn.min_tunnels_up} required): {described}"
        if up >= vpn.min_tunnels_up:
            return Outcome("healthy", summary, None, measurements)
        if up >= 1:
            return Outcome("degraded", summary, "tunnel_down", measurements)
        return Outcome("unhealthy", summary, "tunnel_down", measurements)

    return _checked(dependency, body)


def check_vpc_endpoint(
    ec2_client: Any,
    endpoint: VpcEndpoint,
    *,
    dependency: Dependency,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    cafile: str | None = None,
) -> HealthResult:
    """A VPC interface (PrivateLink) endpoint: ``DescribeVpcEndpoints`` must say ``available`` (else
    ``endpoint_state``), then the network probe through it (``endpoint.probe``: DNS, connect, TLS, HTTP),
    with the time that remains of ``timeout_s``. The result keeps the probe's phase timings; its latency is
    the whole check's."""
    started = time.monotonic()

    def body() -> Outcome | HealthResult:
        answer = ec2_client.describe_vpc_endpoints(VpcEndpointIds=[endpoint.id])
        endpoints = [e for e in answer.get("VpcEndpoints") or [] if e.get("VpcEndpointId") == endpoint.id]
        if not endpoints:
            return Outcome("unhealthy", f"VPC endpoint {endpoint.id} does not exist", "not_found")
        state = str(endpoints[0].get("State") or "")
        if state.lower() != "available":
            return Outcome("unhealthy", f"VPC endpoint {endpoint.id} is {state or 'in no state'}, not available", "endpoint_state")
        remaining = timeout_s - (time.monotonic() - started)
        if remaining <= 0:
            return Outcome("unhealthy", f"VPC endpoint {endpoint.id}: no time left to probe within the {timeout_s:g} s deadline", "timeout")
        target = endpoint.probe
        probed = probe(
            target.host,
            target.port,
            timeout_s=remaining,
            dependency=dependency,
            tls_server_name=target.tls_server_name,
            http_path=target.http_path,
            ssl_context=ssl_context,
            cafile=cafile,
        )
        return HealthResult(
            status=probed.status,
            dependency=probed.dependency,
            latency_ms=probed.latency_ms,
            detail=f"VPC endpoint {endpoint.id} available; {probed.detail}",
            error_code=probed.error_code,
            phases=probed.phases,
            measurements=probed.measurements,
        )

    return _checked(dependency, body)


def _dependency(kind: str, id: str, dependency: Dependency | None) -> Dependency:
    return dependency if dependency is not None else Dependency(kind=kind, id=id)


def check_lambda_function(
    client: Any, function_name: str, qualifier: str | None = None, *, dependency: Dependency | None = None
) -> HealthResult:
    """A Lambda function (at the alias or version ``qualifier``): ``GetFunction`` says ``State=Active`` and
    ``LastUpdateStatus=Successful`` (else ``endpoint_state``, with both and the reasons in the detail)."""
    name = f"{function_name}:{qualifier}" if qualifier else function_name

    def body() -> Outcome:
        kwargs = {"FunctionName": function_name, **({"Qualifier": qualifier} if qualifier else {})}
        configuration = client.get_function(**kwargs).get("Configuration") or {}
        state, update = configuration.get("State"), configuration.get("LastUpdateStatus")
        if state == "Active" and update == "Successful":
            return Outcome("healthy", f"Lambda function {name}: State Active, LastUpdateStatus Successful")
        reasons = [
            f"{key} {configuration[key]}"
            for key in ("StateReasonCode", "StateReason", "LastUpdateStatusReasonCode", "LastUpdateStatusReason")
            if configuration.get(key)
        ]
        detail = f"Lambda function {name}: State {state}, LastUpdateStatus {update}"
        return Outcome("unhealthy", detail + (f" ({'; '.join(reasons)})" if reasons else ""), "endpoint_state")

    return _checked(_dependency("lambda_function", name, dependency), body)


def check_ecs_cluster(client: Any, cluster: str, *, dependency: Dependency | None = None) -> HealthResult:
    """An ECS cluster: ``DescribeClusters`` says ``ACTIVE``, and it has capacity: registered container
    instances, or the ``FARGATE`` / ``FARGATE_SPOT`` capacity provider (else ``endpoint_state``)."""

    def body() -> Outcome:
        answer = client.describe_clusters(clusters=[cluster])
        clusters = answer.get("clusters") or []
        if not clusters:
            reasons = ", ".join(str(f.get("reason")) for f in answer.get("failures") or []) or "not returned"
            return Outcome("unhealthy", f"ECS cluster {cluster} does not exist ({reasons})", "not_found")
        found = clusters[0]
        status = found.get("status")
        instances = int(found.get("registeredContainerInstancesCount") or 0)
        fargate = [p for p in found.get("capacityProviders") or [] if p in FARGATE_PROVIDERS]
        capacity = f"{instances} container instances, capacity providers {', '.join(found.get('capacityProviders') or []) or 'none'}"
        measurements = {"container_instances": instances}
        if status != "ACTIVE":
            return Outcome("unhealthy", f"ECS cluster {cluster} is {status}, not ACTIVE", "endpoint_state", measurements)
        if instances <= 0 and not fargate:
            detail = f"ECS cluster {cluster} is ACTIVE without capacity: {capacity}"
            return Outcome("unhealthy", detail, "endpoint_state", measurements)
        return Outcome("healthy", f"ECS cluster {cluster} is ACTIVE: {capacity}", None, measurements)

    return _checked(_dependency("ecs_cluster", cluster, dependency), body)


def check_glue_job(
    client: Any, job_name: str, *, dependency: Dependency | None = None, timeout_s: float | None = None
) -> HealthResult:
    """A Glue job: ``GetJob``, then ``GetConnection`` of each connection the job names (a missing job or
    connection is ``not_found``). ``timeout_s``, when given, stops between calls once it has passed."""
    started = time.monotonic()

    def body() -> Outcome:
        job = client.get_job(JobName=job_name).get("Job") or {}
        names: Sequence[str] = (job.get("Connections") or {}).get("Connections") or []
        for name in names:
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return Outcome("unhealthy", f"Glue job {job_name}: connection {name} not checked within the {timeout_s:g} s deadline", "timeout")
            outcome = _glue_connection(client, job_name, name)
            if outcome is not None:
                return outcome
        connections = f"its connections {', '.join(names)} exist" if names else "no connections"
        return Outcome("healthy", f"Glue job {job_name} exists, {connections}")

    return _checked(_dependency("glue_job", job_name, dependency), body)


def _glue_connection(client: Any, job_name: str, name: str) -> Outcome | None:
    """None when ``name`` exists; the outcome that says why not otherwise."""
    try:
        client.get_connection(Name=name, HidePassword=True)
    except ClientError as err:
        outcome = classify_aws_error(err)
        if outcome.error_code == "not_found":
            return Outcome("unhealthy", f"Glue job {job_name}: its connection {name} does not exist", "not_found")
        return Outcome(outcome.status, f"Glue job {job_name}: connection {name}: {outcome.detail}", outcome.error_code)
    return None


def check_emr_serverless_application(
    client: Any, application_id: str, *, dependency: Dependency | None = None
) -> HealthResult:
    """An EMR Serverless application: ``GetApplication`` says ``CREATED`` or ``STARTED`` (else ``endpoint_state``)."""

    def body() -> Outcome:
        application = client.get_application(applicationId=application_id).get("application") or {}
        state = application.get("state")
        what = f"EMR Serverless application {application_id} ({application.get('name') or 'unnamed'}) is {state}"
        if state in EMR_SERVERLESS_READY:
            return Outcome("healthy", what)
        reason = f": {application['stateDetails']}" if application.get("stateDetails") else ""
        return Outcome("unhealthy", f"{what}, not CREATED or STARTED{reason}", "endpoint_state")

    return _checked(_dependency("emr_serverless_application", application_id, dependency), body)


def check_ssm_agents(
    ssm_client: Any, instance_ids: Sequence[str], *, dependency: Dependency | None = None
) -> HealthResult:
    """The SSM agents of EC2 instances: ``DescribeInstanceInformation`` says ``PingStatus=Online`` for every
    one of ``instance_ids``. An instance whose agent never registered is ``not_found``; one registered but
    not Online (``ConnectionLost``, ``Inactive``) is ``endpoint_state``. Measurements: ``agents_online``,
    ``agents_required``."""
    ids = list(dict.fromkeys(instance_ids))

    def body() -> Outcome:
        if not ids:
            return Outcome("unknown", "no instance ids to check")
        seen: dict[str, str] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Filters": [{"Key": "InstanceIds", "Values": ids}], "MaxResults": 50}
            if token:
                kwargs["NextToken"] = token
            answer = ssm_client.describe_instance_information(**kwargs)
            for info in answer.get("InstanceInformationList") or []:
                seen[str(info.get("InstanceId"))] = str(info.get("PingStatus"))
            token = answer.get("NextToken")
            if not token:
                break
        online = [i for i in ids if seen.get(i) == "Online"]
        measurements = {"agents_online": len(online), "agents_required": len(ids)}
        missing = [i for i in ids if i not in seen]
        offline = [f"{i} {seen[i]}" for i in ids if i in seen and seen[i] != "Online"]
        if not missing and not offline:
            return Outcome("healthy", f"SSM agents Online: {', '.join(ids)}", None, measurements)
        parts = ([f"not registered: {', '.join(missing)}"] if missing else []) + (
            [f"not Online: {', '.join(offline)}"] if offline else []
        )
        code = "endpoint_state" if offline else "not_found"
        return Outcome("unhealthy", f"SSM agents {len(online)} of {len(ids)} Online; {'; '.join(parts)}", code, measurements)

    return _checked(_dependency("ssm_agents", ",".join(ids) or "-", dependency), body)
