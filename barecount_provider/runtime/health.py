"""Health checks as Airflow's processes run them: which dependencies a tenant's network profile (or a runner)
relies on, the clients that check them, and one verdict on the whole round.

A :class:`DependencySpec` says what to check: a kind, an id, whose profile names it, the kind's options, and
the Airflow connection (and AWS region) to check it through. It is plain JSON both ways (``as_dict`` /
``from_dict``), so a trigger can carry specs in its kwargs. :func:`specs_for_profile` reads them from the
tenant policy (``network_profiles.<profile>.dependencies``), :func:`runner_spec` makes the one of a runner's
target, :func:`build_checks` turns specs into ``health.plan.Check`` objects, and :func:`check` /
:func:`check_async` run them concurrently under one deadline and judge them (``health.plan.Verdict``).

Clients are built lazily, once per round and per (connection, region, service), from the upstream hooks
(``EC2Hook``, ``LambdaHook``, ``EcsHook``, ``GlueJobHook``, ``EmrServerlessHook``, ``SsmHook``; the
cncf-kubernetes ``KubernetesHook`` for nodes) through :func:`barecount_provider.connections.hook`, with
connect and read timeouts of the time that remains and no retries: a check never outlives its deadline for
long. Agents' last heartbeats are read once per round for all agents (``health.records.last_heartbeats``).
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from barecount_provider import config
from barecount_provider.health.plan import Check, Verdict, run_checks, run_checks_async
from barecount_provider.health.result import Dependency, HealthResult
from barecount_provider.policy.model import DEGRADED_POLICIES, NETWORK_PROFILES, NetworkDependencies

AWS_KINDS = (
    "vpn_connection",
    "vpc_endpoint",
    "lambda_function",
    "ecs_cluster",
    "glue_job",
    "emr_serverless_application",
    "ssm_agents",
)
KINDS = (
    "vpn_connection",
    "vpc_endpoint",
    "agent",
    "url",
    "lambda_function",
    "ecs_cluster",
    "glue_job",
    "emr_serverless_application",
    "kubernetes_nodes",
    "ssm_agents",
)
SPEC_KEYS = ("kind", "id", "tenant", "network_profile", "options", "conn_id", "region_name")


# ---------------------------------------------------------------------------------------------- specs


def _whole(minimum: int) -> Callable[[str, Any], Any]:
    def read(where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{where}: {value!r} is not a whole number >= {minimum}")
        return value

    return read


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {value!r} is not a non-empty string")
    return value


def _optional_text(where: str, value: Any) -> str | None:
    return None if value is None else _text(where, value)


def _port(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{where}: {value!r} is not a port number from 1 to 65535")
    return value


_PROBE_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "host": _text,
    "port": _port,
    "tls_server_name": _optional_text,
    "http_path": _optional_text,
}


def _probe(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {value!r} is not a mapping of host, port, tls_server_name, http_path")
    unknown = sorted(set(value) - set(_PROBE_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected host, port, tls_server_name, http_path)")
    for required in ("host", "port"):
        if required not in value:
            raise ValueError(f"{where}: {required} is missing")
    return {key: read(f"{where}.{key}", value[key]) for key, read in _PROBE_FIELDS.items() if value.get(key) is not None}


def _labels(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{where}: {value!r} is not a mapping of label names to string values")
    return dict(value)


def _ids(where: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{where}: {value!r} is not a non-empty list of instance ids")
    return [_text(f"{where}[{index}]", item) for index, item in enumerate(value)]


# kind -> option -> its reader; and the options a kind requires.
_OPTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "vpn_connection": {"min_tunnels_up": _whole(1)},
    "vpc_endpoint": {"probe": _probe},
    "agent": {"max_heartbeat_age_seconds": _whole(1)},
    "url": {},
    "lambda_function": {"qualifier": _optional_text},
    "ecs_cluster": {},
    "glue_job": {},
    "emr_serverless_application": {},
    "kubernetes_nodes": {"node_selector": _labels},
    "ssm_agents": {"instance_ids": _ids},
}
_REQUIRED: dict[str, tuple[str, ...]] = {"vpc_endpoint": ("probe",), "ssm_agents": ("instance_ids",)}


@dataclass(frozen=True)
class DependencySpec:
    """What to check and through which connection (``conn_id``: the AWS connection for AWS kinds, the
    Kubernetes one for ``kubernetes_nodes``; None: ``[barecount] health_aws_conn_id`` /
    ``health_kubernetes_conn_id``; ``region_name``: None, the connection's). ``options`` by kind:
    ``vpn_connection`` min_tunnels_up; ``vpc_endpoint`` probe {host, port, tls_server_name, http_path}
    (required); ``agent`` max_heartbeat_age_seconds; ``lambda_function`` qualifier; ``kubernetes_nodes``
    node_selector {label: value}; ``ssm_agents`` instance_ids [...] (required). Invalid values raise
    ``ValueError`` naming the key and the value."""

    kind: str
    id: str
    tenant: str | None = None
    network_profile: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    conn_id: str | None = None
    region_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"health dependency kind {self.kind!r} is not one of {', '.join(KINDS)}")
        where = f"health dependency {self.kind}"
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"{where}: id {self.id!r} is not a non-empty string")
        where = f"health dependency {self.kind} {self.id!r}"
        for key in ("tenant", "network_profile", "conn_id", "region_name"):
            _optional_text(f"{where}: {key}", getattr(self, key))
        if self.network_profile is not None and self.network_profile not in NETWORK_PROFILES:
            raise ValueError(
                f"{where}: network_profile {self.network_profile!r} is not one of {', '.join(NETWORK_PROFILES)}"
            )
        if self.kind not in AWS_KINDS and self.region_name is not None:
            raise ValueError(f"{where}: region_name {self.region_name!r} is only for AWS kinds ({', '.join(AWS_KINDS)})")
        if self.kind in ("url", "agent") and self.conn_id is not None:
            raise ValueError(f"{where}: conn_id {self.conn_id!r} is not used by a {self.kind} check")
        if self.kind == "url":
            from barecount_provider.health.network import parse_url

            parse_url(self.id)  # raises ValueError naming what is wrong with the URL
        if not isinstance(self.options, Mapping):
            raise ValueError(f"{where}: options {self.options!r} is not a mapping")
        readers = _OPTIONS[self.kind]
        unknown = sorted(set(self.options) - set(readers))
        if unknown:
            expected = ", ".join(readers) or "no options"
            raise ValueError(f"{where}: unknown option {unknown[0]!r} (a {self.kind} takes {expected})")
        for required in _REQUIRED.get(self.kind, ()):
            if self.options.get(required) is None:
                raise ValueError(f"{where}: option {required!r} is required")
        options = {
            key: readers[key](f"{where}: option {key}", value) for key, value in self.options.items() if value is not None
        }
        object.__setattr__(self, "options", options)

    @property
    def dependency(self) -> Dependency:
        return Dependency(kind=self.kind, id=self.id, tenant=self.tenant, network_profile=self.network_profile)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (a trigger's kwargs)."""
        return {
            "kind": self.kind,
            "id": self.id,
            "tenant": self.tenant,
            "network_profile": self.network_profile,
            "options": copy.deepcopy(dict(self.options)),
            "conn_id": self.conn_id,
            "region_name": self.region_name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DependencySpec:
        """The spec of :meth:`as_dict`'s shape; ``ValueError`` naming a missing, unknown or bad key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a health dependency spec is a mapping, not {type(data).__name__}")
        unknown = sorted(set(data) - set(SPEC_KEYS), key=str)
        if unknown:
            raise ValueError(f"health dependency spec: unknown key {unknown[0]!r} (expected {', '.join(SPEC_KEYS)})")
        for required in ("kind", "id"):
            if required not in data:
                raise ValueError(f"health dependency spec: {required} is missing")
        return cls(
            kind=data["kind"],
            id=data["id"],
            tenant=data.get("tenant"),
            network_profile=data.get("network_profile"),
            options=data.get("options") or {},
            conn_id=data.get("conn_id"),
            region_name=data.get("region_name"),
        )


def runner_spec(
    kind: str,
    id: str,
    *,
    tenant: str | None = None,
    network_profile: str | None = None,
    conn_id: str | None = None,
    region_name: str | None = None,
    **options: Any,
) -> DependencySpec:
    """The spec of a runner's target (``lambda_function``, ``ecs_cluster``, ``glue_job``,
    ``emr_serverless_application``, ``kubernetes_nodes``, ``ssm_agents``, or any other kind), options as
    keywords (``qualifier=``, ``node_selector=``, ``instance_ids=``)."""
    return DependencySpec(
        kind=kind,
        id=id,
        tenant=tenant,
        network_profile=network_profile,
        options=options,
        conn_id=conn_id,
        region_name=region_name,
    )


def _profile_dependencies(tenant: str, network_profile: str) -> NetworkDependencies:
    """What ``network_profile`` of ``tenant`` relies on; ``ValueError`` for an unknown profile. A tenant the
    policy does not declare relies on what the defaults name, as it runs under the defaults' other settings
    (``Policy.for_tenant``)."""
    from barecount_provider.policy import get_policy

    if network_profile not in NETWORK_PROFILES:
        raise ValueError(
            f"tenant {tenant!r}: network profile {network_profile!r} is not one of {', '.join(NETWORK_PROFILES)}"
        )
    return get_policy().for_tenant(tenant).dependencies(network_profile)


def _declared(tenant: str) -> None:
    """``ValueError`` unless the policy declares ``tenant`` or it is ``[barecount] default_tenant``."""
    from barecount_provider.policy import get_policy

    policy = get_policy()
    if tenant not in policy.tenants and tenant != config.default_tenant():
        declared = ", ".join(sorted(policy.tenants)) or "none"
        raise ValueError(
            f"tenant {tenant!r} is not declared in the policy ({policy.source}; tenants: {declared}; "
            f"[barecount] default_tenant: {config.default_tenant()!r})"
        )


def specs_for_profile(tenant: str, network_profile: str) -> list[DependencySpec]:
    """Every dependency ``network_profile`` of ``tenant`` relies on, from the tenant policy, in the policy's
    order: VPN connections, VPC endpoints, agents, health URLs. A profile that names none gives ``[]``; a
    tenant the policy does not declare gets the defaults' dependencies; ``ValueError`` names an unknown
    profile."""
    dependencies = _profile_dependencies(tenant, network_profile)

    def spec(kind: str, id: str, **options: Any) -> DependencySpec:
        return DependencySpec(kind, id, tenant=tenant, network_profile=network_profile, options=options)

    specs = [spec("vpn_connection", vpn.id, min_tunnels_up=vpn.min_tunnels_up) for vpn in dependencies.vpn_connections]
    for endpoint in dependencies.vpc_endpoints:
        target = endpoint.probe
        probe = {"host": target.host, "port": target.port, "tls_server_name": target.tls_server_name, "http_path": target.http_path}
        specs.append(spec("vpc_endpoint", endpoint.id, probe=probe))
    specs += [
        spec("agent", agent.name, max_heartbeat_age_seconds=agent.max_heartbeat_age_seconds) for agent in dependencies.agents
    ]
    specs += [spec("url", url) for url in dependencies.health_urls]
    return specs


def all_specs(tenant: str | None = None) -> list[DependencySpec]:
    """The dependencies of every allowed network profile of ``tenant``, or of every tenant the policy
    declares plus ``[barecount] default_tenant`` (sorted by tenant, profiles in the policy's order).
    ``ValueError`` names a ``tenant`` the policy does not declare (a mistyped name checks nothing)."""
    from barecount_provider.policy import get_policy

    policy = get_policy()
    if tenant is not None:
        _declared(tenant)
    tenants = [tenant] if tenant is not None else sorted({*policy.tenants, config.default_tenant()})
    specs: list[DependencySpec] = []
    for name in tenants:
        for profile in policy.for_tenant(name).allowed_network_profiles:
            specs += specs_for_profile(name, profile)
    return specs


def degraded_policy(tenant: str, network_profile: str) -> str:
    """``allow`` or ``refuse``: what a degraded dependency of the profile does to runners."""
    degraded = _profile_dependencies(tenant, network_profile).degraded
    return degraded if degraded in DEGRADED_POLICIES else "allow"


def require_healthy_default(tenant: str, network_profile: str) -> bool:
    """Whether runners of the profile check its dependencies before they launch, unless told otherwise."""
    return _profile_dependencies(tenant, network_profile).require_healthy


# ---------------------------------------------------------------------------------------------- checks


class _Clients:
    """The clients of one round, built on first use, once per key, whichever thread asks first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._made: dict[tuple[Any, ...], Any] = {}

    def get(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._made:
                self._made[key] = make()
            return self._made[key]


@functools.cache
def _aws_hooks() -> dict[str, tuple[Any, dict[str, Any]]]:
    """service -> (upstream hook class, its extra keywords)."""
    from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
    from airflow.providers.amazon.aws.hooks.ecs import EcsHook
    from airflow.providers.amazon.aws.hooks.emr import EmrServerlessHook
    from airflow.providers.amazon.aws.hooks.glue import GlueJobHook
    from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
    from airflow.providers.amazon.aws.hooks.ssm import SsmHook

    return {
        "ec2": (EC2Hook, {"api_type": "client_type"}),
        "lambda": (LambdaHook, {}),
        "ecs": (EcsHook, {}),
        "glue": (GlueJobHook, {}),
        "emr-serverless": (EmrServerlessHook, {}),
        "ssm": (SsmHook, {}),
    }


_SERVICE = {
    "vpn_connection": "ec2",
    "vpc_endpoint": "ec2",
    "lambda_function": "lambda",
    "ecs_cluster": "ecs",
    "glue_job": "glue",
    "emr_serverless_application": "emr-serverless",
    "ssm_agents": "ssm",
}


def _aws_client(clients: _Clients, spec: DependencySpec, timeout_s: float) -> Any:
    """The boto3 client of ``spec``'s service, from the upstream hook: timeouts of ``timeout_s``, no retry."""
    service = _SERVICE[spec.kind]
    conn_id = spec.conn_id or config.health_aws_conn_id()

    def make() -> Any:
        from botocore.config import Config

        from barecount_provider import connections

        hook_class, extra = _aws_hooks()[service]
        seconds = max(0.5, timeout_s)
        client_config = Config(connect_timeout=seconds, read_timeout=seconds, retries={"total_max_attempts": 1})
        hook = connections.hook(hook_class, aws_conn_id=conn_id, region_name=spec.region_name, config=client_config, **extra)
        return hook.conn

    return clients.get(("aws", conn_id, spec.region_name, service), make)


def _core_v1(clients: _Clients, spec: DependencySpec) -> Any:
    conn_id = spec.conn_id or config.health_kubernetes_conn_id()

    def make() -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        from barecount_provider import connections

        return connections.hook(KubernetesHook, conn_id=conn_id).core_v1_client

    return clients.get(("kubernetes", conn_id), make)


class _Heartbeats:
    """The last heartbeat of every agent of the round, read once (by the first agent check that runs)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(dict.fromkeys(names))
        self._lock = threading.Lock()
        self._loaded: dict[str, datetime] | None = None

    def last(self, name: str) -> datetime | None:
        with self._lock:
            if self._loaded is None:
                from barecount_provider.health.records import last_heartbeats

                self._loaded = dict(last_heartbeats(self.names))
            return self._loaded.get(name)


def _runner(spec: DependencySpec, clients: _Clients, heartbeats: _Heartbeats) -> Callable[[float], HealthResult]:
    """``run(timeout_s)`` of one spec."""
    from barecount_provider.health import agents, aws, kubernetes, network
    from barecount_provider.policy.model import AgentDependency, EndpointProbe, VpcEndpoint, VpnConnection

    dependency, options = spec.dependency, spec.options
    if spec.kind == "url":
        return lambda timeout_s: network.check_url(spec.id, timeout_s=timeout_s, dependency=dependency)
    if spec.kind == "agent":
        agent = AgentDependency(spec.id, options.get("max_heartbeat_age_seconds", AgentDependency.max_heartbeat_age_seconds))
        return lambda timeout_s: agents.check_agent(agent, heartbeats.last(agent.name), dependency=dependency)
    if spec.kind == "kubernetes_nodes":
        selector = options.get("node_selector") or {}
        return lambda timeout_s: kubernetes.check_kubernetes_nodes(
            _core_v1(clients, spec), selector, dependency=dependency, timeout_s=timeout_s
        )

    def run(timeout_s: float) -> HealthResult:
        client = _aws_client(clients, spec, timeout_s)
        if spec.kind == "vpn_connection":
            vpn = VpnConnection(spec.id, options.get("min_tunnels_up", VpnConnection.min_tunnels_up))
            return aws.check_vpn_connection(client, vpn, dependency=dependency, timeout_s=timeout_s)
        if spec.kind == "vpc_endpoint":
            endpoint = VpcEndpoint(spec.id, EndpointProbe(**options["probe"]))
            return aws.check_vpc_endpoint(client, endpoint, dependency=dependency, timeout_s=timeout_s)
        if spec.kind == "lambda_function":
            return aws.check_lambda_function(client, spec.id, options.get("qualifier"), dependency=dependency)
        if spec.kind == "ecs_cluster":
            return aws.check_ecs_cluster(client, spec.id, dependency=dependency)
        if spec.kind == "glue_job":
            return aws.check_glue_job(client, spec.id, dependency=dependency, timeout_s=timeout_s)
        if spec.kind == "emr_serverless_application":
            return aws.check_emr_serverless_application(client, spec.id, dependency=dependency)
        return aws.check_ssm_agents(client, options["instance_ids"], dependency=dependency)

    return run


def build_checks(specs: Sequence[DependencySpec]) -> list[Check]:
    """One check per spec, in order; the checks of one call share their clients and heartbeat look-up."""
    clients = _Clients()
    heartbeats = _Heartbeats([spec.id for spec in specs if spec.kind == "agent"])
    return [Check(spec.dependency, _runner(spec, clients, heartbeats)) for spec in specs]


def _timeout(timeout_s: float | None) -> float:
    return float(config.health_timeout_seconds()) if timeout_s is None else timeout_s


def check(specs: Sequence[DependencySpec], *, timeout_s: float | None = None, degraded: str = "allow") -> Verdict:
    """Checks ``specs`` concurrently within ``timeout_s`` (None: ``[barecount] health_timeout_seconds``) and
    judges the results under the ``degraded`` policy; never raises for a check."""
    results = run_checks(build_checks(specs), timeout_s=_timeout(timeout_s))
    return Verdict(tuple(results), degraded=degraded)


async def check_async(
    specs: Sequence[DependencySpec], *, timeout_s: float | None = None, degraded: str = "allow"
) -> Verdict:
    """:func:`check` for an event loop (a trigger): the checks run on threads of their own."""
    results = await run_checks_async(build_checks(specs), timeout_s=_timeout(timeout_s))
    return Verdict(tuple(results), degraded=degraded)
