"""``HealthCheckOperator``: every health check of the policy's network profiles, once, from a DAG.

What ``barecount health check`` does from a terminal, as a task: the dependencies of every network profile a
tenant may use (one tenant's, or every tenant's in the policy) are checked concurrently, each within its
deadline; the results go to the metrics and to BareCount's database (what ``GET /barecount/health`` lists),
into this try's evidence entry (``health``) and to XCom (``health``: the summary). The task fails when a
profile's dependencies do not pass (its ``degraded`` policy applied), so that Airflow's own failure alerts
fire; ``fail_on_unhealthy=False`` only records. A policy that declares no dependency is a success with nothing
checked (the log says so). ``dags/example_health.py`` runs it every 5 minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider.health.plan import Verdict
from barecount_provider.runtime import health as runtime_health
from barecount_provider.runtime.health_report import publish

log = logging.getLogger(__name__)

HEALTH_XCOM_KEY = "health"


class HealthCheckOperator(BaseOperator):
    """Check the dependencies of the policy's network profiles once (see the module docstring).

    :param tenants: the tenants whose profiles are checked; None: every tenant of the policy.
    :param network_profiles: only these profiles; None: every profile that declares dependencies.
    :param timeout_s: each check's deadline in seconds; None: ``[barecount] health_timeout_seconds``.
    :param fail_on_unhealthy: fail the task when a profile does not pass (default); False: only record.
    """

    template_fields: Sequence[str] = ("tenants", "network_profiles")

    def __init__(
        self,
        *,
        tenants: Sequence[str] | None = None,
        network_profiles: Sequence[str] | None = None,
        timeout_s: float | None = None,
        fail_on_unhealthy: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(tenants, str) or isinstance(network_profiles, str):
            raise ValueError("HealthCheckOperator: tenants and network_profiles are lists of names, not one string")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"HealthCheckOperator: timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.tenants = tenants
        self.network_profiles = network_profiles
        self.timeout_s = timeout_s
        self.fail_on_unhealthy = fail_on_unhealthy
        self.barecount_health: list[dict[str, Any]] = []

    def _specs(self) -> list[runtime_health.DependencySpec]:
        tenants = list(self.tenants) if self.tenants is not None else [None]
        specs = [spec for tenant in tenants for spec in runtime_health.all_specs(tenant)]
        if self.network_profiles is not None:
            wanted = set(self.network_profiles)
            specs = [spec for spec in specs if spec.network_profile in wanted]
        return specs

    def execute(self, context: Mapping[str, Any]) -> dict[str, Any]:
        specs = self._specs()
        if not specs:
            log.info("No network profile of %s declares a dependency: nothing to check",
                     "the policy" if self.tenants is None else f"tenants {', '.join(self.tenants)}")
            summary = {"checked": 0, "passed": True, "profiles": []}
            context["ti"].xcom_push(key=HEALTH_XCOM_KEY, value=summary)
            return summary
        results = runtime_health.check(specs, timeout_s=self.timeout_s).results
        publish(results, source="dag")
        self.barecount_health = [result.as_dict() for result in results]

        profiles: list[dict[str, Any]] = []
        failing: list[Verdict] = []
        groups: dict[tuple[str | None, str | None], list[Any]] = {}
        for result in results:
            groups.setdefault((result.dependency.tenant, result.dependency.network_profile), []).append(result)
        for (tenant, profile), members in groups.items():
            degraded = runtime_health.degraded_policy(tenant, profile) if tenant and profile else "allow"
            verdict = Verdict(results=tuple(members), degraded=degraded)
            profiles.append({"tenant": tenant, "network_profile": profile, "passed": verdict.passed,
                             "statuses": sorted({r.status for r in members})})
            log.info("tenant %s, network profile %s: %s (%d dependencies)", tenant, profile,
                     "passed" if verdict.passed else "NOT passed", len(members))
            if not verdict.passed:
                failing.append(verdict)
        summary = {"checked": len(results), "passed": not failing, "profiles": profiles}
        context["ti"].xcom_push(key=HEALTH_XCOM_KEY, value=summary)
        if failing and self.fail_on_unhealthy:
            raise AirflowException("; ".join(verdict.message() for verdict in failing))
        return summary
