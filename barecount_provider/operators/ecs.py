"""The ECS runner: ``EcsRunnerOperator`` (Fargate and EC2 launch types) runs a workload as an ECS task.

The size becomes the task-level cpu and memory of this run's ``overrides`` (the task definition is never
re-registered), the identity goes into every container's environment override and the tags, the upstream
``EcsRunTaskOperator`` starts the task and waits with boto3's ``tasks_stopped`` waiter, and
:func:`parse_ecs_task` turns one DescribeTasks of the stopped task into the runner_result.

What is recorded, and from which task field, is documented in docs/runners/container.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.operators.ecs import EcsRunTaskOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from barecount_provider import context as bc_context
from barecount_provider.hooks.ecs import BareCountEcsHook
from barecount_provider.operators import cloudwatch
from barecount_provider.operators.base import (
    BARECOUNT_TEMPLATE_FIELDS,
    BareCountRunnerMixin,
    RunnerConsoleLink,
    RunnerResult,
    identity_labels,
    not_reported,
    require_synchronous,
    seconds_between,
)
from barecount_provider.runtime import health as runtime_health

# ------------------------------------------------------------------------------------------- ECS task parser

ECS_SERVICE = "ECS DescribeTasks"
ECS_SUCCESS_STOP_CODE = "EssentialContainerExited"
FARGATE_SIZE_KEYS = ("cpu", "memory_mb")


class EcsTaskFailed(AirflowException):
    """The ECS task stopped with a non-zero container exit code or a stop code other than a clean exit."""


@dataclasses.dataclass(frozen=True)
class EcsContainerRun:
    """One container of a stopped task, from DescribeTasks ``tasks[].containers[]``."""

    name: str
    image: str | None
    image_digest: str | None
    last_status: str | None
    exit_code: int | None
    reason: str | None


@dataclasses.dataclass(frozen=True)
class EcsTaskRun:
    """What DescribeTasks says about one task run: the fields BareCount records."""

    task_arn: str | None
    cluster_arn: str | None
    task_definition_arn: str | None
    launch_type: str | None
    platform_version: str | None
    last_status: str | None
    cpu: str | None  # task-level CPU units, as ECS applied them (override or task definition)
    memory: str | None  # task-level MiB
    created_at: str | None
    pull_started_at: str | None
    pull_stopped_at: str | None
    started_at: str | None
    stopped_at: str | None
    stop_code: str | None
    stopped_reason: str | None
    containers: tuple[EcsContainerRun, ...]

    @property
    def region(self) -> str | None:
        parts = (self.task_arn or "").split(":")
        return parts[3] if len(parts) >= 6 and parts[3] else None

    @property
    def cluster_name(self) -> str | None:
        return self.cluster_arn.rsplit("/", 1)[-1] if self.cluster_arn else None

    def console_link(self) -> str | None:
        if not (self.region and self.cluster_name and self.task_arn):
            return None
        task_id = self.task_arn.rsplit("/", 1)[-1]
        return (
            f"https://{self.region}.console.aws.amazon.com/ecs/v2/clusters/{self.cluster_name}"
            f"/tasks/{task_id}/configuration?region={self.region}"
        )

    def error(self) -> tuple[str, str] | None:
        """(error class, message) when the task did not end with every container exiting 0; else None."""
        stop = f"stopCode {self.stop_code}" + (f": {self.stopped_reason}" if self.stopped_reason else "")
        for container in self.containers:
            if container.exit_code not in (None, 0):
                return (
                    "EcsTaskFailed.NonZeroExitCode",
                    f"container {container.name!r} exited with code {container.exit_code} ({stop})",
                )
        if self.stop_code != ECS_SUCCESS_STOP_CODE:
            return f"EcsTaskFailed.{self.stop_code or 'NoStopCode'}", f"the task stopped with {stop}"
        if not any(container.exit_code == 0 for container in self.containers):
            return "EcsTaskFailed.NoExitCode", f"no container reported an exit code ({stop})"
        return None


def _ecs_timestamp(value: Any) -> str | None:
    """A DescribeTasks timestamp as ISO 8601: boto3 gives datetimes, the wire JSON epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).isoformat()
    except ValueError:
        return None


def parse_ecs_task(task: Mapping[str, Any]) -> EcsTaskRun:
    """One ``tasks[]`` entry of a DescribeTasks response (boto3's parsed form or the wire JSON)."""
    containers = tuple(
        EcsContainerRun(
            name=str(container.get("name") or ""),
            image=container.get("image"),
            image_digest=container.get("imageDigest") or None,
            last_status=container.get("lastStatus"),
            exit_code=container.get("exitCode"),
            reason=container.get("reason") or None,
        )
        for container in task.get("containers") or ()
    )
    return EcsTaskRun(
        task_arn=task.get("taskArn"),
        cluster_arn=task.get("clusterArn"),
        task_definition_arn=task.get("taskDefinitionArn"),
        launch_type=task.get("launchType") or None,
        platform_version=task.get("platformVersion") or None,
        last_status=task.get("lastStatus"),
        cpu=task.get("cpu") or None,
        memory=task.get("memory") or None,
        created_at=_ecs_timestamp(task.get("createdAt")),
        pull_started_at=_ecs_timestamp(task.get("pullStartedAt")),
        pull_stopped_at=_ecs_timestamp(task.get("pullStoppedAt")),
        started_at=_ecs_timestamp(task.get("startedAt")),
        stopped_at=_ecs_timestamp(task.get("stoppedAt")),
        stop_code=task.get("stopCode") or None,
        stopped_reason=task.get("stoppedReason") or None,
        containers=containers,
    )


def parse_describe_tasks(response: Mapping[str, Any], task_arn: str | None = None) -> EcsTaskRun | None:
    """The task ``task_arn`` (else the first) of a DescribeTasks response; None when it lists no task."""
    tasks = list(response.get("tasks") or ())
    chosen = next((task for task in tasks if task_arn and task.get("taskArn") == task_arn), None)
    if chosen is None and tasks:
        chosen = tasks[0]
    return parse_ecs_task(chosen) if chosen is not None else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def record_ecs_requested(result: RunnerResult, fargate_size: Mapping[str, Any], size: str) -> None:
    missing = [key for key in FARGATE_SIZE_KEYS if key not in fargate_size]
    if missing:
        raise ValueError(f"policy size table: the container size's fargate entry lacks {', '.join(missing)}")
    source = f"policy size_tables.container.{size}.fargate (set as this run's task-level overrides)"
    result.record("resources_requested.cpu_units", int(fargate_size["cpu"]), source)
    result.record("resources_requested.memory_mb", int(fargate_size["memory_mb"]), source)


def record_ecs_run(result: RunnerResult, run: EcsTaskRun | None, why_absent: str = "") -> None:
    """Record what DescribeTasks reported; every field it does not report is recorded as absent, with why."""
    task = f"{ECS_SERVICE} tasks[]"
    if run is None:
        gap = not_reported(ECS_SERVICE, why_absent or "the task was never described")
        for path in (
            "external_run_id",
            "console_link",
            "digests.image_digest",
            "resources_used.cpu_units",
            "resources_used.memory_mb",
            "timings.pull_started_at",
            "timings.started_at",
            "timings.stopped_at",
            "timings.duration_s",
            "billing_inputs.cpu_units",
            "billing_inputs.memory_mb",
            "billing_inputs.runtime_s",
            "details.launch_type",
            "details.stop_code",
            "details.stopped_reason",
        ):
            result.absent(path, gap)
    else:
        cpu, memory = _int_or_none(run.cpu), _int_or_none(run.memory)
        billed_from = run.pull_started_at or run.started_at
        values: list[tuple[str, Any, str]] = [
            ("external_run_id", run.task_arn, f"{task}.taskArn"),
            ("console_link", run.console_link(), f"built from {task}.taskArn and .clusterArn"),
            ("resources_used.cpu_units", cpu, f"{task}.cpu (task level, as ECS applied it)"),
            ("resources_used.memory_mb", memory, f"{task}.memory (task level, as ECS applied it)"),
            ("timings.created_at", run.created_at, f"{task}.createdAt"),
            ("timings.pull_started_at", run.pull_started_at, f"{task}.pullStartedAt"),
            ("timings.pull_stopped_at", run.pull_stopped_at, f"{task}.pullStoppedAt"),
            ("timings.started_at", run.started_at, f"{task}.startedAt"),
            ("timings.stopped_at", run.stopped_at, f"{task}.stoppedAt"),
            ("timings.duration_s", seconds_between(run.started_at, run.stopped_at), f"{task}: stoppedAt - startedAt"),
            ("timings.queued_s", seconds_between(run.created_at, run.started_at), f"{task}: startedAt - createdAt"),
            ("billing_inputs.cpu_units", cpu, f"{task}.cpu"),
            ("billing_inputs.memory_mb", memory, f"{task}.memory"),
            (
                "billing_inputs.runtime_s",
                seconds_between(billed_from, run.stopped_at),
                f"{task}: stoppedAt - pullStartedAt (Fargate bills from the image pull; on EC2 the instance is billed)",
            ),
            ("billing_inputs.launch_type", run.launch_type, f"{task}.launchType"),
            ("details.launch_type", run.launch_type, f"{task}.launchType"),
            ("details.platform_version", run.platform_version, f"{task}.platformVersion (Fargate only)"),
            ("details.last_status", run.last_status, f"{task}.lastStatus"),
            ("details.stop_code", run.stop_code, f"{task}.stopCode"),
            ("details.stopped_reason", run.stopped_reason, f"{task}.stoppedReason"),
            ("details.task_definition_arn", run.task_definition_arn, f"{task}.taskDefinitionArn"),
        ]
        for container in run.containers:
            where = f"{task}.containers[{container.name}]"
            values += [
                (f"digests.image.{container.name}", container.image, f"{where}.image"),
                (f"digests.image_digest.{container.name}", container.image_digest, f"{where}.imageDigest"),
                (f"details.exit_code.{container.name}", container.exit_code, f"{where}.exitCode"),
            ]
            if container.reason:
                values.append((f"details.container_reason.{container.name}", container.reason, f"{where}.reason"))
        first = run.containers[0] if run.containers else None
        values.append(
            (
                "digests.image_digest",
                first.image_digest if first else None,
                f"{task}.containers[0].imageDigest (the first container; each one under image_digest.<name>)",
            )
        )
        for path, value, source in values:
            if value is None or value == "":
                result.absent(path, not_reported(ECS_SERVICE, f"no {source}"))
            else:
                result.record(path, value, source)
    # CPU, memory, network and storage usage: Container Insights, read by EcsRunnerOperator (cloudwatch.py)
    result.absent("driver_version", "a container runs an image, recorded in digests (no separate driver)")


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def overrides_with_size_and_identity(
    overrides: Mapping[str, Any] | None,
    fargate_size: Mapping[str, Any],
    identity: Mapping[str, str],
    container_names: Sequence[str],
) -> dict[str, Any]:
    """This run's RunTask ``overrides``: the size as task-level cpu and memory, and the identity in the
    environment of every container (the author's overrides kept, an identity variable of theirs replaced)."""
    result = copy.deepcopy(dict(overrides or {}))
    result["cpu"] = str(fargate_size["cpu"])
    result["memory"] = str(fargate_size["memory_mb"])
    identity_env = [{"name": name, "value": value} for name, value in identity.items()]
    container_overrides = [dict(entry) for entry in result.get("containerOverrides") or ()]
    named = {entry.get("name") for entry in container_overrides}
    container_overrides += [{"name": name} for name in container_names if name not in named]
    for entry in container_overrides:
        kept = [var for var in entry.get("environment") or () if var.get("name") not in identity]
        entry["environment"] = [*kept, *identity_env]
    result["containerOverrides"] = container_overrides
    return result


# ------------------------------------------------------------------------------------------- ECS operator


class EcsRunnerOperator(BareCountRunnerMixin, EcsRunTaskOperator):
    """Run a workload as an ECS task (Fargate or EC2 launch type) as a BareCount container runner.

    Adds to :class:`EcsRunTaskOperator`: the tenant's policy checked before RunTask, the size's task-level
    cpu and memory in this run's ``overrides`` (the task definition is never re-registered), the run's
    identity (BARECOUNT_CORRELATION_ID, BARECOUNT_RUN_TOKEN, TRACEPARENT) in every container's environment
    override, tags tenant/pipeline/run/size/network-profile on the task, the ``runner_result`` XCom and the
    runner metrics. The upstream operator starts the task and waits with boto3's ``tasks_stopped`` waiter;
    one DescribeTasks of the stopped task gives the result. A non-zero container exit code, or a stop code
    other than EssentialContainerExited, fails the task after the runner_result is published.

    :param task_definition: the task definition (family, family:revision or ARN), never modified.
    :param cluster: the cluster name or ARN.
    :param overrides: RunTask overrides; BareCount sets the task-level ``cpu`` and ``memory`` and adds the
        identity to every container's ``environment``; the rest is the author's.
    :param launch_type: ``FARGATE`` or ``EC2`` (or use ``capacity_provider_strategy``).
    :param network_configuration: awsvpcConfiguration. When the tenant's policy places the network profile
        (``network_profiles.<profile>.ecs``), its subnets, security groups and public IP setting are this
        run's, and an author's value that differs is refused; otherwise the author's is used unchanged.
    :param tenant: see :class:`~barecount_provider.operators.base.BareCountRunnerMixin`.
    :param pipeline: see the mixin.
    :param size: size profile; ``container.<size>.fargate`` (cpu units, memory MiB) of the size table.
    :param network_profile: see the mixin; recorded and put on the task as the tag
        ``barecount.io/network-profile``.
    :param require_healthy: check its network profile's dependencies and the cluster (``ecs_cluster``) before
        launching; None: the tenant's policy. See docs/health.md.
    :param wait_for_healthy: a timedelta: wait (deferred) up to this long for them to be healthy; None: fail at
        once when one is not.
    :param tags: task tags; BareCount adds its own. ``propagate_tags`` defaults to ``TASK_DEFINITION``.
    :param kwargs: every other EcsRunTaskOperator argument (aws_conn_id, region_name, platform_version,
        awslogs_group, skip_on_exit_code, waiter_delay, waiter_max_attempts, ...). ``wait_for_completion``
        must stay True and ``deferrable`` False: the result is read from the stopped task inside execute().
    """

    runner_class = "container"
    aws_hook_class = BareCountEcsHook
    operator_extra_links = (*EcsRunTaskOperator.operator_extra_links, RunnerConsoleLink())
    template_fields: Sequence[str] = (*EcsRunTaskOperator.template_fields, *BARECOUNT_TEMPLATE_FIELDS)

    def __init__(
        self,
        *,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        overrides: dict | None = None,
        propagate_tags: str | None = "TASK_DEFINITION",
        wait_for_completion: bool = True,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        require_synchronous("EcsRunnerOperator", wait_for_completion=wait_for_completion, deferrable=deferrable)
        super().__init__(
            tenant=tenant,
            pipeline=pipeline,
            size=size,
            network_profile=network_profile,
            require_healthy=require_healthy,
            wait_for_healthy=wait_for_healthy,
            overrides=overrides or {},
            propagate_tags=propagate_tags,
            wait_for_completion=True,
            deferrable=False,
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        ctx = self.barecount_context(context)
        fargate_size = self.governed_resources(ctx).get("fargate", {})  # PolicyViolation before RunTask
        self.check_health_before_launch(ctx)  # DependencyUnhealthy, or a deferral, before RunTask
        result = self.new_runner_result(ctx)
        record_ecs_requested(result, fargate_size, ctx.size)
        self._place(ctx, result)
        self._prepare_run(ctx, fargate_size)

        started_at = datetime.now(UTC)
        failure: BaseException | None = None
        skipped: AirflowSkipException | None = None
        try:
            value = super().execute(context)
        except AirflowSkipException as skip:  # skip_on_exit_code: recorded, then the skip goes through
            skipped, value = skip, None
        except Exception as err:
            failure, value = err, None
        task = self._describe_stopped_task(result)
        run = parse_ecs_task(task) if task is not None else None
        why = "" if self.arn else f"RunTask started no task ({type(failure).__name__ if failure else 'no ARN'})"
        record_ecs_run(result, run, why)
        if run is not None and self.arn:  # CPU, memory, network, storage: Container Insights only
            cluster = run.cluster_name or str(self.cluster).rsplit("/", 1)[-1]
            queries = cloudwatch.ecs_task_metric_queries(cluster, self.arn)
            cloudwatch.read_into(result, self, queries, started_at, datetime.now(UTC))
        result.record("details.wall_started_at", started_at.isoformat(), "clock of the Airflow worker")
        result.record("details.cluster", self.cluster, "operator argument cluster")
        error = run.error() if run is not None and skipped is None else None
        if error is not None:
            result.fail(*error)
        elif failure is not None:
            first_line = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
            result.fail(type(failure).__name__, first_line[:500])
        self.publish_runner_result(context, result)
        if skipped is not None:
            raise skipped
        if result.error is not None:
            task_id = (self.arn or "").rsplit("/", 1)[-1] or "(not started)"
            message = f"ECS task {task_id} on cluster {self.cluster!r}: {result.error['message']}"
            self.log.error("%s", message)
            self.on_runner_failed(context, result, {"task": _json_safe(task), "error": result.error})
            raise EcsTaskFailed(message) from failure
        return value

    def runner_health_target(self, ctx: bc_context.RunContext) -> runtime_health.DependencySpec:
        """The cluster the task runs on: ``ACTIVE`` with registered capacity."""
        return runtime_health.runner_spec(
            "ecs_cluster",
            str(self.cluster),
            tenant=ctx.tenant,
            network_profile=ctx.network_profile,
            conn_id=self.aws_conn_id,
            region_name=self.region_name,
        )

    def _place(self, ctx: bc_context.RunContext, result: RunnerResult) -> None:
        """The network profile's subnets and security groups as this run's awsvpcConfiguration."""
        placement, source = self.network_placement(ctx, "ecs")
        network = dict(self.network_configuration or {})
        awsvpc = dict(network.get("awsvpcConfiguration") or {})
        for key, api_key in (
            ("subnets", "subnets"),
            ("security_groups", "securityGroups"),
            ("assign_public_ip", "assignPublicIp"),
        ):
            if key in placement:
                self.refuse_conflict(ctx, f"awsvpcConfiguration.{api_key}", awsvpc.get(api_key), placement[key], source)
                awsvpc[api_key] = placement[key]
        if placement:
            network["awsvpcConfiguration"] = awsvpc
            self.network_configuration = network
        where = source if placement else "operator argument network_configuration (the policy places no such profile)"
        if awsvpc:
            result.record("details.awsvpc_configuration", awsvpc, where)
        else:
            result.record("details.awsvpc_configuration", None, "none: not an awsvpc task (bridge or host network)")

    @property
    def ecs_hook(self) -> BareCountEcsHook:
        """``self.hook``, typed: the upstream operator builds it from ``aws_hook_class``."""
        hook = self.hook
        if not isinstance(hook, BareCountEcsHook):
            raise TypeError(f"{type(self).__name__}.hook is a {type(hook).__name__}, not a BareCountEcsHook")
        return hook

    def _prepare_run(self, ctx: bc_context.RunContext, fargate_size: Mapping[str, Any]) -> None:
        """Size, identity and tags, set on this run's RunTask arguments before the upstream operator runs."""
        definition = self.ecs_hook.describe_task_definition(self.task_definition)
        names = [str(container["name"]) for container in definition.get("containerDefinitions") or ()]
        self.overrides = overrides_with_size_and_identity(self.overrides, fargate_size, self.identity_env(ctx), names)
        self.tags = {**(self.tags or {}), **identity_labels(ctx)}

    def _describe_stopped_task(self, result: RunnerResult) -> dict[str, Any] | None:
        """One DescribeTasks after the upstream waiter returned (no polling); None when it cannot be read."""
        if not self.arn:
            return None
        try:
            response = self.ecs_hook.describe_task(self.cluster, self.arn)
        except Exception as err:
            self.log.warning("BareCount could not describe ECS task %s: %s", self.arn, err)
            result.record("details.describe_error", str(err), f"DescribeTasks failed ({type(err).__name__})")
            return None
        tasks = [task for task in response.get("tasks") or () if task.get("taskArn") == self.arn]
        return dict(tasks[0]) if tasks else None
