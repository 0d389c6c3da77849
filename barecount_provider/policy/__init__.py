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

The package is split by concern: :mod:`.model` (the vocabulary and the typed policy), :mod:`.quantities`
(Kubernetes quantities), :mod:`.sections` (the schema), :mod:`.validate` (validation and the rules across
keys), :mod:`.load` (building, loading, ``get_policy``) and :mod:`.invalid` (what an invalid policy does).
It imports only the foundation (config, schema).
"""

from __future__ import annotations

from barecount_provider.policy.invalid import (
    POLICY_INVALID_RULE,
    invalid_policy_exception,
    invalid_policy_message,
)
from barecount_provider.policy.load import (
    configured_problems,
    get_policy,
    load_policy,
    parse_policy,
    validate_file,
)
from barecount_provider.policy.model import (
    BUILT_IN_SOURCE,
    DEFAULTS_TENANT,
    DEGRADED_POLICIES,
    FAILURE_CLASS_NAMES,
    FARGATE_CPU_UNITS,
    GLUE_WORKER_TYPES,
    NETWORK_PROFILES,
    REPLAY_DEFAULTS,
    RETRY_WINDOW_SCOPES,
    RUNNER_CLASSES,
    SIZED_RUNNER_CLASSES,
    SIZES,
    SUPPORTED_VERSIONS,
    TENANT_NAME,
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
    SizeTables,
    TenantPolicy,
    VpcEndpoint,
    VpnConnection,
)
from barecount_provider.policy.quantities import (
    parse_cpu_quantity,
    parse_memory_quantity,
)
from barecount_provider.policy.sections import (
    TARGET_SELECTORS,
    is_target_selector,
    settings_key_paths,
)
from barecount_provider.policy.validate import (
    PolicyError,
    incomplete_problems,
)
from barecount_provider.schema import (  # the problem record the policy's errors list
    MISSING,
    Problem,
    Unreadable,
)

__all__ = [
    "AgentDependency",
    "BUILT_IN_SOURCE",
    "CostBudget",
    "DEFAULTS_TENANT",
    "DEGRADED_POLICIES",
    "DeclaredBy",
    "EndpointProbe",
    "FAILURE_CLASS_NAMES",
    "FARGATE_CPU_UNITS",
    "FailureClasses",
    "FailureRules",
    "GLUE_WORKER_TYPES",
    "Limits",
    "MISSING",
    "NETWORK_PROFILES",
    "NetworkDependencies",
    "POLICY_INVALID_RULE",
    "Policy",
    "PolicyError",
    "Problem",
    "REPLAY_DEFAULTS",
    "RETRY_WINDOW_SCOPES",
    "RUNNER_CLASSES",
    "ReplayApproval",
    "RetryBudget",
    "SIZED_RUNNER_CLASSES",
    "SIZES",
    "SUPPORTED_VERSIONS",
    "SizeTables",
    "TARGET_SELECTORS",
    "TENANT_NAME",
    "TenantPolicy",
    "Unreadable",
    "VpcEndpoint",
    "VpnConnection",
    "configured_problems",
    "get_policy",
    "incomplete_problems",
    "invalid_policy_exception",
    "invalid_policy_message",
    "is_target_selector",
    "load_policy",
    "parse_cpu_quantity",
    "parse_memory_quantity",
    "parse_policy",
    "settings_key_paths",
    "validate_file",
]
