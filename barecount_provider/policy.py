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
import math
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, TypeGuard

import yaml

from barecount_provider import config

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


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""The ``value`` of a Problem about a required key that is absent."""


@dataclass(frozen=True)
class Unreadable:
    """The ``value`` of a Problem about a file that could not be read or parsed as YAML."""

    reason: str


@dataclass(frozen=True)
class Problem:
    """One mistake in a policy: where it is, what was found and what was expected.

    ``key_path`` is dotted, with ``[i]`` for list items (``tenants.acme.allowed_sizes[2]``); it is empty for
    mistakes about the file as a whole (unreadable, not YAML, empty).
    """

    file: str
    key_path: str
    value: object
    expected: str
    line: int | None = None
    """For a mistake inside a key given more than once: the line of the copy it is in (each copy is checked)."""

    def __str__(self) -> str:
        where = f"{self.file}: {self.key_path}" if self.key_path else self.file
        if self.line is not None:
            where += f" (copy at line {self.line})"
        if self.value is MISSING:
            return f"{where}: missing; expected {self.expected}"
        if isinstance(self.value, Unreadable):
            return f"{where}: {self.value.reason}; expected {self.expected}"
        return f"{where}: {self.value!r} is not {self.expected}"


class PolicyError(ValueError):
    """An invalid policy. ``problems`` holds every mistake found; the message lists them, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


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
#
# A schema is a tree of _Section (a mapping with known keys) whose leaves are checks. A check takes a value
# and yields (path suffix, bad value, expected) for each mistake; the suffix is "" or "[i]" for list items.

Check = Callable[[object], Iterator[tuple[str, object, str]]]


@dataclass(frozen=True)
class _Section:
    fields: Mapping[str, _Section | Check]
    keys_expected: str = ""  # how to describe the allowed keys; default: "a known key (allowed: ...)"
    optional: bool = False  # the built-in defaults need not set its keys (network placements, targets)

    def key_expectation(self) -> str:
        return self.keys_expected or f"a known key (allowed: {', '.join(self.fields)})"


def _is_number(value: object) -> TypeGuard[int | float]:
    # bool is an int in Python, never a number in a policy
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(minimum: int, maximum: int | None = None, *, nullable: bool = False) -> Check:
    expected = (
        f"an integer >= {minimum}" if maximum is None else f"an integer between {minimum} and {maximum}"
    )
    expected += ", or null" if nullable else ""

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if value is None and nullable:
            return
        if not (isinstance(value, int) and not isinstance(value, bool)):
            yield "", value, expected
        elif value < minimum or (maximum is not None and value > maximum):
            yield "", value, expected

    return check


def _number(minimum: float, maximum: float | None = None, *, nullable: bool = False) -> Check:
    expected = f"a number >= {minimum}" if maximum is None else f"a number between {minimum} and {maximum}"
    expected += ", or null" if nullable else ""

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if value is None and nullable:
            return
        if not _is_number(value):
            yield "", value, expected
        elif value < minimum or (maximum is not None and value > maximum):
            yield "", value, expected

    return check


def _boolean() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, bool):
            yield "", value, "true or false"

    return check


def _one_of(options: tuple[Any, ...]) -> Check:
    expected = f"one of {', '.join(str(option) for option in options)}"

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        # `value in options` would take True for 1: compare types too
        if not any(type(value) is type(option) and value == option for option in options):
            yield "", value, expected

    return check


def _list_of(item: Check, what: str) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, list):
            yield "", value, f"a list of {what}"
            return
        for index, element in enumerate(value):
            for suffix, bad, expected in item(element):
                yield f"[{index}]{suffix}", bad, expected

    return check


def _matching(pattern: str, what: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and compiled.fullmatch(value)):
            yield "", value, what

    return check


def _name(what: str) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and value.strip()):
            yield "", value, f"{what} (a non-empty string)"

    return check


def _string_map(what: str) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, dict):
            yield "", value, f"a mapping of {what}"
            return
        for key, item in value.items():
            if not (isinstance(key, str) and key and isinstance(item, str)):
                yield f".{key}", item, f"a string value under a non-empty string key ({what})"

    return check


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


def _user_name() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and value.strip()):
            yield "", value, "a user name (a non-empty string)"

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
    if _is_number(value):
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
_SIZE_ENTRIES: dict[str, _Section] = {
    "serverless": _Section(
        {
            "lambda": _Section(
                {"memory_mb": _integer(128, 10240), "ephemeral_storage_mb": _integer(512, 10240)}
            ),
        }
    ),
    "container": _Section(
        {
            "pod": _Section(
                {"cpu_request": _CPU, "cpu_limit": _CPU, "memory_request": _MEMORY, "memory_limit": _MEMORY}
            ),
            "fargate": _Section({"cpu": _one_of(FARGATE_CPU_UNITS), "memory_mb": _integer(512, 122880)}),
        }
    ),
    "managed_etl": _Section(
        {
            "glue": _Section(
                {
                    "worker_type": _one_of(GLUE_WORKER_TYPES),
                    "number_of_workers": _integer(1),
                    "auto_scaling": _boolean(),
                }
            ),
            "emr": _Section(
                {
                    "initial_workers": _integer(0),
                    "worker_cpu": _matching(r"\d+ ?vCPU", "an EMR Serverless CPU such as '4 vCPU'"),
                    "worker_memory": _matching(r"\d+ ?GB", "an EMR Serverless memory such as '16 GB'"),
                    "max_cpu": _matching(r"\d+ ?vCPU", "an EMR Serverless CPU such as '400 vCPU'"),
                    "max_memory": _matching(r"\d+ ?GB", "an EMR Serverless memory such as '1600 GB'"),
                }
            ),
        }
    ),
    "dedicated": _Section(
        {
            "ec2": _Section(
                {
                    "instance_type": _matching(
                        r"[a-z][a-z0-9-]*\.[a-z0-9]+", "an EC2 instance type such as 'm5.large'"
                    ),
                    "host_count": _integer(1),
                }
            ),
        }
    ),
}

_SIZE_TABLES = _Section(
    {
        runner_class: _Section(
            dict.fromkeys(SIZES, entry), keys_expected=f"a size: one of {', '.join(SIZES)}"
        )
        for runner_class, entry in _SIZE_ENTRIES.items()
    },
    keys_expected=f"a runner class with a size table: one of {', '.join(SIZED_RUNNER_CLASSES)}",
)

# Where each network profile runs, for the services that take networking per run. Optional: the built-in
# policy names no subnet, and an operator whose profile has no placement uses its own arguments.
_NETWORK_PLACEMENT = _Section(
    {
        "ecs": _Section(
            {
                "subnets": _list_of(_name("a subnet id"), "subnet ids"),
                "security_groups": _list_of(_name("a security group id"), "security group ids"),
                "assign_public_ip": _one_of(("ENABLED", "DISABLED")),
            }
        ),
        "ec2": _Section(
            {
                "subnet_id": _name("a subnet id"),
                "security_group_ids": _list_of(_name("a security group id"), "security group ids"),
            }
        ),
        "pod": _Section(
            {
                "namespace": _name("a Kubernetes namespace"),
                "node_selector": _string_map("node label -> value"),
                "service_account_name": _name("a Kubernetes service account"),
            }
        ),
    },
    optional=True,
)
_NETWORK_PROFILES = _Section(
    dict.fromkeys(NETWORK_PROFILES, _NETWORK_PLACEMENT),
    keys_expected=f"a network profile: one of {', '.join(NETWORK_PROFILES)}",
    optional=True,
)
# What the size and network profile select where the service does not take them per run.
_RUNNER_TARGETS = _Section(
    {
        "lambda": _target_map("a Lambda qualifier (alias or version)"),
        "glue": _target_map("a Glue job name"),
        "emr": _target_map("an EMR Serverless application id"),
    },
    optional=True,
)

# Which DAGs may declare a tenant: DAG bundles, and teams owning bundles. Optional: empty, any DAG may.
_DECLARED_BY = _Section(
    {
        "teams": _list_of(_name("an Airflow team name"), "Airflow team names"),
        "bundles": _list_of(_name("a DAG bundle name"), "DAG bundle names"),
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


_FAILURE_RULES = _Section(
    {
        "exceptions": _list_of(
            _matching(_EXCEPTION_NAME.pattern, "an exception class name, dotted (builtins.TimeoutError) or bare (ClientError)"),
            "exception class names",
        ),
        "error_codes": _list_of(_name("a service error code"), "service error codes"),
        "status_codes": _list_of(_status_code(), "HTTP statuses"),
        "messages": _list_of(_regex(), "regular expressions"),
    },
    optional=True,
)
_FAILURE_CLASSES = _Section(
    {
        "unmatched": _one_of(FAILURE_CLASS_NAMES),
        "transient": _FAILURE_RULES,
        "permanent": _FAILURE_RULES,
        "runner_classes": _Section(
            dict.fromkeys(RUNNER_CLASSES, _Section({"transient": _FAILURE_RULES, "permanent": _FAILURE_RULES}, optional=True)),
            keys_expected=f"a runner class: one of {', '.join(RUNNER_CLASSES)}",
            optional=True,
        ),
    }
)

# The settings of `defaults` and of each `tenants.<name>`.
_SETTINGS = _Section(
    {
        "allowed_runner_classes": _list_of(_one_of(RUNNER_CLASSES), "runner classes"),
        "max_size": _one_of(SIZES),
        "allowed_network_profiles": _list_of(_one_of(NETWORK_PROFILES), "network profiles"),
        "trace_sampling_ratio": _number(0.0, 1.0),
        "debug_logs_in_production": _boolean(),
        "limits": _Section(
            {"max_workers": _integer(1), "max_hosts": _integer(0), "max_parallel_tasks": _integer(1)}
        ),
        "retry_budget": _Section(
            {
                "max_retries_per_task": _integer(0),
                "max_retries_per_run": _integer(0),
                "max_retries_per_window": _integer(0),
                "window_seconds": _integer(1),
                "backoff_base_seconds": _number(0),
                "backoff_max_seconds": _number(0),
                "jitter": _boolean(),
                "window_scope": _one_of(RETRY_WINDOW_SCOPES),
            }
        ),
        "failure_classes": _FAILURE_CLASSES,
        "replay_approval": _Section(
            {
                "threshold_records": _integer(0, nullable=True),
                "threshold_cost_usd": _number(0, nullable=True),
                "approvers": _list_of(_user_name(), "user names"),
                "timeout_seconds": _integer(1),
                "default": _one_of(REPLAY_DEFAULTS),
            }
        ),
        "cost_budget": _Section(
            {"monthly_usd": _number(0, nullable=True), "alert_at_fraction": _number(0.0, 1.0)}
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

    def walk(section: _Section, prefix: str) -> Iterator[str]:
        for key, spec in section.fields.items():
            if isinstance(spec, _Section):
                # every size (network profile) shares one entry: documented once, as <size> (<profile>)
                name = "<size>" if key in SIZES else "<profile>" if key in NETWORK_PROFILES else key
                if prefix == "failure_classes.runner_classes." and key in RUNNER_CLASSES:
                    name = "<runner_class>"  # every runner class's rules share one entry
                yield from walk(spec, f"{prefix}{name}.")
            else:
                yield f"{prefix}{key}"

    return list(dict.fromkeys(walk(_SETTINGS, "")))


# ----------------------------------------------------------------------------------------------- validation


class _Report:
    """Collects the problems of one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, key_path: str, value: object, expected: str) -> None:
        self.problems.append(Problem(self.file, key_path, value, expected))


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_section(section: _Section, value: object, path: str, report: _Report) -> None:
    if value is None:  # an empty key in place of a mapping overrides nothing
        return
    if not isinstance(value, dict):
        report.add(path, value, f"a mapping (keys: {', '.join(section.fields)})")
        return
    for key, item in value.items():
        spec = section.fields.get(key) if isinstance(key, str) else None
        if spec is None:
            report.add(_join(path, key), key, section.key_expectation())
        elif isinstance(spec, _Section):
            _check_section(spec, item, _join(path, key), report)
        else:
            for suffix, bad, expected in spec(item):
                report.add(_join(path, key) + suffix, bad, expected)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key, anything else replaces. Inputs are not changed."""
    merged = dict(base)
    for key, value in (override or {}).items():
        if isinstance(merged.get(key), dict) and (value is None or isinstance(value, dict)):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    report: _Report,
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
    return float(value) if _is_number(value) else None


def _check_consistency(merged: dict[str, Any], own: object, path: str, report: _Report) -> None:
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


def _check_document(document: object, report: _Report, base: Mapping[str, Any]) -> None:
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
    _check_section(_SETTINGS, defaults, "defaults", report)
    merged_defaults = _merge(base, defaults if isinstance(defaults, dict) else None)
    # Rules are reported where the file sets one of their keys; the built-in (no base) sets them all.
    _check_consistency(merged_defaults, defaults if base else merged_defaults, "defaults", report)

    tenants = document.get("tenants")
    if tenants is None:
        return
    if not isinstance(tenants, dict):
        report.add("tenants", tenants, "a mapping of tenant name -> settings")
        return
    for name, overrides in tenants.items():
        path = _join("tenants", name)
        if not (isinstance(name, str) and TENANT_NAME.fullmatch(name)):
            report.add(path, name, f"a tenant name matching {TENANT_NAME.pattern}")
        _check_section(_SETTINGS, overrides, path, report)
        if isinstance(overrides, dict):
            _check_consistency(_merge(merged_defaults, overrides), overrides, path, report)


# ------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Copy:
    """One copy of a key given more than once in a mapping: where it is and its value node."""

    path: str  # dotted key path, as Problem.key_path writes it
    keys: tuple[Any, ...]  # the same path as keys of the loaded document (str keys, int list indexes)
    line: int  # 1-based line of the key
    mark: yaml.Mark
    value_node: yaml.Node
    last: bool  # the copy YAML keeps (the one the loaded document holds)


def _duplicate_keys(node: yaml.Node, path: str, keys: tuple[Any, ...], seen_nodes: set[int]) -> Iterator[list[_Copy]]:
    """Every copy of each key given more than once in one mapping, which YAML loading silently resolves to
    the last one. Merge keys (``<<``) are YAML's way to override on purpose and are left alone."""
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        copies: dict[tuple[str, str], list[tuple[yaml.Node, yaml.Node]]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                copies.setdefault((key_node.tag, key_node.value), []).append((key_node, value_node))
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            found = copies.get((key_node.tag, key_node.value)) if isinstance(key_node, yaml.ScalarNode) else None
            if found is not None and len(found) > 1 and found[0][0] is key_node:
                yield [
                    _Copy(_join(path, name), (*keys, name), copy_key.start_mark.line + 1, copy_key.start_mark,
                          copy_value, index == len(found) - 1)
                    for index, (copy_key, copy_value) in enumerate(found)
                ]
            yield from _duplicate_keys(value_node, _join(path, name), (*keys, name), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{index}]", (*keys, index), seen_nodes)


def _parse_yaml(text: str, report: _Report) -> tuple[bool, object, list[tuple[_Copy, object]]]:
    """(parsed, document, copies). Syntax errors and duplicate keys go to ``report`` with their line and
    column; ``copies`` holds, for each key given more than once, each copy with its loaded value.

    libyaml's loader when present (about 8x faster: the policy is read by every task process); a file it
    rejects is read again by the pure-Python loader, whose error messages are the documented ones."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        scratch = _Report(report.file)
        parsed, document, copies = _parse_yaml_with(fast, text, scratch)
        if parsed and not scratch.problems:
            return parsed, document, copies
    return _parse_yaml_with(yaml.SafeLoader, text, report)


def _parse_yaml_with(loader_class: Any, text: str, report: _Report) -> tuple[bool, object, list[tuple[_Copy, object]]]:
    loader = loader_class(text)
    copies: list[tuple[_Copy, object]] = []
    try:
        node = loader.get_single_node()
        if node is None:
            report.add("", Unreadable("the file is empty"), "a policy with at least `version: 1`")
            return False, None, []
        groups = list(_duplicate_keys(node, "", (), set()))
        for group in groups:
            for copy in group[1:]:
                where = f"line {copy.mark.line + 1}, column {copy.mark.column + 1}"
                report.add(copy.path, Unreadable(f"given again at {where}"), "each key once in a mapping")
        document = loader.construct_document(node)
        for group in groups:
            for copy in group:
                value = None if copy.last else loader.construct_object(copy.value_node, deep=True)
                copies.append((copy, value))
    except yaml.MarkedYAMLError as err:
        error_mark = err.problem_mark or err.context_mark
        where = f" at line {error_mark.line + 1}, column {error_mark.column + 1}" if error_mark else ""
        detail = err.problem or "unreadable"
        detail += f" ({err.context})" if err.context else ""
        report.add("", Unreadable(f"YAML syntax error{where}: {detail}"), "valid YAML")
        return False, None, []
    except yaml.YAMLError as err:
        report.add("", Unreadable(f"YAML syntax error: {err}"), "valid YAML")
        return False, None, []
    finally:
        loader.dispose()
    return True, document, copies


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
    document: object, copies: list[tuple[_Copy, object]], report: _Report, base: Mapping[str, Any]
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
        scratch = _Report(report.file)
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

    def frozen(value: Any) -> Any:
        if isinstance(value, dict):
            return types.MappingProxyType({key: frozen(item) for key, item in value.items()})
        return value

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


def _incomplete_keys(section: _Section, value: Mapping[str, Any], path: str) -> Iterator[str]:
    """Key paths the schema declares but ``value`` lacks (the built-in defaults must set every key)."""
    for key, spec in section.fields.items():
        if isinstance(spec, _Section) and spec.optional:
            continue
        if key not in value:
            yield _join(path, key)
        elif isinstance(spec, _Section) and isinstance(value[key], dict):
            yield from _incomplete_keys(spec, value[key], _join(path, key))


def _validated(text: str, source: str, base: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    report = _Report(source)
    parsed, document, copies = _parse_yaml(text, report)
    if parsed:
        _check_document(document, report, base)
        if copies:
            _check_copies(document, copies, report, base)
    if report.problems:
        return {}, report.problems
    assert isinstance(document, dict)
    return document, []


@functools.cache
def _built_in_document() -> dict[str, Any]:
    """The built-in policy, parsed and checked to be valid and complete (a packaging mistake otherwise)."""
    text = resources.files("barecount_provider").joinpath("default_policy.yaml").read_text(encoding="utf-8")
    document, problems = _validated(text, BUILT_IN_SOURCE, base={})
    if not problems:
        defaults = document.get("defaults") or {}
        problems = [
            Problem(BUILT_IN_SOURCE, key_path, MISSING, "every key set in the built-in defaults")
            for key_path in _incomplete_keys(_SETTINGS, defaults, "defaults")
        ]
    if problems:
        raise PolicyError(problems)
    return document


def _build(document: Mapping[str, Any], source: str, base: Mapping[str, Any]) -> Policy:
    defaults = _merge(base, document.get("defaults"))
    tenants = {
        name: _tenant_policy(name, _merge(defaults, overrides))
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


def read_text_file(path: str, what: str, error: Callable[[list[Problem]], Exception]) -> str:
    """The UTF-8 text at ``path``; a file that cannot be read, or is not UTF-8, raises ``error`` with the
    Problem that says so (``what`` names the file in the expectation: "a readable <what>")."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
        raise error([Problem(path, "", Unreadable(reason), f"a readable {what}")]) from None
    except UnicodeDecodeError as err:
        reason = f"is not UTF-8 text (byte {err.start})"
        raise error([Problem(path, "", Unreadable(reason), f"a UTF-8 {what}")]) from None


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
