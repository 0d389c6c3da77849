"""The typed policy: the vocabulary of a policy (runner classes, sizes, network profiles, ...) and the
frozen dataclasses a loaded policy is made of (:class:`Policy`, one :class:`TenantPolicy` per tenant)."""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

RUNNER_CLASSES = ("serverless", "container", "managed_etl", "dedicated", "local")
SIZES = ("xs", "s", "m", "l", "xl")  # ordered small -> large
NETWORK_PROFILES = ("public", "vpn", "privatelink", "private_vpc", "on_prem")
REPLAY_DEFAULTS = ("reject", "approve")
FAILURE_CLASS_NAMES = ("transient", "permanent")
RETRY_WINDOW_SCOPES = ("tenant", "pipeline")
SUPPORTED_VERSIONS = (1,)
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Runner classes whose size profiles map to resources; `local` runs inside the Airflow worker.
SIZED_RUNNER_CLASSES = ("serverless", "container", "managed_etl", "dedicated")
GLUE_WORKER_TYPES = (
    "G.025X",
    "G.1X",
    "G.2X",
    "G.4X",
    "G.8X",
    "G.12X",
    "G.16X",
    "R.1X",
    "R.2X",
    "R.4X",
    "R.8X",
)
FARGATE_CPU_UNITS = (256, 512, 1024, 2048, 4096, 8192, 16384)
DEGRADED_POLICIES = ("allow", "refuse")  # network_profiles.<profile>.dependencies.degraded
HEALTH_URL_SCHEMES = ("http", "https", "tcp")

BUILT_IN_SOURCE = "<built-in>"
DEFAULTS_TENANT = "<defaults>"  # the `tenant` of Policy.defaults


@dataclass(frozen=True)
class Limits:
    """Scaling limits of one tenant."""

    max_workers: int
    max_hosts: int
    max_parallel_tasks: int


@dataclass(frozen=True)
class RetryBudget:
    """How many automatic retries a tenant may spend, and how they are spaced."""

    max_retries_per_task: int
    max_retries_per_run: int
    max_retries_per_window: int
    window_seconds: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    jitter: bool
    window_scope: str = "tenant"


@dataclass(frozen=True)
class FailureRules:
    """What makes a failure transient (or permanent): exception classes, service error codes, HTTP statuses,
    message patterns (see :mod:`barecount_provider.recovery.classify`)."""

    exceptions: tuple[str, ...] = ()
    error_codes: tuple[str, ...] = ()
    status_codes: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailureClasses:
    """The failure-classification rules of one tenant: general ones, and each runner class's own (tried first)."""

    unmatched: str = "transient"
    transient: FailureRules = FailureRules()
    permanent: FailureRules = FailureRules()
    runner_classes: Mapping[str, tuple[FailureRules, FailureRules]] = field(default_factory=dict)
    """runner class -> (transient, permanent)."""


@dataclass(frozen=True)
class ReplayApproval:
    """When a replay needs a governance approval, who may give it and what happens when nobody answers."""

    threshold_records: int | None
    threshold_cost_usd: float | None
    approvers: tuple[str, ...]
    timeout_seconds: int
    default: str

    def needs_approval(self, records: int, cost_usd: float) -> bool:
        """Whether a replay of ``records`` records, estimated at ``cost_usd``, reaches a threshold."""
        if self.threshold_records is not None and records >= self.threshold_records:
            return True
        return self.threshold_cost_usd is not None and cost_usd >= self.threshold_cost_usd


@dataclass(frozen=True)
class CostBudget:
    """A tenant's monthly spend budget (``monthly_usd`` None: no budget)."""

    monthly_usd: float | None
    alert_at_fraction: float


@dataclass(frozen=True)
class DeclaredBy:
    """Which DAGs may declare a tenant: those of the DAG bundles ``bundles`` and of the bundles owned by the
    teams ``teams`` (Airflow's ``[core] multi_team``). Both empty: any DAG."""

    teams: tuple[str, ...] = ()
    bundles: tuple[str, ...] = ()

    @property
    def restricted(self) -> bool:
        return bool(self.teams or self.bundles)

    def allows(self, bundle: str | None, team: str | None) -> bool:
        """Whether a DAG of ``bundle`` (owned by ``team``, None: no team) may declare the tenant."""
        if not self.restricted:
            return True
        return (bundle is not None and bundle in self.bundles) or (team is not None and team in self.teams)

    def describe(self) -> str:
        parts = []
        if self.teams:
            parts.append(f"teams {', '.join(self.teams)}")
        if self.bundles:
            parts.append(f"bundles {', '.join(self.bundles)}")
        return " or ".join(parts) or "any DAG"


@dataclass(frozen=True)
class VpnConnection:
    """An EC2 Site-to-Site VPN connection a network profile relies on, and how many of its tunnels must be UP."""

    id: str
    min_tunnels_up: int = 1


@dataclass(frozen=True)
class EndpointProbe:
    """Where to probe through a VPC interface endpoint: TCP ``host:port``, then a TLS handshake when
    ``tls_server_name`` is set (the certificate verified against it), then an HTTP GET of ``http_path``."""

    host: str
    port: int
    tls_server_name: str | None = None
    http_path: str | None = None


@dataclass(frozen=True)
class VpcEndpoint:
    """A VPC interface (PrivateLink) endpoint a network profile relies on, and the probe through it."""

    id: str
    probe: EndpointProbe


@dataclass(frozen=True)
class AgentDependency:
    """An on-premise agent a network profile relies on: healthy while its last heartbeat is at most
    ``max_heartbeat_age_seconds`` old."""

    name: str
    max_heartbeat_age_seconds: int = 120


@dataclass(frozen=True)
class NetworkDependencies:
    """What one network profile relies on (``network_profiles.<profile>.dependencies``) and how its health
    gates runners: ``require_healthy`` (checked before launch) and ``degraded`` (``allow`` or ``refuse``)."""

    vpn_connections: tuple[VpnConnection, ...] = ()
    vpc_endpoints: tuple[VpcEndpoint, ...] = ()
    agents: tuple[AgentDependency, ...] = ()
    health_urls: tuple[str, ...] = ()
    """``http://``, ``https://`` or ``tcp://host:port`` URLs."""
    degraded: str = "allow"
    require_healthy: bool = False

    @property
    def empty(self) -> bool:
        """Whether the profile names no dependency at all."""
        return not (self.vpn_connections or self.vpc_endpoints or self.agents or self.health_urls)


NO_DEPENDENCIES = NetworkDependencies()


SizeTables = Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]
"""runner class -> size -> backend (lambda, pod, fargate, glue, emr, ec2) -> resource setting -> value."""


@dataclass(frozen=True)
class TenantPolicy:
    """The effective governance settings of one tenant (defaults merged with the tenant's overrides)."""

    tenant: str
    allowed_runner_classes: tuple[str, ...]
    max_size: str
    allowed_network_profiles: tuple[str, ...]
    trace_sampling_ratio: float
    debug_logs_in_production: bool
    limits: Limits
    retry_budget: RetryBudget
    replay_approval: ReplayApproval
    cost_budget: CostBudget
    size_tables: SizeTables = field(hash=False)
    network_profiles: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(hash=False, default_factory=dict)
    """profile -> backend (ecs, ec2, pod) -> placement setting -> value (the dependencies are not in it)."""
    network_dependencies: Mapping[str, NetworkDependencies] = field(hash=False, default_factory=dict)
    """profile -> what it relies on; a profile that declares nothing is absent (see :meth:`dependencies`)."""
    runner_targets: Mapping[str, Mapping[str, Mapping[str, str]]] = field(hash=False, default_factory=dict)
    failure_classes: FailureClasses = field(hash=False, default_factory=FailureClasses)
    declared_by: DeclaredBy = DeclaredBy()

    @property
    def allowed_sizes(self) -> tuple[str, ...]:
        """Every size profile up to and including ``max_size``, small to large."""
        return SIZES[: SIZES.index(self.max_size) + 1]

    def allows_runner_class(self, runner_class: str) -> bool:
        return runner_class in self.allowed_runner_classes

    def allows_size(self, size: str) -> bool:
        return size in self.allowed_sizes

    def allows_network_profile(self, network_profile: str) -> bool:
        return network_profile in self.allowed_network_profiles

    def allows_debug_logs(self, environment: str) -> bool:
        """Whether debug log lines may be written in ``environment`` ([barecount] environment)."""
        return environment != "production" or self.debug_logs_in_production

    def resources(self, runner_class: str, size: str) -> Mapping[str, Mapping[str, Any]]:
        """The size table entry of ``runner_class`` at ``size``: backend -> resource setting -> value.

        The local runner class has no size table: its entry is empty.
        """
        if runner_class not in RUNNER_CLASSES:
            raise ValueError(f"runner class {runner_class!r} is not one of {', '.join(RUNNER_CLASSES)}")
        if size not in SIZES:
            raise ValueError(f"size {size!r} is not one of {', '.join(SIZES)}")
        if runner_class not in self.size_tables:
            return types.MappingProxyType({})
        return self.size_tables[runner_class][size]


    def placement(self, network_profile: str, backend: str) -> Mapping[str, Any]:
        """Where ``network_profile`` runs on ``backend`` (ecs, ec2, pod): empty when the policy names nothing."""
        return (self.network_profiles.get(network_profile) or {}).get(backend) or types.MappingProxyType({})

    def dependencies(self, network_profile: str) -> NetworkDependencies:
        """What ``network_profile`` relies on: empty (no dependency, healthy not required) when the policy
        names nothing."""
        return self.network_dependencies.get(network_profile, NO_DEPENDENCIES)

    def target(self, backend: str, name: str, network_profile: str, size: str) -> tuple[str, str] | None:
        """(target, selector) that implements ``name`` at this profile and size on ``backend`` (lambda, glue, emr).

        Looked up under ``runner_targets.<backend>.<name>``, most specific first: ``<profile>/<size>``,
        ``<profile>``, ``<size>``, ``*``. None when the policy does not map ``name`` at all (the name is then
        used as given); :class:`LookupError` when it maps ``name`` but not for this profile and size.
        """
        selectors = (self.runner_targets.get(backend) or {}).get(name)
        if selectors is None:
            return None
        for selector in (f"{network_profile}/{size}", network_profile, size, "*"):
            if selector in selectors:
                return selectors[selector], selector
        raise LookupError(
            f"runner_targets.{backend}.{name} has no entry for network profile {network_profile!r} and size "
            f"{size!r} (it has: {', '.join(selectors)})"
        )


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy: where it came from, the defaults and each declared tenant, resolved."""

    source: str
    version: int
    defaults: TenantPolicy
    tenants: dict[str, TenantPolicy] = field(hash=False)

    def for_tenant(self, tenant: str) -> TenantPolicy:
        """The tenant's effective settings; a tenant the policy does not declare gets the defaults."""
        declared = self.tenants.get(tenant)
        return declared if declared is not None else replace(self.defaults, tenant=tenant)

    @functools.cached_property
    def binds_tenants(self) -> bool:
        """Whether any tenant (or the defaults) says which DAGs may declare it (``declared_by``)."""
        return self.defaults.declared_by.restricted or any(t.declared_by.restricted for t in self.tenants.values())

    def declaration_refused(self, tenant: str, bundle: str | None, team: str | None) -> str | None:
        """Why a DAG of ``bundle`` (owned by ``team``) may not declare ``tenant``; None when it may.

        A DAG whose bundle is not known (parsed outside a DAG bundle: a test, ``dag.test()``) is not judged
        here: the DAG processor and the task process always know it."""
        declared_by = (self.tenants.get(tenant) or self.defaults).declared_by
        if bundle is None or declared_by.allows(bundle, team):
            return None
        owner = f"team {team!r}" if team else "no team"
        return (
            f"tenant {tenant!r} may be declared only by DAGs of {declared_by.describe()} "
            f"(declared_by in {self.source}); this DAG is in bundle {bundle!r} of {owner}"
        )
