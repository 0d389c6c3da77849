"""The policy's schema: the sections of ``defaults`` and of each ``tenants.<name>`` and their checks, built
from the shared schema layer (:mod:`barecount_provider.schema`)."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping

from barecount_provider.policy.model import (
    DEGRADED_POLICIES,
    FAILURE_CLASS_NAMES,
    FARGATE_CPU_UNITS,
    GLUE_WORKER_TYPES,
    HEALTH_URL_SCHEMES,
    NETWORK_PROFILES,
    REPLAY_DEFAULTS,
    RETRY_WINDOW_SCOPES,
    RUNNER_CLASSES,
    SIZED_RUNNER_CLASSES,
    SIZES,
    TENANT_NAME,
)
from barecount_provider.policy.quantities import parse_cpu_quantity, parse_memory_quantity
from barecount_provider.schema import (
    MISSING,
    Check,
    Section,
    boolean,
    integer,
    list_of,
    matching,
    named,
    number,
    one_of,
    string_map,
)

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

# Where each network profile runs, for the services that take networking per run (beside its dependencies). Optional: the built-in
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

# What a network profile relies on (barecount_provider.health checks them). Each list item is a mapping
# with required and optional keys; an id (name, URL) is given once per list.
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
VPN_CONNECTION_ID = re.compile(r"vpn-[0-9a-f]{8}([0-9a-f]{9})?")
VPC_ENDPOINT_ID = re.compile(r"vpce-[0-9a-f]{8}([0-9a-f]{9})?")


def is_host(value: object) -> bool:
    """A DNS name or an IPv4/IPv6 address (no brackets, no port)."""
    if not (isinstance(value, str) and value and len(value) <= 253):
        return False
    if _HOST_NAME.fullmatch(value):
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_dns_name(value: object) -> bool:
    """A DNS name, not an IP address (what a TLS client sends as its server name)."""
    if not (isinstance(value, str) and len(value) <= 253 and _HOST_NAME.fullmatch(value)):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return True
    return False


def _host(what: str, accepts: Callable[[object], bool] = is_host) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not accepts(value):
            yield "", value, what

    return check


def _http_path() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and value.startswith("/") and not any(c.isspace() for c in value)):
            yield "", value, "an HTTP path starting with '/' (no spaces)"

    return check


HEALTH_URL_EXPECTED = "an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)"


def is_health_url(value: object) -> bool:
    """An ``http(s)://host[:port][/path]`` URL, or ``tcp://host:port``."""
    if not (isinstance(value, str) and not any(char.isspace() for char in value)):
        return False
    parts = urllib.parse.urlsplit(value)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of 0..65535
        return False
    if parts.scheme not in HEALTH_URL_SCHEMES or parts.username is not None or not is_host(parts.hostname):
        return False
    if port == 0:
        return False
    if parts.scheme == "tcp":
        return port is not None and not (parts.path or parts.query or parts.fragment)
    return True


def _without_credentials(value: object) -> object:
    """``value``, a URL with credentials shown as ``user:***@`` never: as ``***@`` (errors are logged, and
    land in the evidence as the ``policy_invalid`` exception)."""
    if isinstance(value, str) and "@" in value:
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:
            return value
        if parts.username is not None or parts.password is not None:
            return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
    return value


def _health_url() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not is_health_url(value):
            yield "", _without_credentials(value), HEALTH_URL_EXPECTED

    return check


def _record(fields: Mapping[str, Check], required: tuple[str, ...], what: str) -> Check:
    """A mapping with the keys ``fields`` (``required`` ones must be set), each checked."""
    keys = ", ".join(f"{key}{'' if key in required else ' (optional)'}" for key in fields)

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, dict):
            yield "", value, f"{what}: a mapping (keys: {keys})"
            return
        for key, item in value.items():
            spec = fields.get(key) if isinstance(key, str) else None
            if spec is None:
                yield f".{key}", key, f"a known key of {what} (allowed: {', '.join(fields)})"
                continue
            for suffix, bad, expected in spec(item):
                yield f".{key}{suffix}", bad, expected
        for key in required:
            if key not in value:
                yield f".{key}", MISSING, f"the {key} of {what}"

    return check


def _unique_list(item: Check, what: str, key: str | None, unique: str) -> Check:
    """A list of ``item``; the ``key`` of each item (the item itself when None) is given once: a copy is
    not ``unique`` (e.g. 'a unique id')."""
    listed = list_of(item, what)

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        yield from listed(value)
        if not isinstance(value, list):
            return
        first: dict[object, int] = {}
        for index, element in enumerate(value):
            if key is None:
                ident, suffix = element, f"[{index}]"
            elif isinstance(element, dict):
                ident, suffix = element.get(key), f"[{index}].{key}"
            else:
                continue
            if not isinstance(ident, str):  # a bad or missing id is reported by the item's check
                continue
            if ident in first:
                yield suffix, ident, f"{unique} (the same is at [{first[ident]}])"
            else:
                first[ident] = index

    return check


_VPN_CONNECTION = _record(
    {
        "id": matching(VPN_CONNECTION_ID.pattern, "a VPN connection id such as 'vpn-0123456789abcdef0'"),
        "min_tunnels_up": integer(1, 2),
    },
    required=("id",),
    what="a VPN connection",
)
_ENDPOINT_PROBE = _record(
    {
        "host": _host("a host name or IP address to probe"),
        "port": integer(1, 65535),
        "tls_server_name": _host("a TLS server name (a DNS name, not an IP address)", is_dns_name),
        "http_path": _http_path(),
    },
    required=("host", "port"),
    what="an endpoint probe",
)
_VPC_ENDPOINT = _record(
    {
        "id": matching(VPC_ENDPOINT_ID.pattern, "a VPC endpoint id such as 'vpce-0123456789abcdef0'"),
        "probe": _ENDPOINT_PROBE,
    },
    required=("id", "probe"),
    what="a VPC endpoint",
)
_AGENT = _record(
    {
        "name": matching(TENANT_NAME.pattern.strip("^$"), f"an agent name matching {TENANT_NAME.pattern}"),
        "max_heartbeat_age_seconds": integer(1),
    },
    required=("name",),
    what="an agent",
)
_NETWORK_DEPENDENCIES = Section(
    {
        "vpn_connections": _unique_list(_VPN_CONNECTION, "VPN connections", "id", "a unique VPN connection id"),
        "vpc_endpoints": _unique_list(_VPC_ENDPOINT, "VPC endpoints", "id", "a unique VPC endpoint id"),
        "agents": _unique_list(_AGENT, "agents", "name", "a unique agent name"),
        "health_urls": _unique_list(_health_url(), "health URLs", None, "a unique health URL"),
        "degraded": one_of(DEGRADED_POLICIES),
        "require_healthy": boolean(),
    },
    optional=True,
)
_NETWORK_PROFILE = Section({**_NETWORK_PLACEMENT.fields, "dependencies": _NETWORK_DEPENDENCIES}, optional=True)
_NETWORK_PROFILES = Section(
    dict.fromkeys(NETWORK_PROFILES, _NETWORK_PROFILE),
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
SETTINGS = Section(
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

TOP_LEVEL_KEYS = ("version", "defaults", "tenants")


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

    return list(dict.fromkeys(walk(SETTINGS, "")))
