"""Health sensors: wait until a VPN connection, a private endpoint, an on-premise agent, or every dependency
of a tenant's network profile plus a runner target, is healthy (docs/health.md, Sensors and triggers).

Each is an Airflow :class:`BaseSensorOperator` with the usual ``timeout``, ``poke_interval``, ``mode``
(``poke`` or ``reschedule``) and ``soft_fail``, and ``deferrable=True`` to wait in the triggerer instead
(:class:`~barecount_provider.triggers.health.HealthTrigger`, until the sensor's ``timeout``). A check that
passes ends the wait: every dependency healthy, or degraded where allowed (``degraded``: the profile's
policy by default). When the time is up the task fails with the blocking dependencies named (kind, id,
tenant, network profile, status, error code, detail), or is skipped with ``soft_fail``.

Every check's results go to the metrics and BareCount's database
(:func:`barecount_provider.runtime.health_report.publish`); the last check's results are left on the task
as ``barecount_health``, which the try's evidence entry carries (its ``health`` section).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from barecount_provider import context as bc_context
from barecount_provider.health.plan import Verdict
from barecount_provider.policy.model import DEGRADED_POLICIES, NETWORK_PROFILES
from barecount_provider.runtime import health as runtime_health
from barecount_provider.runtime import health_report
from barecount_provider.triggers.health import HealthTrigger, verdict_of_event

log = logging.getLogger(__name__)

DEFERRAL_GRACE_S = 60.0
"""How much longer than ``end_at`` the deferral may last before Airflow ends it (the trigger's own last check
ends it first)."""


class BareCountHealthSensor(BaseSensorOperator):
    """What every BareCount health sensor shares (see the module docstring); subclasses name the
    dependencies (:meth:`health_specs`).

    :param tenant: whose dependency it is; None: the DAG's declaration (params, default_args, ``tenant:``
        tag), then ``[barecount] default_tenant``. Never templated.
    :param network_profile: the network profile the dependency belongs to (tags the results and the
        metrics; selects the ``degraded`` policy); None: none.
    :param degraded: ``allow`` or ``refuse`` a degraded dependency; None: the tenant's policy for the
        network profile (``network_profiles.<profile>.dependencies.degraded``), ``allow`` without a profile.
    :param check_timeout_s: each check's deadline in seconds; None: ``[barecount] health_timeout_seconds``.
    :param deferrable: wait in the triggerer (one check first, in the task).
    :param kwargs: BaseSensorOperator's: ``timeout``, ``poke_interval``, ``mode``, ``soft_fail``, ...
    """

    ui_color = "#d8f3dc"

    def __init__(
        self,
        *,
        tenant: str | None = None,
        network_profile: str | None = None,
        degraded: str | None = None,
        check_timeout_s: float | None = None,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if network_profile is not None and not bc_context.is_template(network_profile) and network_profile not in NETWORK_PROFILES:
            raise ValueError(f"network_profile: {network_profile!r} is not one of {', '.join(NETWORK_PROFILES)}")
        if degraded is not None and degraded not in DEGRADED_POLICIES:
            raise ValueError(f"degraded: {degraded!r} is not one of {', '.join(DEGRADED_POLICIES)}")
        if check_timeout_s is not None and (not isinstance(check_timeout_s, int | float) or check_timeout_s <= 0):
            raise ValueError(f"check_timeout_s: {check_timeout_s!r} is not a positive number of seconds")
        self.tenant = bc_context.tenant_argument(tenant)
        self.network_profile = network_profile
        self.degraded = degraded
        self.check_timeout_s = check_timeout_s
        self.deferrable = deferrable
        self.barecount_health: list[dict[str, Any]] | None = None
        self._last_verdict: Verdict | None = None

    # ------------------------------------------------------------------------------- what is checked

    def health_specs(self, tenant: str) -> list[runtime_health.DependencySpec]:
        """The dependencies this sensor checks, for ``tenant`` (the resolved one)."""
        raise NotImplementedError

    def resolved_tenant(self, context: Mapping[str, Any]) -> str:
        """This sensor's ``tenant``, else the DAG's (as the runner operators resolve it)."""
        return self.tenant or bc_context.resolve_for_ti(context["ti"]).tenant

    def degraded_policy(self, tenant: str) -> str:
        if self.degraded is not None:
            return self.degraded
        if self.network_profile:
            return runtime_health.degraded_policy(tenant, self.network_profile)
        return "allow"

    def _plan(self, context: Mapping[str, Any]) -> tuple[list[runtime_health.DependencySpec], str]:
        tenant = self.resolved_tenant(context)
        return self.health_specs(tenant), self.degraded_policy(tenant)

    # ----------------------------------------------------------------------------------- recording

    def record_health(self, verdict: Verdict) -> None:
        """Leave the results on the task for the evidence entry, and publish them (never raises)."""
        self._last_verdict = verdict
        self.barecount_health = [result.as_dict() for result in verdict.results]
        health_report.publish(verdict.results, source=f"sensor:{self.task_id}")

    # ------------------------------------------------------------------------------------- waiting

    def poke(self, context: Any) -> bool:
        specs, degraded = self._plan(context)
        verdict = runtime_health.check(specs, timeout_s=self.check_timeout_s, degraded=degraded)
        self.record_health(verdict)
        self.log.info("%s", verdict.message())
        return verdict.passed

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as timeout:
                last = self._last_verdict
                raise AirflowSensorTimeout(f"{timeout} {last.message() if last else ''}".strip()) from timeout
        specs, degraded = self._plan(context)
        verdict = runtime_health.check(specs, timeout_s=self.check_timeout_s, degraded=degraded)
        self.record_health(verdict)
        if verdict.passed:
            self.log.info("%s", verdict.message())
            return None
        self.log.info("%s; deferring for up to %s s", verdict.message(), self.timeout)
        end_at = datetime.now(UTC) + timedelta(seconds=float(self.timeout))
        trigger = HealthTrigger(
            specs=[spec.as_dict() for spec in specs],
            degraded=degraded,
            poke_interval=max(float(self.poke_interval), 1.0),
            end_at=end_at.isoformat(),
            timeout_s=self.check_timeout_s,
        )
        grace = DEFERRAL_GRACE_S + (self.check_timeout_s or 0.0)
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout) + grace),
        )

    def execute_complete(self, context: Any, event: Mapping[str, Any] | None = None) -> None:
        """Resume from the trigger: healthy ends the wait; otherwise fail (or skip with ``soft_fail``)
        naming the blocking dependencies."""
        event = event or {}
        if event.get("status") == "error" or "verdict" not in event:
            message = f"{self.task_id}: health could not be checked: {event.get('message') or repr(dict(event))}"
        else:
            verdict = verdict_of_event(event)
            self.record_health(verdict)
            if event.get("status") == "healthy":
                self.log.info("%s", verdict.message())
                return None
            message = f"{self.task_id}: not healthy within the sensor's timeout of {self.timeout} s: {verdict.message()}"
        if self.soft_fail:
            raise AirflowSkipException(message)
        raise AirflowSensorTimeout(message)


def _required(name: str, value: Any) -> None:
    if value is None or value == "":
        raise ValueError(f"{name}: {value!r} is required")


class VpnTunnelSensor(BareCountHealthSensor):
    """Wait until an EC2 Site-to-Site VPN connection has ``min_tunnels_up`` tunnels UP (VgwTelemetry).

    Fewer UP than required but at least one is ``degraded`` (allowed unless ``degraded="refuse"`` or the
    profile's policy refuses it); none UP is ``unhealthy`` (``tunnel_down``).

    :param vpn_connection_id: the VPN connection (``vpn-...``), templated.
    :param min_tunnels_up: how many tunnels must be UP (1 or 2).
    :param aws_conn_id: the Airflow AWS connection (None: the default credentials chain).
    :param region_name: the connection's region (None: the connection's).
    :param tenant: see :class:`BareCountHealthSensor`.
    :param network_profile: see :class:`BareCountHealthSensor`.
    """

    template_fields: Sequence[str] = ("vpn_connection_id",)

    def __init__(
        self,
        *,
        vpn_connection_id: str,
        min_tunnels_up: int = 1,
        aws_conn_id: str | None = None,
        region_name: str | None = None,
        tenant: str | None = None,
        network_profile: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tenant=tenant, network_profile=network_profile, **kwargs)
        _required("vpn_connection_id", vpn_connection_id)
        if isinstance(min_tunnels_up, bool) or not isinstance(min_tunnels_up, int) or min_tunnels_up < 1:
            raise ValueError(f"min_tunnels_up: {min_tunnels_up!r} is not a whole number of tunnels >= 1")
        self.vpn_connection_id = vpn_connection_id
        self.min_tunnels_up = min_tunnels_up
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def health_specs(self, tenant: str) -> list[runtime_health.DependencySpec]:
        return [
            runtime_health.DependencySpec(
                kind="vpn_connection",
                id=self.vpn_connection_id,
                tenant=tenant,
                network_profile=self.network_profile,
                options={"min_tunnels_up": self.min_tunnels_up},
                conn_id=self.aws_conn_id,
                region_name=self.region_name,
            )
        ]


class PrivateEndpointSensor(BareCountHealthSensor):
    """Wait until a VPC interface (PrivateLink) endpoint is ``available`` and answers through it: DNS, TCP
    connect to ``host:port``, a TLS handshake verified against ``tls_server_name`` (when given) and an HTTP
    GET of ``http_path`` (when given), each timed.

    :param vpc_endpoint_id: the endpoint (``vpce-...``), templated.
    :param host: the name or address to probe through it (its private DNS name), templated.
    :param port: the TCP port.
    :param tls_server_name: verify the certificate against this name (and send it as SNI); None: no TLS.
    :param http_path: GET this path (2xx and 3xx are healthy); None: no HTTP.
    :param aws_conn_id: the Airflow AWS connection (DescribeVpcEndpoints).
    :param region_name: the connection's region (None: the connection's).
    :param tenant: see :class:`BareCountHealthSensor`.
    :param network_profile: see :class:`BareCountHealthSensor`.
    """

    template_fields: Sequence[str] = ("vpc_endpoint_id", "host", "tls_server_name", "http_path")

    def __init__(
        self,
        *,
        vpc_endpoint_id: str,
        host: str,
        port: int,
        tls_server_name: str | None = None,
        http_path: str | None = None,
        aws_conn_id: str | None = None,
        region_name: str | None = None,
        tenant: str | None = None,
        network_profile: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tenant=tenant, network_profile=network_profile, **kwargs)
        _required("vpc_endpoint_id", vpc_endpoint_id)
        _required("host", host)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port: {port!r} is not a TCP port (1 to 65535)")
        self.vpc_endpoint_id = vpc_endpoint_id
        self.host = host
        self.port = port
        self.tls_server_name = tls_server_name
        self.http_path = http_path
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def health_specs(self, tenant: str) -> list[runtime_health.DependencySpec]:
        probe = {
            "host": self.host,
            "port": self.port,
            "tls_server_name": self.tls_server_name,
            "http_path": self.http_path,
        }
        return [
            runtime_health.DependencySpec(
                kind="vpc_endpoint",
                id=self.vpc_endpoint_id,
                tenant=tenant,
                network_profile=self.network_profile,
                options={"probe": probe},
                conn_id=self.aws_conn_id,
                region_name=self.region_name,
            )
        ]


class AgentHeartbeatSensor(BareCountHealthSensor):
    """Wait until an on-premise agent's last heartbeat is at most ``max_heartbeat_age_seconds`` old (read
    from BareCount's database, where ``POST /barecount/agents/{name}/heartbeat`` records it).

    :param agent_name: the agent, as the tenant's policy lists it, templated.
    :param max_heartbeat_age_seconds: the largest age of its last heartbeat that is healthy.
    :param tenant: see :class:`BareCountHealthSensor`.
    :param network_profile: see :class:`BareCountHealthSensor`.
    """

    template_fields: Sequence[str] = ("agent_name",)

    def __init__(
        self,
        *,
        agent_name: str,
        max_heartbeat_age_seconds: int = 120,
        tenant: str | None = None,
        network_profile: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tenant=tenant, network_profile=network_profile, **kwargs)
        _required("agent_name", agent_name)
        if (
            isinstance(max_heartbeat_age_seconds, bool)
            or not isinstance(max_heartbeat_age_seconds, int)
            or max_heartbeat_age_seconds < 1
        ):
            raise ValueError(f"max_heartbeat_age_seconds: {max_heartbeat_age_seconds!r} is not a whole number of seconds >= 1")
        self.agent_name = agent_name
        self.max_heartbeat_age_seconds = max_heartbeat_age_seconds

    def health_specs(self, tenant: str) -> list[runtime_health.DependencySpec]:
        return [
            runtime_health.DependencySpec(
                kind="agent",
                id=self.agent_name,
                tenant=tenant,
                network_profile=self.network_profile,
                options={"max_heartbeat_age_seconds": self.max_heartbeat_age_seconds},
            )
        ]


class RunnerHealthSensor(BareCountHealthSensor):
    """Wait until every dependency of a tenant's network profile (its VPN connections, VPC endpoints, agents
    and health URLs, from the policy) and a runner target are healthy: the check a runner operator with
    ``require_healthy`` runs before it launches, as a task of its own.

    :param network_profile: the profile whose dependencies are checked (required), templated.
    :param tenant: see :class:`BareCountHealthSensor`.
    :param runner_kind: the runner target's kind: ``lambda_function``, ``ecs_cluster``, ``glue_job``,
        ``emr_serverless_application``, ``kubernetes_nodes`` or ``ssm_agents``; None: no runner target.
    :param runner_id: the target's id (function name, cluster, job name, application id, ...).
    :param runner_options: the target's options (``qualifier`` of a function, ``node_selector`` of
        Kubernetes nodes, ``instance_ids`` of SSM agents).
    :param aws_conn_id: the Airflow AWS connection of an AWS target.
    :param region_name: its region (None: the connection's).
    :param kubernetes_conn_id: the Airflow Kubernetes connection of a ``kubernetes_nodes`` target.
    :param degraded: see :class:`BareCountHealthSensor` (default: the profile's policy).
    """

    template_fields: Sequence[str] = ("network_profile", "runner_id")

    def __init__(
        self,
        *,
        network_profile: str,
        tenant: str | None = None,
        runner_kind: str | None = None,
        runner_id: str | None = None,
        runner_options: Mapping[str, Any] | None = None,
        aws_conn_id: str | None = None,
        region_name: str | None = None,
        kubernetes_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tenant=tenant, network_profile=network_profile, **kwargs)
        _required("network_profile", network_profile)
        if (runner_kind is None) != (runner_id is None):
            raise ValueError(
                f"runner_kind {runner_kind!r} and runner_id {runner_id!r}: give both (a runner target) or neither"
            )
        self.runner_kind = runner_kind
        self.runner_id = runner_id
        self.runner_options = dict(runner_options or {})
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.kubernetes_conn_id = kubernetes_conn_id

    def health_specs(self, tenant: str) -> list[runtime_health.DependencySpec]:
        profile = str(self.network_profile)
        specs = list(runtime_health.specs_for_profile(tenant, profile))
        if self.runner_kind is not None and self.runner_id is not None:
            conn_id = self.kubernetes_conn_id if self.runner_kind == "kubernetes_nodes" else self.aws_conn_id
            specs.append(
                runtime_health.runner_spec(
                    self.runner_kind,
                    self.runner_id,
                    tenant=tenant,
                    network_profile=profile,
                    conn_id=conn_id,
                    region_name=self.region_name,
                    **self.runner_options,
                )
            )
        if not specs:
            raise AirflowFailException(
                f"{self.task_id}: tenant {tenant!r} network profile {profile!r} declares no dependencies "
                "(network_profiles.<profile>.dependencies) and no runner target was given: nothing to check"
            )
        return specs
