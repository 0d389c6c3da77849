"""The governance policy: per-tenant rules in YAML, validated at load, queried by the rest of the provider.

A policy file has three keys: ``version`` (always 1), ``defaults`` (settings for every tenant) and
``tenants`` (per-tenant overrides). A tenant's effective settings are resolved once, at load, in this order:
the built-in policy (``default_policy.yaml``, shipped with the provider) <- the file's ``defaults`` <- the
file's ``tenants.<name>``. Mappings merge key by key; lists and plain values replace.

Validation collects every mistake before raising, and each one names the file, the dotted key path, the bad
value and what was expected::

    policy.yaml: tenants.acme.max_size: 'xxl' is not one of xs, s, m, l, xl

An invalid policy raises :class:`PolicyError`; it never falls back to the built-in one. The reference of
every key is docs/policy.md.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from barecount_provider import config
from barecount_provider.schema import (
    MISSING,
    Check,
    Copy,
    Problem,
    ProblemsError,
    Report,
    Section,
    Unreadable,
    boolean,
    check_value,
    frozen,
    integer,
    is_number,
    join_dotted,
    list_of,
    matching,
    merge,
    named,
    number,
    one_of,
    parse_yaml,
    read_text_file,
    string_map,
)

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

BUILT_IN_SOURCE = "<built-in>"
DEFAULTS_TENANT = "<defaults>"  # the `tenant` of Policy.defaults


# --------------------------------------------------------------------------------------------------- problems


class PolicyError(ProblemsError):
    """An invalid policy. ``problems`` holds every mistake found; the message lists them, one per line."""


# ------------------------------------------------------------------------------------------ the typed policy


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


# -------------------------------------------------------------------------------------------------- schema


TARGET_SELECTORS = (
    "'<network profile>/<size>', '<network profile>', '<size>' or '*' "
    f"(profiles: {', '.join(NETWORK_PROFILES)}; sizes: {', '.join(SIZES)})"
)


def is_target_selector(key: object) -> bool:
    """Whether ``key`` is a key of a runner_targets mapping (see :meth:`TenantPolicy.target`)."""
    if not isinstance(key, str):
        return False
    profile, slash, size = key.partition("/")
    if slash:
        return profile in NETWORK_PROFILES and size in SIZES
    return key == "*" or key in NETWORK_PROFILES or key in SIZES


def _target_map(what: str) -> Check:
    """``<name the DAG uses> -> <selector> -> <the {what} that implements it>``."""

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, dict):
            yield "", value, f"a mapping of name -> selector -> {what}"
            return
        for name, selectors in value.items():
            if not (isinstance(name, str) and name):
                yield f".{name}", name, "a non-empty name"
                continue
            if not isinstance(selectors, dict) or not selectors:
                yield f".{name}", selectors, f"a non-empty mapping of {TARGET_SELECTORS} -> {what}"
                continue
            for selector, target in selectors.items():
                if not is_target_selector(selector):
                    yield f".{name}.{selector}", selector, TARGET_SELECTORS
                elif not (isinstance(target, str) and target.strip()):
                    yield f".{name}.{selector}", target, f"{what} (a non-empty string)"

    return check


# Kubernetes resource quantities, as pods write them: "250m" or "2" CPUs, "512Mi" or "4Gi" of memory.
_CPU_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$")
_MEMORY_UNITS = {
    "": 1,
    **{unit: 1000**power for power, unit in enumerate(("k", "M", "G", "T", "P"), start=1)},
    "K": 1000,
    **{unit: 1024**power for power, unit in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi"), start=1)},
}


def parse_cpu_quantity(value: object) -> float | None:
    """CPUs in a Kubernetes CPU quantity (``"250m"`` -> 0.25, ``"2"`` or 2 -> 2.0); None if it is not one."""
    if is_number(value):
        return float(value) if value >= 0 else None
    match = _CPU_QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def parse_memory_quantity(value: object) -> float | None:
    """Bytes in a Kubernetes memory quantity (``"512Mi"`` -> 536870912.0); None if it is not one."""
    match = _MEMORY_QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return float(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""]


def _quantity(parse: Callable[[object], float | None], expected: str) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if parse(value) is None:
            yield "", value, expected

    return check


_CPU = _quantity(parse_cpu_quantity, "a Kubernetes CPU quantity such as '250m' or '2'")
_MEMORY = _quantity(parse_memory_quantity, "a Kubernetes memory quantity such as '512Mi' or '4Gi'")

# One entry of a size table, per runner class: backend -> resource setting -> check.
_SIZE_ENTRIES: dict[str, Section] = {
    "serverless": Section(
        {
            "lambda": Section(
                {"memory_mb": integer(128, 10240), "ephemeral_storage_mb": integer(512, 10240)}
            ),
        }
    ),
    "container": Section(
        {
            "pod": Section(
                {"cpu_request": _CPU, "cpu_limit": _CPU, "memory_request": _MEMORY, "memory_limit": _MEMORY}
            ),
            "fargate": Section({"cpu": one_of(FARGATE_CPU_UNITS), "memory_mb": integer(512, 122880)}),
        }
    ),
    "managed_etl": Section(
        {
            "glue": Section(
                {
                    "worker_type": one_of(GLUE_WORKER_TYPES),
                    "number_of_workers": integer(1),
                    "auto_scaling": boolean(),
                }
            ),
            "emr": Section(
                {
                    "initial_workers": integer(0),
                    "worker_cpu": matching(r"\d+ ?vCPU", "an EMR Serverless CPU such as '4 vCPU'"),
                    "worker_memory": matching(r"\d+ ?GB", "an EMR Serverless memory such as '16 GB'"),
                    "max_cpu": matching(r"\d+ ?vCPU", "an EMR Serverless CPU such as '400 vCPU'"),
                    "max_memory": matching(r"\d+ ?GB", "an EMR Serverless memory such as '1600 GB'"),
                }
            ),
        }
    ),
    "dedicated": Section(
        {
            "ec2": Section(
                {
                    "instance_type": matching(
                        r"[a-z][a-z0-9-]*\.[a-z0-9]+", "an EC2 instance type such as 'm5.large'"
                    ),
                    "host_count": integer(1),
                }
            ),
        }
    ),
}

_SIZE_TABLES = Section(
    {
        runner_class: Section(
            dict.fromkeys(SIZES, entry), keys_expected=f"a size: one of {', '.join(SIZES)}"
        )
        for runner_class, entry in _SIZE_ENTRIES.items()
    },
    keys_expected=f"a runner class with a size table: one of {', '.join(SIZED_RUNNER_CLASSES)}",
)

# Where each network profile runs, for the services that take networking per run. Optional: the built-in
# policy names no subnet, and an operator whose profile has no placement uses its own arguments.
_NETWORK_PLACEMENT = Section(
    {
        "ecs": Section(
            {
                "subnets": list_of(named("a subnet id"), "subnet ids"),
                "security_groups": list_of(named("a security group id"), "security group ids"),
                "assign_public_ip": one_of(("ENABLED", "DISABLED")),
            }
        ),
        "ec2": Section(
            {
                "subnet_id": named("a subnet id"),
                "security_group_ids": list_of(named("a security group id"), "security group ids"),
            }
        ),
        "pod": Section(
            {
                "namespace": named("a Kubernetes namespace"),
                "node_selector": string_map("node label -> value"),
                "service_account_name": named("a Kubernetes service account"),
            }
        ),
    },
    optional=True,
)
_NETWORK_PROFILES = Section(
    dict.fromkeys(NETWORK_PROFILES, _NETWORK_PLACEMENT),
    keys_expected=f"a network profile: one of {', '.join(NETWORK_PROFILES)}",
    optional=True,
)
# What the size and network profile select where the service does not take them per run.
_RUNNER_TARGETS = Section(
    {
        "lambda": _target_map("a Lambda qualifier (alias or version)"),
        "glue": _target_map("a Glue job name"),
        "emr": _target_map("an EMR Serverless application id"),
    },
    optional=True,
)

# Which DAGs may declare a tenant: DAG bundles, and teams owning bundles. Optional: empty, any DAG may.
_DECLARED_BY = Section(
    {
        "teams": list_of(named("an Airflow team name"), "Airflow team names"),
        "bundles": list_of(named("a DAG bundle name"), "DAG bundle names"),
    },
    optional=True,
)

# Failure classification (barecount_provider.recovery.classify): what makes a failure transient or permanent.
_EXCEPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_STATUS_CODE = re.compile(r"[1-5]([0-9][0-9]|[0-9]x|xx)")


def _regex() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and value):
            yield "", value, "a regular expression (a non-empty string)"
            return
        try:
            re.compile(value)
        except re.error as err:
            yield "", value, f"a valid regular expression ({err})"

    return check


def _status_code() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and _STATUS_CODE.fullmatch(value)):
            yield "", value, "an HTTP status such as 429, '503' or a range such as '5xx'"

    return check


_FAILURE_RULES = Section(
    {
        "exceptions": list_of(
            matching(_EXCEPTION_NAME.pattern, "an exception class name, dotted (builtins.TimeoutError) or bare (ClientError)"),
            "exception class names",
        ),
        "error_codes": list_of(named("a service error code"), "service error codes"),
        "status_codes": list_of(_status_code(), "HTTP statuses"),
        "messages": list_of(_regex(), "regular expressions"),
    },
    optional=True,
)
_FAILURE_CLASSES = Section(
    {
        "unmatched": one_of(FAILURE_CLASS_NAMES),
        "transient": _FAILURE_RULES,
        "permanent": _FAILURE_RULES,
        "runner_classes": Section(
            dict.fromkeys(RUNNER_CLASSES, Section({"transient": _FAILURE_RULES, "permanent": _FAILURE_RULES}, optional=True)),
            keys_expected=f"a runner class: one of {', '.join(RUNNER_CLASSES)}",
            optional=True,
        ),
    }
)

# The settings of `defaults` and of each `tenants.<name>`.
_SETTINGS = Section(
    {
        "allowed_runner_classes": list_of(one_of(RUNNER_CLASSES), "runner classes"),
        "max_size": one_of(SIZES),
        "allowed_network_profiles": list_of(one_of(NETWORK_PROFILES), "network profiles"),
        "trace_sampling_ratio": number(0.0, 1.0),
        "debug_logs_in_production": boolean(),
        "limits": Section(
            {"max_workers": integer(1), "max_hosts": integer(0), "max_parallel_tasks": integer(1)}
        ),
        "retry_budget": Section(
            {
                "max_retries_per_task": integer(0),
                "max_retries_per_run": integer(0),
                "max_retries_per_window": integer(0),
                "window_seconds": integer(1),
                "backoff_base_seconds": number(0),
                "backoff_max_seconds": number(0),
                "jitter": boolean(),
                "window_scope": one_of(RETRY_WINDOW_SCOPES),
            }
        ),
        "failure_classes": _FAILURE_CLASSES,
        "replay_approval": Section(
            {
                "threshold_records": integer(0, nullable=True),
                "threshold_cost_usd": number(0, nullable=True),
                "approvers": list_of(named("a user name"), "user names"),
                "timeout_seconds": integer(1),
                "default": one_of(REPLAY_DEFAULTS),
            }
        ),
        "cost_budget": Section(
            {"monthly_usd": number(0, nullable=True), "alert_at_fraction": number(0.0, 1.0)}
        ),
        "size_tables": _SIZE_TABLES,
        "network_profiles": _NETWORK_PROFILES,
        "runner_targets": _RUNNER_TARGETS,
        "declared_by": _DECLARED_BY,
    }
)

_TOP_LEVEL_KEYS = ("version", "defaults", "tenants")


def settings_key_paths() -> list[str]:
    """Every key a tenant's settings can hold, dotted (the reference that docs/policy.md documents)."""

    def walk(section: Section, prefix: str) -> Iterator[str]:
        for key, spec in section.fields.items():
            if isinstance(spec, Section):
                # every size (network profile) shares one entry: documented once, as <size> (<profile>)
                name = "<size>" if key in SIZES else "<profile>" if key in NETWORK_PROFILES else key
                if prefix == "failure_classes.runner_classes." and key in RUNNER_CLASSES:
                    name = "<runner_class>"  # every runner class's rules share one entry
                yield from walk(spec, f"{prefix}{name}.")
            else:
                yield f"{prefix}{key}"

    return list(dict.fromkeys(walk(_SETTINGS, "")))


# ----------------------------------------------------------------------------------------------- validation


def _get(mapping: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _sets(mapping: object, *keys: str) -> bool:
    """Whether ``mapping`` (a tenant's raw overrides) sets the key path itself."""
    *parents, last = keys
    parent = _get(mapping, *parents) if parents else mapping
    return isinstance(parent, dict) and last in parent


def _check_order(
    merged: dict[str, Any],
    own: object,
    path: str,
    report: Report,
    keys: tuple[str, ...],
    low: str,
    high: str,
    amount: Callable[[object], float | None],
) -> None:
    """``high`` must be >= ``low`` (both under ``keys``) in the effective settings ``merged``.

    The mistake is reported at the key that ``own`` (the raw mapping being checked) sets, ``high`` when it
    sets both; when it sets neither, the mistake belongs to the level it was inherited from.
    """
    low_value, high_value = _get(merged, *keys, low), _get(merged, *keys, high)
    low_amount, high_amount = amount(low_value), amount(high_value)
    if low_amount is None or high_amount is None or high_amount >= low_amount:
        return
    where = ".".join((path, *keys))
    if _sets(own, *keys, high):
        report.add(f"{where}.{high}", high_value, f"a value >= {low} ({low_value!r})")
    elif _sets(own, *keys, low):
        report.add(f"{where}.{low}", low_value, f"a value <= {high} ({high_value!r})")


def _number_or_none(value: object) -> float | None:
    return float(value) if is_number(value) else None


def _check_consistency(merged: dict[str, Any], own: object, path: str, report: Report) -> None:
    """Rules across keys, checked on the effective settings of ``defaults`` or of one tenant."""
    _check_order(
        merged,
        own,
        path,
        report,
        ("retry_budget",),
        "backoff_base_seconds",
        "backoff_max_seconds",
        _number_or_none,
    )
    for size in SIZES:
        pod = ("size_tables", "container", size, "pod")
        _check_order(merged, own, path, report, pod, "cpu_request", "cpu_limit", parse_cpu_quantity)
        _check_order(merged, own, path, report, pod, "memory_request", "memory_limit", parse_memory_quantity)


def _check_document(document: object, report: Report, base: Mapping[str, Any]) -> None:
    """Every mistake of a parsed policy document, checked against the base defaults it will merge over."""
    if not isinstance(document, dict):
        report.add("", document, f"a mapping with the keys {', '.join(_TOP_LEVEL_KEYS)}")
        return
    for key in document:
        if key not in _TOP_LEVEL_KEYS:
            report.add(str(key), key, f"a known key (allowed: {', '.join(_TOP_LEVEL_KEYS)})")

    if "version" not in document:
        report.add("version", MISSING, "version: 1")
    else:
        version = document["version"]
        supported = ", ".join(str(number) for number in SUPPORTED_VERSIONS)
        if not (isinstance(version, int) and not isinstance(version, bool)):
            report.add("version", version, f"an integer policy version (supported: {supported})")
        elif version not in SUPPORTED_VERSIONS:
            report.add("version", version, f"a supported policy version (supported: {supported})")

    defaults = document.get("defaults")
    check_value(_SETTINGS, defaults, "defaults", report, null_sets_nothing=True)
    merged_defaults = merge(base, defaults if isinstance(defaults, dict) else None)
    # Rules are reported where the file sets one of their keys; the built-in (no base) sets them all.
    _check_consistency(merged_defaults, defaults if base else merged_defaults, "defaults", report)

    tenants = document.get("tenants")
    if tenants is None:
        return
    if not isinstance(tenants, dict):
        report.add("tenants", tenants, "a mapping of tenant name -> settings")
        return
    for name, overrides in tenants.items():
        path = join_dotted("tenants", name)
        if not (isinstance(name, str) and TENANT_NAME.fullmatch(name)):
            report.add(path, name, f"a tenant name matching {TENANT_NAME.pattern}")
        check_value(_SETTINGS, overrides, path, report, null_sets_nothing=True)
        if isinstance(overrides, dict):
            _check_consistency(merge(merged_defaults, overrides), overrides, path, report)


# ------------------------------------------------------------------------------------------------- parsing


def _under(key_path: str, path: str) -> bool:
    return key_path == path or key_path.startswith((f"{path}.", f"{path}["))


def _with_value(document: object, keys: tuple[Any, ...], value: object) -> object:
    """A copy of ``document`` with ``value`` at ``keys`` (the rest shared, not changed)."""
    if not keys:
        return value
    head, rest = keys[0], keys[1:]
    if isinstance(document, dict) and head in document:
        return {**document, head: _with_value(document[head], rest, value)}
    if isinstance(document, list) and isinstance(head, int) and head < len(document):
        return [*document[:head], _with_value(document[head], rest, value), *document[head + 1 :]]
    return document


def _check_copies(
    document: object, copies: list[tuple[Copy, object]], report: Report, base: Mapping[str, Any]
) -> None:
    """Check every copy of each key given more than once, not only the one YAML keeps: a mistake inside a
    copy is reported with that copy's line (the kept copy's mistakes, found by the normal check, get its
    line too)."""
    kept = {copy.path: copy.line for copy, _ in copies if copy.last}
    for index, problem in enumerate(report.problems):
        paths = [path for path in kept if _under(problem.key_path, path)]
        if paths and problem.line is None and not isinstance(problem.value, Unreadable):
            report.problems[index] = replace(problem, line=kept[max(paths, key=len)])  # the innermost copy
    for copy, value in copies:
        if copy.last:
            continue
        scratch = Report(report.file)
        _check_document(_with_value(document, copy.keys, value), scratch, base)
        for problem in scratch.problems:
            if _under(problem.key_path, copy.path) and not isinstance(problem.value, Unreadable):
                report.problems.append(replace(problem, line=copy.line))


# -------------------------------------------------------------------------------------------------- building


def _tenant_policy(tenant: str, settings: Mapping[str, Any]) -> TenantPolicy:
    limits, retry = settings["limits"], settings["retry_budget"]
    replay, cost = settings["replay_approval"], settings["cost_budget"]

    def optional_float(value: Any) -> float | None:
        return None if value is None else float(value)

    return TenantPolicy(
        tenant=tenant,
        allowed_runner_classes=tuple(dict.fromkeys(settings["allowed_runner_classes"])),
        max_size=settings["max_size"],
        allowed_network_profiles=tuple(dict.fromkeys(settings["allowed_network_profiles"])),
        trace_sampling_ratio=float(settings["trace_sampling_ratio"]),
        debug_logs_in_production=settings["debug_logs_in_production"],
        limits=Limits(
            max_workers=limits["max_workers"],
            max_hosts=limits["max_hosts"],
            max_parallel_tasks=limits["max_parallel_tasks"],
        ),
        retry_budget=RetryBudget(
            max_retries_per_task=retry["max_retries_per_task"],
            max_retries_per_run=retry["max_retries_per_run"],
            max_retries_per_window=retry["max_retries_per_window"],
            window_seconds=retry["window_seconds"],
            backoff_base_seconds=float(retry["backoff_base_seconds"]),
            backoff_max_seconds=float(retry["backoff_max_seconds"]),
            jitter=retry["jitter"],
            window_scope=retry["window_scope"],
        ),
        replay_approval=ReplayApproval(
            threshold_records=replay["threshold_records"],
            threshold_cost_usd=optional_float(replay["threshold_cost_usd"]),
            approvers=tuple(replay["approvers"]),
            timeout_seconds=replay["timeout_seconds"],
            default=replay["default"],
        ),
        cost_budget=CostBudget(
            monthly_usd=optional_float(cost["monthly_usd"]),
            alert_at_fraction=float(cost["alert_at_fraction"]),
        ),
        size_tables=frozen(settings["size_tables"]),
        network_profiles=frozen(settings.get("network_profiles") or {}),
        runner_targets=frozen(settings.get("runner_targets") or {}),
        failure_classes=_failure_classes(settings["failure_classes"]),
        declared_by=DeclaredBy(
            teams=tuple(dict.fromkeys((settings.get("declared_by") or {}).get("teams") or ())),
            bundles=tuple(dict.fromkeys((settings.get("declared_by") or {}).get("bundles") or ())),
        ),
    )


def _failure_rules(section: Any) -> FailureRules:
    section = section or {}
    return FailureRules(
        exceptions=tuple(section.get("exceptions") or ()),
        error_codes=tuple(section.get("error_codes") or ()),
        status_codes=tuple(str(code) for code in section.get("status_codes") or ()),
        messages=tuple(section.get("messages") or ()),
    )


def _failure_classes(settings: Mapping[str, Any]) -> FailureClasses:
    by_class = settings.get("runner_classes") or {}
    return FailureClasses(
        unmatched=settings["unmatched"],
        transient=_failure_rules(settings.get("transient")),
        permanent=_failure_rules(settings.get("permanent")),
        runner_classes=types.MappingProxyType(
            {
                runner_class: (_failure_rules(rules.get("transient")), _failure_rules(rules.get("permanent")))
                for runner_class, rules in by_class.items()
                if isinstance(rules, dict)
            }
        ),
    )


def _validated(text: str, source: str, base: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    report = Report(source)
    parsed, document, copies = parse_yaml(text, report, "a policy with at least `version: 1`")
    if parsed:
        _check_document(document, report, base)
        if copies:
            _check_copies(document, copies, report, base)
    if report.problems:
        return {}, report.problems
    assert isinstance(document, dict)
    return document, []


def incomplete_problems(defaults: Mapping[str, Any]) -> list[Problem]:
    """The keys the built-in ``defaults`` lack (they must set every key but the optional sections')."""
    report = Report(BUILT_IN_SOURCE)
    check_value(_SETTINGS, defaults, "defaults", report, null_sets_nothing=True,
                missing="every key set in the built-in defaults")
    return report.problems


@functools.cache
def _built_in_document() -> dict[str, Any]:
    """The built-in policy, parsed and checked to be valid and complete (a packaging mistake otherwise)."""
    text = resources.files("barecount_provider").joinpath("default_policy.yaml").read_text(encoding="utf-8")
    document, problems = _validated(text, BUILT_IN_SOURCE, base={})
    if not problems:
        defaults = document.get("defaults") or {}
        problems = incomplete_problems(defaults)
    if problems:
        raise PolicyError(problems)
    return document


def _build(document: Mapping[str, Any], source: str, base: Mapping[str, Any]) -> Policy:
    defaults = merge(base, document.get("defaults"))
    tenants = {
        name: _tenant_policy(name, merge(defaults, overrides))
        for name, overrides in (document.get("tenants") or {}).items()
    }
    return Policy(
        source=source,
        version=document["version"],
        defaults=_tenant_policy(DEFAULTS_TENANT, defaults),
        tenants=tenants,
    )


# ---------------------------------------------------------------------------------------------- public API


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """A policy from YAML text, merged over the built-in defaults; ``source`` names it in errors."""
    base = _built_in_document()["defaults"]
    document, problems = _validated(text, source, base)
    if problems:
        raise PolicyError(problems)
    return _build(document, source, base)


def load_policy(path: str | None = None) -> Policy:
    """The policy at ``path`` (None or empty: the built-in one). Raises PolicyError listing every mistake."""
    if not path:
        return _build(_built_in_document(), BUILT_IN_SOURCE, base={})
    return parse_policy(read_text_file(path, "YAML policy file", PolicyError), source=path)


def validate_file(path: str) -> list[Problem]:
    """Every mistake of the policy at ``path``, instead of raising; empty when it is valid."""
    try:
        load_policy(path)
    except PolicyError as err:
        return err.problems
    return []


@functools.cache
def get_policy() -> Policy:
    """The configured policy ([barecount] policy_path), loaded once per process (``get_policy.cache_clear()``)."""
    return load_policy(config.policy_path())


def configured_problems() -> list[Problem]:
    """The mistakes of the configured policy; empty when it is valid (then loaded once, as get_policy)."""
    try:
        get_policy()
    except PolicyError as err:
        return err.problems
    return []


POLICY_INVALID_RULE = "policy_invalid"


def invalid_policy_exception(tenant: str, problems: list[Problem]) -> dict[str, Any]:
    """The policy exception an evidence entry carries while the configured policy is invalid
    (``[barecount] policy_invalid``: ``fail`` refuses runner tasks, ``warn`` lets them try)."""
    return {
        "rule": POLICY_INVALID_RULE,
        "tenant": tenant,
        "limit": config.policy_path() or BUILT_IN_SOURCE,
        "requested": None,
        "mode": config.policy_invalid(),
        "problems": [str(problem) for problem in problems],
    }


def invalid_policy_message(problems: list[Problem]) -> str:
    """Why a runner task is refused while the policy is invalid (``policy_invalid = fail``)."""
    path = config.policy_path() or BUILT_IN_SOURCE
    listed = "\n".join(f"  {problem}" for problem in problems)
    return (
        f"BareCount refuses to launch: the governance policy {path} is invalid ([barecount] policy_invalid = "
        f"fail); fix it (check it with `barecount policy validate {path}`) or set policy_invalid = warn. "
        f"{len(problems)} problem(s):\n{listed}"
    )
