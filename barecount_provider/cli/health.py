"""``barecount health check``: every dependency of every tenant's network profiles checked now, from a terminal
or cron (the checks of :mod:`barecount_provider.runtime.health`, concurrently under one deadline).

Exit status: 0 when every dependency passes (healthy, or degraded where its profile's ``degraded`` policy is
``allow``; also when no profile names a dependency), 1 when any does not, 2 for bad input (an unknown tenant,
an invalid policy). ``--emit`` publishes the results as the sensors do (the metrics, and each dependency's
last result for ``GET /barecount/health``).
"""

from __future__ import annotations

import argparse
from typing import Any

from barecount_provider.cli.common import fail, print_json, print_table, seconds


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount health check``."""
    health = sub.add_parser(
        "health",
        help="check the dependencies of the tenants' network profiles (VPN, endpoints, agents, URLs)",
        description="Exit codes (check): 0 every dependency passes (healthy, or degraded where the profile "
        "allows it; or none to check), 1 any does not, 2 bad input (unknown tenant, invalid policy).",
    )
    health_sub = health.add_subparsers(dest="health_command", metavar="SUBCOMMAND", required=True)
    check = health_sub.add_parser(
        "check",
        help="run every dependency check now; one line per dependency",
        description="Checks every dependency of every allowed network profile of every tenant (or --tenant's), "
        "concurrently, within --timeout.",
    )
    check.add_argument("--tenant", help="one tenant (default: every tenant the policy declares, and [barecount] default_tenant)")
    check.add_argument("--emit", action="store_true", help="publish the results: the health metrics, and each dependency's last result (GET /barecount/health)")
    check.add_argument("--json", action="store_true", help="one JSON document on standard output, nothing else")
    check.add_argument("--timeout", type=seconds, help="seconds for the whole round (default [barecount] health_timeout_seconds)")
    check.set_defaults(func=cmd_check)


def _passes(result: Any, allows_degraded: bool) -> bool:
    return bool(result.status == "healthy" or (result.status == "degraded" and allows_degraded))


def cmd_check(args: argparse.Namespace) -> int:
    from barecount_provider import config
    from barecount_provider.policy import get_policy
    from barecount_provider.runtime import health

    policy = get_policy()  # an invalid policy: PolicyError, exit 2 with its mistakes
    tenant = args.tenant
    if tenant is not None and tenant not in policy.tenants and tenant != config.default_tenant():
        declared = ", ".join(sorted(policy.tenants)) or "none"
        return fail(
            "barecount health check",
            f"--tenant {tenant!r} is not declared in the policy ({policy.source}; tenants: {declared}; "
            f"[barecount] default_tenant: {config.default_tenant()!r})",
            2,
        )
    specs = health.all_specs(tenant)
    verdict = health.check(specs, timeout_s=args.timeout)
    results = list(verdict.results)
    allows: dict[tuple[str | None, str | None], bool] = {}
    for spec in specs:
        key = (spec.tenant, spec.network_profile)
        if key not in allows and spec.tenant is not None and spec.network_profile is not None:
            allows[key] = health.degraded_policy(spec.tenant, spec.network_profile) == "allow"
    verdicts = [
        _passes(result, allows.get((result.dependency.tenant, result.dependency.network_profile), True)) for result in results
    ]
    passed = all(verdicts)
    if args.emit:
        from barecount_provider.runtime.health_report import publish

        publish(results, source="cli")
    if args.json:
        print_json({"passed": passed, "results": [{**r.as_dict(), "passes": ok} for r, ok in zip(results, verdicts, strict=True)]})
        return 0 if passed else 1
    if not results:
        who = f"tenant {tenant!r}" if tenant else "any tenant"
        print(f"No dependency to check: no network profile of {who} names one (network_profiles.<profile>.dependencies).")
        return 0
    rows = [
        [
            r.status,
            r.dependency.tenant or "-",
            r.dependency.network_profile or "-",
            r.dependency.kind,
            r.dependency.id,
            f"{r.latency_ms:.0f} ms",
            r.error_code or "-",
            r.detail,
        ]
        for r in results
    ]
    print_table(rows, ["STATUS", "TENANT", "PROFILE", "KIND", "ID", "LATENCY", "ERROR", "DETAIL"], right=[5])
    failing = verdicts.count(False)
    print(f"{len(results)} dependencies: {'all pass' if passed else f'{failing} do not pass'}{' (published)' if args.emit else ''}")
    return 0 if passed else 1
