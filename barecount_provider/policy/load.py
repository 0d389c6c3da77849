"""Reading a policy: YAML text or a file -> a validated, typed :class:`~.model.Policy`, merged over the
built-in policy; ``get_policy`` loads the configured one once per process."""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from importlib import resources
from typing import Any

from barecount_provider import config
from barecount_provider.policy.model import (
    BUILT_IN_SOURCE,
    DEFAULTS_TENANT,
    AgentDependency,
    CostBudget,
    DeclaredBy,
    EndpointProbe,
    FailureClasses,
    FailureRules,
    Limits,
    NetworkDependencies,
    Policy,
    ReplayApproval,
    RetryBudget,
    TenantPolicy,
    VpcEndpoint,
    VpnConnection,
)
from barecount_provider.policy.validate import PolicyError, incomplete_problems, validated
from barecount_provider.schema import Problem, frozen, merge, problems_of, read_text_file


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
        network_profiles=frozen(
            {
                profile: {backend: item for backend, item in (placement or {}).items() if backend != "dependencies"}
                for profile, placement in (settings.get("network_profiles") or {}).items()
            }
        ),
        network_dependencies=types.MappingProxyType(
            {
                profile: _network_dependencies(placement["dependencies"])
                for profile, placement in (settings.get("network_profiles") or {}).items()
                if placement and placement.get("dependencies")
            }
        ),
        runner_targets=frozen(settings.get("runner_targets") or {}),
        failure_classes=_failure_classes(settings["failure_classes"]),
        declared_by=DeclaredBy(
            teams=tuple(dict.fromkeys((settings.get("declared_by") or {}).get("teams") or ())),
            bundles=tuple(dict.fromkeys((settings.get("declared_by") or {}).get("bundles") or ())),
        ),
    )


def _network_dependencies(section: Mapping[str, Any]) -> NetworkDependencies:
    return NetworkDependencies(
        vpn_connections=tuple(
            VpnConnection(id=item["id"], min_tunnels_up=item.get("min_tunnels_up", 1))
            for item in section.get("vpn_connections") or ()
        ),
        vpc_endpoints=tuple(
            VpcEndpoint(
                id=item["id"],
                probe=EndpointProbe(
                    host=item["probe"]["host"],
                    port=item["probe"]["port"],
                    tls_server_name=item["probe"].get("tls_server_name"),
                    http_path=item["probe"].get("http_path"),
                ),
            )
            for item in section.get("vpc_endpoints") or ()
        ),
        agents=tuple(
            AgentDependency(name=item["name"], max_heartbeat_age_seconds=item.get("max_heartbeat_age_seconds", 120))
            for item in section.get("agents") or ()
        ),
        health_urls=tuple(section.get("health_urls") or ()),
        degraded=section.get("degraded") or "allow",
        require_healthy=bool(section.get("require_healthy", False)),
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


@functools.cache
def _built_in_document() -> dict[str, Any]:
    """The built-in policy, parsed and checked to be valid and complete (a packaging mistake otherwise)."""
    text = resources.files("barecount_provider").joinpath("default_policy.yaml").read_text(encoding="utf-8")
    document, problems = validated(text, BUILT_IN_SOURCE, base={})
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


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """A policy from YAML text, merged over the built-in defaults; ``source`` names it in errors."""
    base = _built_in_document()["defaults"]
    document, problems = validated(text, source, base)
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
    return problems_of(lambda: load_policy(path), PolicyError)


@functools.cache
def get_policy() -> Policy:
    """The configured policy ([barecount] policy_path), loaded once per process (``get_policy.cache_clear()``)."""
    return load_policy(config.policy_path())


def configured_problems() -> list[Problem]:
    """The mistakes of the configured policy; empty when it is valid (then loaded once, as get_policy)."""
    return problems_of(get_policy, PolicyError)
