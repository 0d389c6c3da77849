"""What every runner operator adds to its upstream operator: size profile, governance, identity, runner_result.

A runner operator is ``class XRunnerOperator(BareCountRunnerMixin, UpstreamOperator)``. The mixin

* takes ``tenant``, ``pipeline``, ``size`` and ``network_profile`` (validated when the DAG is parsed);
* resolves the try's :class:`~barecount_provider.context.RunContext` (its own arguments win);
* checks the tenant's policy *before anything is launched* and raises :class:`PolicyViolation`;
* with ``require_healthy``, checks its network profile's dependencies and its runner target after the
  policy and before anything is launched (:meth:`BareCountRunnerMixin.check_health_before_launch`): refused
  with :class:`DependencyUnhealthy`, or deferred to :class:`~barecount_provider.triggers.health.HealthTrigger`
  until healthy with ``wait_for_healthy``;
* gives the identity variables that travel into the workload;
* pushes the :class:`RunnerResult` to XCom inside ``execute()`` and emits the runner metrics.

Airflow validates ``.partial()`` / ``.expand()`` arguments against the ``__init__`` signatures the operator
metaclass has seen, and a plain mixin is not one of them: each runner operator therefore repeats the mixin's
arguments (tenant, pipeline, size, network_profile, require_healthy, wait_for_healthy) in its own
``__init__`` signature and passes them on (see ``LambdaRunnerOperator``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException

from barecount_provider import config
from barecount_provider import context as bc_context
from barecount_provider.health.plan import Verdict
from barecount_provider.policy import (
    NETWORK_PROFILES,
    POLICY_INVALID_RULE,
    SIZES,
    configured_problems,
    get_policy,
    invalid_policy_exception,
    invalid_policy_message,
)
from barecount_provider.runtime import health as runtime_health
from barecount_provider.runtime import health_report
from barecount_provider.telemetry.metrics import COUNTER, EMIT_FAILURES, GAUGE, TIMER, get_emitter
from barecount_provider.triggers.health import HealthTrigger, verdict_of_event

log = logging.getLogger(__name__)

RUNNER_RESULT_XCOM_KEY = "runner_result"
RUNNER_RESULT_SCHEMA_VERSION = 1
BARECOUNT_TEMPLATE_FIELDS = ("pipeline", "size", "network_profile")
"""Templated on every runner operator. ``tenant`` is not: a run's conf must never choose the tenant."""

# Sections of RunnerResult that hold named values, each with a field_sources entry per key.
_SECTIONS = ("resources_requested", "resources_used", "timings", "digests", "billing_inputs", "details")
_SCALARS = ("external_run_id", "console_link", "driver_version")


def not_reported(service: str, why: str = "") -> str:
    """The field_sources text of a value the service (or its emulator) does not give."""
    return f"not reported by {service}" + (f": {why}" if why else "")


@dataclasses.dataclass
class RunnerResult:
    """What one runner invocation asked for, used, took and cost: the same schema for every runner class.

    ``field_sources`` maps each field (``timings.duration_s``, ``external_run_id``, ...) to where its value
    came from, or to ``not reported by <service>: why`` when it is absent: no field is silently empty.
    ``details`` holds the runner class's own response fields (status code, executed version, ...).
    """

    runner_class: str
    size: str
    tenant: str
    pipeline: str
    network_profile: str
    resources_requested: dict[str, Any] = dataclasses.field(default_factory=dict)
    resources_used: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    digests: dict[str, Any] = dataclasses.field(default_factory=dict)
    billing_inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    external_run_id: str | None = None
    console_link: str | None = None
    driver_version: str | None = None
    error: dict[str, str] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    field_sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def record(self, path: str, value: Any, source: str) -> None:
        """Set ``section.key`` (or a scalar field) to ``value`` and note where it came from."""
        section, _, key = path.partition(".")
        if key:
            if section not in _SECTIONS:
                raise ValueError(f"runner_result: {section!r} is not one of {', '.join(_SECTIONS)}")
            getattr(self, section)[key] = value
        elif section in _SCALARS:
            setattr(self, section, value)
        else:
            raise ValueError(f"runner_result: {path!r} is not a section.key path nor one of {', '.join(_SCALARS)}")
        self.field_sources[path] = source

    def absent(self, path: str, reason: str) -> None:
        """Record that ``path`` has no value, and why (``reason`` from :func:`not_reported`)."""
        self.record(path, None, reason)

    def fail(self, error_class: str, message: str) -> None:
        self.error = {"error_class": error_class, "message": message}

    def unexplained_fields(self) -> list[str]:
        """Fields that are empty without a field_sources entry saying why (should always be [])."""
        missing = [name for name in _SCALARS if getattr(self, name) in (None, "") and name not in self.field_sources]
        for section in _SECTIONS[:-1]:  # details is optional by nature
            values = getattr(self, section)
            if not values and not any(path.startswith(f"{section}.") or path == section for path in self.field_sources):
                missing.append(section)
            missing.extend(
                f"{section}.{key}"
                for key, value in values.items()
                if value in (None, "") and f"{section}.{key}" not in self.field_sources
            )
        return missing

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the XCom value and the evidence fragment)."""
        data = dataclasses.asdict(self)
        data["schema_version"] = RUNNER_RESULT_SCHEMA_VERSION
        return data


class RunnerConsoleLink(BaseOperatorLink):
    """The task's extra link to its run in the service's console (the ``console_link`` of its runner_result).

    Airflow 3 evaluates it in the task process when the try ends and keeps the URL in XCom for the UI and
    the REST API; a try that launched nothing has no runner_result and so no link.
    """

    name = "BareCount: runner console"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        try:
            from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend

            result = XCom.get_value(key=RUNNER_RESULT_XCOM_KEY, ti_key=ti_key)
        except Exception:  # never fail a try's finalisation for a link
            log.debug("BareCount: no runner_result for the console link", exc_info=True)
            return ""
        link = result.get("console_link") if isinstance(result, Mapping) else None
        return link if isinstance(link, str) else ""


class PolicyViolation(AirflowFailException):
    """A request beyond the tenant's policy, refused before anything is launched (never retried).

    ``policy_exception`` (rule, tenant, limit, requested) goes into the try's evidence entry (its policy
    exceptions) and the failed validation into its validations.
    """

    def __init__(self, *, rule: str, tenant: str, limit: Any, requested: Any, message: str) -> None:
        self.policy_exception = {"rule": rule, "tenant": tenant, "limit": limit, "requested": requested}
        super().__init__(message)


def check_policy(
    ctx: bc_context.RunContext,
    *,
    workers: int | None = None,
    hosts: int | None = None,
    validations: list[dict[str, Any]] | None = None,
) -> Mapping[str, Mapping[str, Any]]:
    """Raise :class:`PolicyViolation` for the first rule the request breaks; else the size's resources.

    ``validations`` (when given) receives ``{rule, outcome: "passed", limit, requested}`` for each rule
    checked before the first broken one: the evidence's record of what was checked.
    """
    tenant = ctx.tenant
    policy = get_policy().for_tenant(tenant)
    checked = validations if validations is not None else []

    def rule(name: str, ok: bool, limit: Any, requested: Any, message: str) -> None:
        if not ok:
            raise PolicyViolation(rule=name, tenant=tenant, limit=limit, requested=requested, message=message)
        checked.append({"rule": name, "outcome": "passed", "limit": limit, "requested": requested})

    rule(
        "allowed_runner_classes",
        policy.allows_runner_class(ctx.runner_class),
        list(policy.allowed_runner_classes),
        ctx.runner_class,
        f"tenant {tenant!r}: runner class {ctx.runner_class!r} is not allowed "
        f"(allowed_runner_classes: {', '.join(policy.allowed_runner_classes)})",
    )
    rule("size", ctx.size in SIZES, list(SIZES), ctx.size, f"tenant {tenant!r}: size {ctx.size!r} is not one of {', '.join(SIZES)}")
    rule(
        "max_size",
        policy.allows_size(ctx.size),
        policy.max_size,
        ctx.size,
        f"tenant {tenant!r}: size {ctx.size!r} exceeds max_size {policy.max_size!r}",
    )
    rule(
        "allowed_network_profiles",
        policy.allows_network_profile(ctx.network_profile),
        list(policy.allowed_network_profiles),
        ctx.network_profile,
        f"tenant {tenant!r}: network profile {ctx.network_profile!r} is not allowed "
        f"(allowed_network_profiles: {', '.join(policy.allowed_network_profiles)})",
    )
    for name, requested, limit in (
        ("max_workers", workers, policy.limits.max_workers),
        ("max_hosts", hosts, policy.limits.max_hosts),
    ):
        if requested is not None:
            rule(
                name,
                requested <= limit,
                limit,
                requested,
                f"tenant {tenant!r}: {name.removeprefix('max_')} {requested} exceeds {name} {limit}",
            )
    return policy.resources(ctx.runner_class, ctx.size)


class DependencyUnhealthy(AirflowFailException):
    """A dependency of the runner's network profile, or its runner target, is not healthy: refused before
    anything is launched (never retried). The message names each blocking dependency (kind, id, tenant,
    network profile, status, error code, detail); ``verdict`` is the check's."""

    def __init__(self, message: str, verdict: Verdict | None = None) -> None:
        self.verdict = verdict
        super().__init__(message)


def health_poke_interval(wait: timedelta) -> float:
    """Seconds between the checks of a runner waiting ``wait`` for health: a tenth of it, 5 s to 60 s."""
    return min(60.0, max(5.0, wait.total_seconds() / 10.0))


def require_synchronous(operator: str, *, wait_for_completion: Any, deferrable: Any) -> None:
    """Runner operators read their result inside execute(): refuse arguments that would return earlier."""
    if wait_for_completion is not True or deferrable is not False:
        raise ValueError(
            f"{operator}: wait_for_completion={wait_for_completion!r}, deferrable={deferrable!r}; expected True "
            "and False (the runner_result is read from the finished run inside execute())"
        )


class BareCountRunnerMixin:
    """Size profile, governance, identity and runner_result for a runner operator (see the module docstring).

    :param tenant: who runs and pays; None: the DAG's declaration (params, default_args, ``tenant:`` tag),
        then ``[barecount] default_tenant``. Never templated.
    :param pipeline: pipeline id; None: the DAG's declaration, then the DAG id.
    :param size: size profile, one of xs, s, m, l, xl, resolved by the policy's size table.
    :param network_profile: one of public, vpn, privatelink, private_vpc, on_prem; refused before launch
        when the tenant's policy does not allow it.
    :param require_healthy: check the network profile's dependencies and the runner target before
        launching, and refuse (or wait, below) when one is not healthy; None: the tenant's policy
        (``network_profiles.<profile>.dependencies.require_healthy``).
    :param wait_for_healthy: when a dependency is not healthy, defer (in the triggerer) up to this long for
        it to become healthy, then launch, or fail when it does not; None: fail at once.
    """

    runner_class: ClassVar[str] = "local"

    def __init__(
        self,
        *,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if require_healthy is not None and not isinstance(require_healthy, bool):
            raise ValueError(f"require_healthy: {require_healthy!r} is not True, False or None (the tenant's policy)")
        if wait_for_healthy is not None and (
            not isinstance(wait_for_healthy, timedelta) or wait_for_healthy <= timedelta(0)
        ):
            raise ValueError(f"wait_for_healthy: {wait_for_healthy!r} is not a positive timedelta")
        if not bc_context.is_template(size) and size not in SIZES:
            raise ValueError(f"size: {size!r} is not one of {', '.join(SIZES)}")
        if not bc_context.is_template(network_profile) and network_profile not in NETWORK_PROFILES:
            raise ValueError(f"network_profile: {network_profile!r} is not one of {', '.join(NETWORK_PROFILES)}")
        self.tenant = bc_context.tenant_argument(tenant)
        self.pipeline = pipeline
        self.size = size
        self.network_profile = network_profile
        self.require_healthy = require_healthy
        self.wait_for_healthy = wait_for_healthy

    def barecount_context(self, context: Mapping[str, Any]) -> bc_context.RunContext:
        """The try's RunContext; this operator's own tenant/pipeline/size/network_profile win."""
        return bc_context.resolve_for_ti(context["ti"])

    def governed_resources(
        self, ctx: bc_context.RunContext, *, workers: int | None = None, hosts: int | None = None
    ) -> dict[str, Any]:
        """Check the tenant's policy (raises :class:`PolicyViolation`); the size's resources for this class."""
        self.refuse_if_policy_invalid(ctx)
        checked: list[dict[str, Any]] = []
        try:
            resources = check_policy(ctx, workers=workers, hosts=hosts, validations=checked)
        except PolicyViolation as violation:
            self._record_policy_violation(violation, checked)
            raise
        self._merge_validations(checked)
        return {backend: dict(settings) for backend, settings in resources.items()}

    def refuse_if_policy_invalid(self, ctx: bc_context.RunContext) -> None:
        """While the configured policy is invalid: record the ``policy_invalid`` exception for the evidence
        and, with ``[barecount] policy_invalid = fail``, refuse before anything is launched (not retried:
        AirflowFailException) with the policy's errors. With ``warn`` the policy check that follows fails as
        it always did: a runner cannot be sized without a policy."""
        problems = configured_problems()
        if not problems:
            return
        exceptions = getattr(self, "barecount_policy_exceptions", None)
        if exceptions is None:
            exceptions = self.barecount_policy_exceptions = []
        if not any(e.get("rule") == POLICY_INVALID_RULE for e in exceptions):
            exceptions.append(invalid_policy_exception(ctx.tenant, problems))
        if config.policy_invalid() == "fail":
            raise AirflowFailException(invalid_policy_message(problems))

    # What the evidence entry of this try reads back from the task (the listener runs in the same process).
    barecount_policy_validations: list[dict[str, Any]]
    barecount_policy_exceptions: list[dict[str, Any]]
    barecount_runner_result: dict[str, Any] | None = None
    barecount_health: list[dict[str, Any]] | None = None
    _barecount_healthy: bool = False  # set when a deferral for health resumed healthy: launch without re-checking

    # ------------------------------------------------------------------------- health before launch

    def runner_health_target(self, ctx: bc_context.RunContext) -> runtime_health.DependencySpec | None:
        """The runner target checked before launch (a function, cluster, job, application, nodes); None:
        nothing to check before launch. Each runner operator names its own."""
        return None

    def health_specs(
        self, ctx: bc_context.RunContext, target: runtime_health.DependencySpec | None
    ) -> list[runtime_health.DependencySpec]:
        """The network profile's dependencies (from the tenant's policy), then ``target``."""
        specs = list(runtime_health.specs_for_profile(ctx.tenant, ctx.network_profile))
        return [*specs, target] if target is not None else specs

    def health_required(self, ctx: bc_context.RunContext) -> bool:
        """``require_healthy``, else the tenant's policy for the network profile (a tenant the policy does not
        declare: the defaults')."""
        if self.require_healthy is not None:
            return self.require_healthy
        try:
            return runtime_health.require_healthy_default(ctx.tenant, ctx.network_profile)
        except ValueError as err:
            log.debug("BareCount: no health check before launch: %s", err)
            return False

    def check_health_before_launch(self, ctx: bc_context.RunContext) -> None:
        """With ``require_healthy`` (or the tenant's policy's), check the network profile's dependencies and
        the runner target (:meth:`runner_health_target`). Call after the policy check, before anything is
        launched. Healthy (or degraded where allowed): return. Otherwise, with ``wait_for_healthy``, defer
        to :class:`HealthTrigger` (resumed in :meth:`resume_when_healthy`); without, raise
        :class:`DependencyUnhealthy`. The results are left on the task (``barecount_health``, the evidence)
        and published (metrics, the last results) in every case."""
        if self._barecount_healthy or not self.health_required(ctx):
            return
        try:
            specs = self.health_specs(ctx, self.runner_health_target(ctx))
            degraded = runtime_health.degraded_policy(ctx.tenant, ctx.network_profile)
        except ValueError as err:  # a bad target or profile: nothing to check with
            raise AirflowFailException(f"{self._operator_name()}: not launched: cannot check health: {err}") from None
        verdict = runtime_health.check(specs, degraded=degraded)
        self._record_health(verdict)
        if verdict.passed:
            log.info("BareCount: %s", verdict.message())
            return
        wait = self.wait_for_healthy
        if wait is None:
            raise self._unhealthy(verdict)
        log.warning("BareCount: %s; waiting up to %s for it before launching", verdict.message(), wait)
        trigger = HealthTrigger(
            specs=[spec.as_dict() for spec in specs],
            degraded=degraded,
            poke_interval=health_poke_interval(wait),
            end_at=(datetime.now(UTC) + wait).isoformat(),
        )
        self.defer(  # type: ignore[attr-defined]  # BaseOperator's, on every runner operator
            trigger=trigger,
            method_name="resume_when_healthy",
            timeout=wait + timedelta(minutes=5),  # the trigger ends the wait at end_at itself
        )

    def resume_when_healthy(self, context: Any, event: Mapping[str, Any] | None = None) -> Any:
        """Resume after waiting for health (``wait_for_healthy``): launch when the trigger found every
        dependency healthy, else fail with :class:`DependencyUnhealthy` (nothing launched)."""
        event = event or {}
        if "verdict" not in event:
            raise DependencyUnhealthy(
                f"{self._operator_name()}: not launched: health could not be checked: {event.get('message') or repr(dict(event))}"
            )
        verdict = verdict_of_event(event)
        self._record_health(verdict)
        if event.get("status") != "healthy" or not verdict.passed:
            raise self._unhealthy(verdict, waited=self.wait_for_healthy)
        log.info("BareCount: %s; launching", verdict.message())
        self._barecount_healthy = True
        return self.execute(context)  # type: ignore[attr-defined]  # the runner operator's

    def _record_health(self, verdict: Verdict) -> None:
        self.barecount_health = [result.as_dict() for result in verdict.results]
        health_report.publish(verdict.results, source=f"operator:{getattr(self, 'task_id', '?')}")

    def _operator_name(self) -> str:
        return f"{type(self).__name__} {getattr(self, 'task_id', '')}".strip()

    def _unhealthy(self, verdict: Verdict, waited: timedelta | None = None) -> DependencyUnhealthy:
        after = f" after waiting {waited}" if waited is not None else ""
        return DependencyUnhealthy(f"{self._operator_name()}: not launched{after}: {verdict.message()}", verdict)

    def _violation(self, violation: PolicyViolation) -> PolicyViolation:
        """Record ``violation`` for the evidence, and return it to be raised."""
        self._record_policy_violation(violation, [])
        return violation

    def _merge_validations(self, checked: list[dict[str, Any]]) -> None:
        known = getattr(self, "barecount_policy_validations", None)
        if known is None:
            known = self.barecount_policy_validations = []
        for validation in checked:
            if validation not in known:
                known.append(validation)

    def _record_policy_violation(self, violation: PolicyViolation, checked: list[dict[str, Any]]) -> None:
        failed = violation.policy_exception
        self._merge_validations(
            [v for v in checked if v["rule"] != failed["rule"]]
            + [{"rule": failed["rule"], "outcome": "failed", "limit": failed["limit"], "requested": failed["requested"]}]
        )
        exceptions = getattr(self, "barecount_policy_exceptions", None)
        if exceptions is None:
            exceptions = self.barecount_policy_exceptions = []
        exceptions.append(dict(failed))

    def policy_target(
        self, ctx: bc_context.RunContext, backend: str, name: str, given: str | None = None
    ) -> tuple[str | None, str]:
        """What implements ``name`` at this try's network profile and size: (target, where it came from).

        ``runner_targets.<backend>.<name>`` of the tenant's policy selects it (backend: lambda, glue, emr);
        when the policy does not map ``name``, ``given`` (the DAG author's argument) is used as it is. A name
        the policy maps but not for this profile and size, or a ``given`` value that differs from the
        policy's, is a :class:`PolicyViolation`: shared configuration is chosen by the policy, never by a run.
        """
        tenant = ctx.tenant
        path = f"runner_targets.{backend}.{name}"
        try:
            found = get_policy().for_tenant(tenant).target(backend, name, ctx.network_profile, ctx.size)
        except LookupError as err:
            raise self._violation(PolicyViolation(
                rule="runner_targets",
                tenant=tenant,
                limit=path,
                requested=f"{ctx.network_profile}/{ctx.size}",
                message=f"tenant {tenant!r}: {err}",
            )) from None
        if found is None:
            return given, "operator argument (the policy maps no target for it)"
        target, selector = found
        if given not in (None, "", target):
            raise self._violation(PolicyViolation(
                rule="runner_targets",
                tenant=tenant,
                limit=target,
                requested=given,
                message=f"tenant {tenant!r}: {given!r} was given but the policy's {path}.{selector} selects "
                f"{target!r} for network profile {ctx.network_profile!r} and size {ctx.size!r}",
            ))
        return target, f"policy {path}.{selector}"

    def select_target(
        self, ctx: bc_context.RunContext, result: RunnerResult, backend: str, name: str
    ) -> str:
        """:meth:`policy_target` for ``name`` (the DAG's job or application), recorded in ``details``."""
        target, source = self.policy_target(ctx, backend, name)
        selected = target or name
        result.record("details.target_name", name, "operator argument (the name the DAG uses)")
        result.record("details.target", selected, source)
        return selected

    def network_placement(self, ctx: bc_context.RunContext, backend: str) -> tuple[dict[str, Any], str]:
        """Where this try's network profile runs on ``backend`` (ecs, ec2, pod): (settings, source).

        Empty when the tenant's policy names no placement for the profile: the operator's own arguments
        apply. ``network_profiles.<profile>.<backend>`` of the policy otherwise.
        """
        settings = get_policy().for_tenant(ctx.tenant).placement(ctx.network_profile, backend)
        return dict(settings), f"policy network_profiles.{ctx.network_profile}.{backend}"

    def refuse_conflict(self, ctx: bc_context.RunContext, what: str, given: Any, selected: Any, source: str) -> None:
        """Raise :class:`PolicyViolation` when the DAG author's ``given`` differs from what the policy selects."""
        if given in (None, "", [], {}) or given == selected:
            return
        raise self._violation(PolicyViolation(
            rule="network_profiles",
            tenant=ctx.tenant,
            limit=selected,
            requested=given,
            message=f"tenant {ctx.tenant!r}: {what} {given!r} was given but {source} selects {selected!r} for "
            f"network profile {ctx.network_profile!r}",
        ))

    def identity_env(self, ctx: bc_context.RunContext) -> dict[str, str]:
        """BARECOUNT_CORRELATION_ID, BARECOUNT_RUN_TOKEN and (when there is a span) TRACEPARENT."""
        env = ctx.environment()
        traceparent = ctx.traceparent or os.environ.get(bc_context.ENV_TRACEPARENT)
        if traceparent:
            env[bc_context.ENV_TRACEPARENT] = traceparent
        return env

    def new_runner_result(self, ctx: bc_context.RunContext) -> RunnerResult:
        return RunnerResult(
            runner_class=self.runner_class,
            size=ctx.size,
            tenant=ctx.tenant,
            pipeline=ctx.pipeline,
            network_profile=ctx.network_profile,
        )

    def publish_runner_result(self, context: Mapping[str, Any], result: RunnerResult) -> None:
        """Push ``runner_result`` to XCom (inside execute(), before any failure is raised), then emit the
        runner metrics. A metric sink's failure is counted, never raised into the task."""
        self.barecount_runner_result = result.as_dict()
        context["ti"].xcom_push(key=RUNNER_RESULT_XCOM_KEY, value=self.barecount_runner_result)
        try:
            ctx = self.barecount_context(context)
            get_emitter().emit(runner_metric_points(result, ctx.metric_tags()))
        except Exception:
            EMIT_FAILURES.record("runner", "emit")
            log.warning("BareCount could not emit the runner metrics", exc_info=True)

    def on_runner_failed(self, context: Mapping[str, Any], result: RunnerResult, failed_event: Any) -> None:
        """Called after a failed invocation's result is published and before the task fails: the failed event
        goes to the dead-letter queue (``[barecount] dlq_location``; empty: the embedded local queue), keyed
        so that the same event failing on every retry is replayed once. Never raises."""
        try:
            from barecount_provider.hooks.dlq import DeadLetterQueueHook

            location = config.dlq_location() or None
            hook = DeadLetterQueueHook(location=location, aws_conn_id=config.dlq_aws_conn_id())
            key = hook.send_runner_failure(context, result, failed_event)
            if key:
                self.barecount_dead_letters = [*(getattr(self, "barecount_dead_letters", None) or []), key]
                log.info("BareCount sent the failed event to the dead-letter queue (%s), key %s", hook.describe(), key)
        except Exception:
            EMIT_FAILURES.record("dlq", "runner")
            log.warning("BareCount could not send the failed event to the dead-letter queue", exc_info=True)


def runner_metric_points(result: RunnerResult, tags: Mapping[str, str]) -> list[tuple[str, str, float, Any]]:
    """The runner metrics of one result: only what the service reported becomes a point."""
    tags = {**tags, "runner_class": result.runner_class, "size": result.size}
    points: list[tuple[str, str, float, Any]] = [("barecount.runner.invocations", COUNTER, 1, tags)]
    for name, key in (
        ("barecount.runner.duration", "duration_s"),
        ("barecount.runner.billed_duration", "billed_duration_s"),
        ("barecount.runner.init_duration", "init_duration_s"),
    ):
        value = result.timings.get(key)
        if isinstance(value, int | float):
            points.append((name, TIMER, float(value) * 1000.0, tags))
    memory_mb = result.resources_used.get("max_memory_used_mb")
    if isinstance(memory_mb, int | float):
        points.append(("barecount.runner.memory_used", GAUGE, float(memory_mb) * 1024 * 1024, tags))
    if result.error is not None:
        points.append(("barecount.runner.errors", COUNTER, 1, {**tags, "error_class": result.error["error_class"]}))
    return points


# ---------------------------------------------------------------------- shared by the runner modules

LABEL_PREFIX = "barecount.io/"  # labels and tags of Kubernetes pods and ECS tasks


def identity_labels(ctx: bc_context.RunContext) -> dict[str, str]:
    """The run's identity as the labels of a Kubernetes pod or the tags of an ECS task."""
    return {
        f"{LABEL_PREFIX}tenant": ctx.tenant,
        f"{LABEL_PREFIX}pipeline": ctx.pipeline,
        f"{LABEL_PREFIX}run": ctx.correlation_id,
        f"{LABEL_PREFIX}size": ctx.size,
        f"{LABEL_PREFIX}network-profile": ctx.network_profile,
    }


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one ISO 8601 timestamp to another, to the millisecond; None when either is missing or bad."""
    if not start or not end:
        return None
    try:
        started = datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((ended - started).total_seconds(), 3)


def iso_or_none(value: Any) -> str | None:
    """An AWS timestamp (a datetime, naive taken as UTC, or a string) as ISO 8601; None when empty."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value) if value else None


def record_or_absent(result: RunnerResult, path: str, value: Any, source: str, gap: str) -> None:
    """Record ``value`` at ``path`` from ``source``, or mark it absent with ``gap`` when empty."""
    if value is None or value == "":
        result.absent(path, gap)
    else:
        result.record(path, value, source)


def record_requested_from_size_table(result: RunnerResult, settings: Mapping[str, Any], table_path: str) -> None:
    """Record a size-table entry as ``resources_requested`` (it selects the application; never applied)."""
    source = f"policy size_tables.{table_path} (selects the application; never applied at run time)"
    if not settings:
        result.absent("resources_requested", f"no entry in the policy's size table ({table_path})")
    for key, value in settings.items():
        result.record(f"resources_requested.{key}", value, source)


def record_wall_clock(result: RunnerResult, started_at: datetime, started: float, what: str) -> None:
    """Record when the service call started and how long it took, by the Airflow worker's clock."""
    result.record(
        "timings.submitted_at", started_at.isoformat(), f"clock of the Airflow worker, before {what}"
    )
    result.record(
        "timings.wall_duration_s",
        round(time.monotonic() - started, 3),
        f"clock of the Airflow worker around {what}",
    )
