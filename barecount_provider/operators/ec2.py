"""The dedicated compute runner class: ``DedicatedComputeOperator`` runs a job on EC2 hosts provisioned just
in time, and terminates every one of them afterwards.

Lifecycle of one task try: the tenant's policy is checked (size, host count) before anything is launched;
RunInstances launches the size's instance type and host count, tagged with the tenant, the pipeline, the run
and ``barecount:managed=true``; the upstream ``instance_running`` waiter waits for the hosts; a pluggable
readiness check waits until each host has registered healthy (default: its SSM agent is Online); the job runs
with SSM Run Command (``AWS-RunShellScript``, the run's identity exported first) and the upstream
``command_executed`` waiter waits for it; in a ``finally`` every launched host is terminated and the
``instance_terminated`` waiter waits for it. ``on_kill`` terminates them too. Hosts of a task process that
died (OOM, lost worker) are found by :func:`sweep_orphans`.

What is recorded, and from which response field, is documented in docs/runners/dedicated.md.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.links.base_aws import BaseAwsLink
from airflow.providers.amazon.aws.operators.ssm import SsmRunCommandOperator
from airflow.sdk.exceptions import AirflowException
from botocore.exceptions import ClientError, WaiterError

from barecount_provider.hooks.ec2 import BareCountEC2Hook
from barecount_provider.hooks.ssm import BareCountSsmHook
from barecount_provider.operators import cloudwatch
from barecount_provider.operators.base import (
    BARECOUNT_TEMPLATE_FIELDS,
    BareCountRunnerMixin,
    RunnerConsoleLink,
    RunnerResult,
    iso_or_none,
    not_reported,
)

EC2 = "EC2"
SSM = "SSM"
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
SSM_SUCCESS_STATUS = "Success"
SSM_FAILED_STATUSES = ("Failed", "Cancelled", "TimedOut", "Cancelling")
# Tags of every host BareCount launches. The sweep finds hosts by MANAGED_TAG and asks about their run.
MANAGED_TAG = "barecount:managed"
TAG_TENANT = "barecount:tenant"
TAG_PIPELINE = "barecount:pipeline"
TAG_RUN = "barecount:run"  # the correlation id
TAG_DAG_ID = "barecount:dag_id"
TAG_RUN_ID = "barecount:run_id"
TAG_TASK_ID = "barecount:task_id"
# States in which a host still costs money or may start to (stopped hosts still bill their volumes).
LIVE_STATES = ("pending", "running", "stopping", "stopped")

ReadinessCheck = Callable[["DedicatedComputeOperator", list[str]], None]


class DedicatedComputeFailed(AirflowException):
    """The hosts could not be launched or made ready, or the job's command did not succeed."""


class HostsNotReady(AirflowException):
    """A host did not register healthy (SSM agent Online) within the readiness timeout."""


# ------------------------------------------------------------------------------------- identity in command


def commands_with_identity(commands: Sequence[str], identity: Mapping[str, str]) -> list[str]:
    """The job's shell lines after one ``export NAME=value`` line per identity variable (quoted)."""
    exports = [f"export {name}={shlex.quote(value)}" for name, value in identity.items()]
    return [*exports, *commands]


def host_tags(ctx: Any) -> list[dict[str, str]]:
    """The EC2 tags of a host launched for the try ``ctx`` (a RunContext)."""
    tags = {
        MANAGED_TAG: "true",
        TAG_TENANT: ctx.tenant,
        TAG_PIPELINE: ctx.pipeline,
        TAG_RUN: ctx.correlation_id,
        TAG_DAG_ID: ctx.dag_id,
        TAG_RUN_ID: ctx.run_id,
        TAG_TASK_ID: ctx.task_id,
        "Name": f"barecount-{ctx.tenant}-{ctx.pipeline}-{ctx.task_id}"[:255],
    }
    return [{"Key": key, "Value": str(value)[:255]} for key, value in tags.items()]


# ------------------------------------------------------------------------------------------ readiness


def ssm_agent_online(operator: DedicatedComputeOperator, instance_ids: list[str]) -> None:
    """The default readiness check: every host's SSM agent reports PingStatus ``Online`` in
    DescribeInstanceInformation, waited for with BareCount's custom ``ssm_agent_online`` waiter (polls every
    ``host_waiter_delay`` seconds for ``readiness_timeout_s``)."""
    delay = operator.host_waiter_delay
    attempts = int(operator.readiness_timeout_s // delay) + 1 if delay > 0 else 1
    try:
        operator.ssm_hook.wait_for_agents_online(instance_ids, delay, attempts)
    except WaiterError as err:
        last = err.last_response or {}
        if "Error" in last:  # the service refused the call: its own error, as before the waiter
            raise ClientError(last, "DescribeInstanceInformation") from err
        online = {
            info["InstanceId"]
            for info in last.get("InstanceInformationList", [])
            if info.get("PingStatus") == "Online"
        }
        missing = sorted(set(instance_ids) - online)
        raise HostsNotReady(
            f"SSM agent of {', '.join(missing)} not Online after {operator.readiness_timeout_s} s "
            "(is the AMI running the SSM agent, with an instance profile that allows it?)"
        ) from None


def instance_state_only(operator: DedicatedComputeOperator, instance_ids: list[str]) -> None:
    """A readiness check for emulators without DescribeInstanceInformation (moto 5.2.5): the hosts are
    ``running`` (already waited for), nothing more. Never use it against AWS: SSM would reject the command
    of a host whose agent has not registered."""
    instances = operator.ec2_hook.get_instances(instance_ids=list(instance_ids))
    not_running = sorted(i["InstanceId"] for i in instances if i["State"]["Name"] != "running")
    if not_running:
        raise HostsNotReady(f"hosts {', '.join(not_running)} are not running")


# ------------------------------------------------------------------------------------------- orphan sweep


@dataclasses.dataclass(frozen=True)
class ManagedHost:
    """A live host tagged ``barecount:managed=true``, as the sweep sees it."""

    instance_id: str
    state: str
    tags: Mapping[str, str]
    launch_time: datetime | None

    @property
    def dag_id(self) -> str | None:
        return self.tags.get(TAG_DAG_ID)

    @property
    def run_id(self) -> str | None:
        return self.tags.get(TAG_RUN_ID)

    @property
    def correlation_id(self) -> str | None:
        return self.tags.get(TAG_RUN)


def managed_hosts(hook: EC2Hook) -> list[ManagedHost]:
    """Every live host BareCount launched (tag ``barecount:managed=true``, state pending..stopped)."""
    instances = hook.get_instances(
        filters=[
            {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
    )
    return [
        ManagedHost(
            instance_id=instance["InstanceId"],
            state=instance["State"]["Name"],
            tags={tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])},
            launch_time=instance.get("LaunchTime"),
        )
        for instance in instances
    ]


def sweep_orphans(hook: EC2Hook, is_run_active: Callable[[ManagedHost], bool]) -> list[str]:
    """Terminate the managed hosts whose run is no longer running; return their instance ids.

    ``hook`` is a client-type :class:`EC2Hook`. ``is_run_active(host)`` answers for one host from its
    ``dag_id`` / ``run_id`` / ``correlation_id`` tags. A task process cannot ask Airflow (its DB is blocked
    there and the REST API needs credentials it does not hold), so the caller is the ``barecount`` CLI or a
    maintenance DAG, which asks the REST API or the metadata DB. A host the predicate cannot judge (it
    raises) is left alone: a sweep must never kill a live job.
    """
    orphans = []
    for host in managed_hosts(hook):
        try:
            active = is_run_active(host)
        except Exception:
            hook.log.warning(
                "sweep: cannot tell whether the run of %s is active; left alone", host.instance_id
            )
            continue
        if not active:
            orphans.append(host.instance_id)
    if orphans:
        hook.log.warning("sweep: terminating %d orphaned host(s): %s", len(orphans), ", ".join(orphans))
        hook.terminate_instances(instance_ids=orphans)
    return orphans


# ---------------------------------------------------------------------------------------------- recording


def _client_error_code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code") or "ClientError")
    return type(err).__name__


def record_command_invocations(result: RunnerResult, invocations: Mapping[str, Mapping[str, Any]]) -> None:
    """Record GetCommandInvocation of each host; a status other than Success becomes ``result.error``."""
    source = "GetCommandInvocation"
    statuses = {instance_id: inv.get("Status") for instance_id, inv in invocations.items()}
    exit_codes = {instance_id: inv.get("ResponseCode") for instance_id, inv in invocations.items()}
    result.record("details.command_status_per_host", statuses, f"{source} Status")
    result.record("details.exit_code_per_host", exit_codes, f"{source} ResponseCode")
    failed = {instance_id: status for instance_id, status in statuses.items() if status != SSM_SUCCESS_STATUS}
    status = next(iter(failed.values()), SSM_SUCCESS_STATUS) if invocations else None
    result.record(
        "details.status", status, f"{source} Status (the first host that did not succeed, else Success)"
    )
    codes = [code for code in exit_codes.values() if isinstance(code, int)]
    exit_code = next((code for code in codes if code != 0), codes[0] if codes else None)
    if exit_code is None:
        result.absent("details.exit_code", not_reported(SSM, "no ResponseCode in GetCommandInvocation"))
    else:
        result.record("details.exit_code", exit_code, f"{source} ResponseCode (the first non-zero, else 0)")
    starts = [iso_or_none(inv.get("ExecutionStartDateTime")) for inv in invocations.values()]
    ends = [iso_or_none(inv.get("ExecutionEndDateTime")) for inv in invocations.values()]
    starts_known = sorted(s for s in starts if s)
    ends_known = sorted(e for e in ends if e)
    if starts_known:
        result.record(
            "timings.started_at", starts_known[0], f"{source} ExecutionStartDateTime (earliest host)"
        )
    else:
        result.absent("timings.started_at", not_reported(SSM, "no ExecutionStartDateTime"))
    if ends_known:
        result.record("timings.finished_at", ends_known[-1], f"{source} ExecutionEndDateTime (latest host)")
    else:
        result.absent("timings.finished_at", not_reported(SSM, "no ExecutionEndDateTime"))
    if failed:
        first = next(iter(failed))
        details = invocations[first]
        stderr = str(details.get("StandardErrorContent") or "").strip()[-500:]
        message = (
            f"command {details.get('CommandId')} ended {failed[first]} with exit code "
            f"{details.get('ResponseCode')} on {first}" + (f": {stderr}" if stderr else "")
        )
        result.fail(f"SsmCommand.{failed[first]}", message)


# -------------------------------------------------------------------------------------------------- operator


class DedicatedComputeOperator(BareCountRunnerMixin, SsmRunCommandOperator):
    """Run a shell job on EC2 hosts launched just in time, as a BareCount dedicated runner; terminate them.

    Adds to :class:`SsmRunCommandOperator`: the tenant's policy (size and ``limits.max_hosts``) checked
    before any RunInstances; the size's instance type and host count launched with the run's tags; the wait
    until every host runs and has registered healthy; the job sent with ``AWS-RunShellScript`` to all hosts
    with the run's identity exported first; every launched host terminated whatever the outcome (success,
    failure, timeout, kill, or an error between launch and run) and waited for; the ``runner_result`` XCom
    and the runner metrics. A job that does not succeed fails the task after the runner_result is published.

    :param commands: the job's shell lines (templated); ``export`` lines of the identity are put first.
    :param image_id: the AMI of the hosts (it must run the SSM agent).
    :param subnet_id: the subnet of the hosts: the network profile's placement, set per run.
    :param security_group_ids: the hosts' security groups, set per run.
    :param iam_instance_profile: name or ARN of the instance profile (SSM needs one that allows it).
    :param run_instances_kwargs: further RunInstances arguments; ``InstanceType``, ``MinCount``,
        ``MaxCount`` are the size's and may not be set here.
    :param readiness_check: ``check(operator, instance_ids)``, raises when a host is not ready; default
        :func:`ssm_agent_online`. :func:`instance_state_only` is for emulators without
        DescribeInstanceInformation.
    :param readiness_timeout_s: how long the hosts may take to register healthy.
    :param command_timeout_s: the command's ``executionTimeout`` on each host.
    :param host_waiter_delay: seconds between polls of the instance waiters and the readiness check.
    :param host_waiter_max_attempts: polls of the instance waiters before giving up.
    :param tenant: see :class:`~barecount_provider.operators.base.BareCountRunnerMixin`.
    :param pipeline: see the mixin.
    :param size: size profile; ``dedicated.<size>.ec2`` gives the instance type and host count.
    :param network_profile: see the mixin; ``subnet_id`` and ``security_group_ids`` implement it.
    :param require_healthy: check its network profile's dependencies before launching (its hosts' SSM agents
        are checked once launched); None: the tenant's policy. See docs/health.md.
    :param wait_for_healthy: a timedelta: wait (deferred) up to this long for them to be healthy; None: fail at
        once when one is not.
    :param waiter_delay: seconds between polls of the upstream ``command_executed`` waiter.
    :param waiter_max_attempts: polls of the command before it counts as timed out.
    :param aws_conn_id: the Airflow AWS connection (EC2 and SSM).
    """

    runner_class = "dedicated"
    aws_hook_class = BareCountSsmHook
    operator_extra_links = (*SsmRunCommandOperator.operator_extra_links, RunnerConsoleLink())
    template_fields: Sequence[str] = (
        *SsmRunCommandOperator.template_fields,
        "commands",
        "image_id",
        "subnet_id",
        "security_group_ids",
        *BARECOUNT_TEMPLATE_FIELDS,
    )

    def __init__(
        self,
        *,
        commands: list[str],
        image_id: str,
        subnet_id: str | None = None,
        security_group_ids: list[str] | None = None,
        iam_instance_profile: str | None = None,
        run_instances_kwargs: dict[str, Any] | None = None,
        readiness_check: ReadinessCheck | None = None,
        readiness_timeout_s: float = 600.0,
        command_timeout_s: int = 3600,
        host_waiter_delay: int = 15,
        host_waiter_max_attempts: int = 40,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        # The document is always AWS-RunShellScript and the wait is synchronous: hosts are terminated in
        # this process's finally, which a deferral would leave.
        for forced in ("document_name", "deferrable", "wait_for_completion", "fail_on_nonzero_exit"):
            kwargs.pop(forced, None)
        super().__init__(
            document_name=RUN_SHELL_SCRIPT,
            wait_for_completion=True,
            deferrable=False,
            fail_on_nonzero_exit=True,
            tenant=tenant,
            pipeline=pipeline,
            size=size,
            network_profile=network_profile,
            require_healthy=require_healthy,
            wait_for_healthy=wait_for_healthy,
            **kwargs,
        )
        if isinstance(commands, str) or not commands:
            raise ValueError(f"commands: {commands!r} is not a non-empty list of shell lines")
        if not image_id:
            raise ValueError(f"image_id: {image_id!r} is not an AMI id")
        conflicts = sorted({"InstanceType", "MinCount", "MaxCount"} & set(run_instances_kwargs or {}))
        if conflicts:
            raise ValueError(
                f"run_instances_kwargs: {', '.join(conflicts)} cannot be set: the size sets the instance "
                "type and host count"
            )
        if readiness_timeout_s <= 0 or command_timeout_s <= 0:
            raise ValueError(
                f"readiness_timeout_s {readiness_timeout_s!r} and command_timeout_s {command_timeout_s!r} "
                "must be positive"
            )
        self.commands = commands
        self.image_id = image_id
        self.subnet_id = subnet_id
        self.security_group_ids = security_group_ids
        self.iam_instance_profile = iam_instance_profile
        self.run_instances_kwargs = run_instances_kwargs or {}
        self.readiness_check: ReadinessCheck = readiness_check or ssm_agent_online
        self.readiness_timeout_s = readiness_timeout_s
        self.command_timeout_s = command_timeout_s
        self.host_waiter_delay = host_waiter_delay
        self.host_waiter_max_attempts = host_waiter_max_attempts
        self._launched: dict[str, datetime] = {}  # instance id -> LaunchTime
        self._terminated: dict[str, datetime] = {}  # instance id -> when the waiter saw it terminated
        self._command_id: str | None = None

    @cached_property
    def ec2_hook(self) -> BareCountEC2Hook:
        """The EC2 hook, on the same connection, region and botocore settings as the SSM hook."""
        return BareCountEC2Hook(**self._hook_parameters)

    @property
    def ssm_hook(self) -> BareCountSsmHook:
        """``self.hook``, typed: the upstream operator builds it from ``aws_hook_class``."""
        hook = self.hook
        if not isinstance(hook, BareCountSsmHook):
            raise TypeError(f"{type(self).__name__}.hook is a {type(hook).__name__}, not a BareCountSsmHook")
        return hook

    # ---------------------------------------------------------------------------------------- lifecycle

    def execute(self, context: Any) -> str | None:
        ctx = self.barecount_context(context)
        # Both checks raise PolicyViolation before any RunInstances.
        ec2_size = self.governed_resources(ctx).get("ec2", {})
        host_count = int(ec2_size.get("host_count", 1))
        self.governed_resources(ctx, hosts=host_count)
        instance_type = str(ec2_size["instance_type"])
        identity = self.identity_env(ctx)
        result = self.new_runner_result(ctx)
        source = f"policy size_tables.dedicated.{ctx.size}.ec2"
        result.record("resources_requested.instance_type", instance_type, source)
        result.record("resources_requested.host_count", host_count, source)
        self._place(ctx, result)  # PolicyViolation before any RunInstances
        # the network profile's dependencies only: the hosts' SSM agents are checked once they are launched
        self.check_health_before_launch(ctx)

        self._launched, self._terminated, self._command_id = {}, {}, None
        started_at, started = datetime.now(UTC), time.monotonic()
        invocations: dict[str, dict[str, Any]] = {}
        failure: Exception | None = None
        try:
            try:
                self._launch(ctx, instance_type, host_count)
                ready_started = time.monotonic()
                self._wait_until_ready()
                result.record(
                    "timings.ready_s",
                    round(time.monotonic() - ready_started, 3),
                    "clock of the Airflow worker: instance_running waiter and the readiness check",
                )
                invocations = self._run_command(identity)
            except Exception as err:
                failure = err
        finally:
            # Whatever happened, including a BaseException (task timeout, kill): no host outlives the try.
            self._terminate_hosts()
        result.record(
            "timings.submitted_at", started_at.isoformat(), "clock of the Airflow worker, before RunInstances"
        )
        result.record(
            "timings.wall_duration_s",
            round(time.monotonic() - started, 3),
            "clock of the Airflow worker from RunInstances until every host was terminated",
        )
        self._record(result, instance_type, invocations)
        # CPU, network and EBS of every launched host: CloudWatch AWS/EC2 only
        cloudwatch.read_into(
            result, self, cloudwatch.ec2_host_metric_queries(list(self._launched)), started_at, datetime.now(UTC)
        )
        if failure is not None and result.error is None:
            result.fail(_client_error_code(failure), str(failure))
        if result.error is not None:
            self.log.error("Dedicated job failed: %s", result.error["message"])
        self.publish_runner_result(context, result)
        if result.error is not None:
            self.on_runner_failed(
                context,
                result,
                {
                    "instance_ids": list(self._launched),
                    "command_id": self._command_id,
                    "commands": self.commands,
                },
            )
            raise DedicatedComputeFailed(
                f"dedicated job on {host_count} x {instance_type} ({len(self._launched)} launched): "
                f"{result.error['error_class']}: {result.error['message']}"
            ) from failure
        return self._command_id

    def _place(self, ctx: Any, result: RunnerResult) -> None:
        """The network profile's subnet and security groups as this run's placement of the hosts."""
        placement, source = self.network_placement(ctx, "ec2")
        if "subnet_id" in placement:
            self.refuse_conflict(ctx, "subnet_id", self.subnet_id, placement["subnet_id"], source)
            self.subnet_id = placement["subnet_id"]
        if "security_group_ids" in placement:
            given = list(self.security_group_ids) if self.security_group_ids else None
            self.refuse_conflict(ctx, "security_group_ids", given, list(placement["security_group_ids"]), source)
            self.security_group_ids = list(placement["security_group_ids"])
        where = source if placement else "operator arguments (the policy places no such profile)"
        result.record("details.subnet_id", self.subnet_id, f"subnet_id: {where}")
        result.record(
            "details.security_group_ids",
            list(self.security_group_ids) if self.security_group_ids else None,
            f"security_group_ids: {where}",
        )

    def on_kill(self) -> None:
        """Cancel the command and terminate every launched host (idempotent with execute's finally)."""
        if self._command_id:
            try:
                self.ssm_hook.cancel_command(self._command_id)
            except Exception:
                self.log.warning("Could not cancel SSM command %s", self._command_id, exc_info=True)
        self._terminate_hosts()

    def _launch(self, ctx: Any, instance_type: str, host_count: int) -> None:
        """RunInstances of all hosts at once (MinCount = MaxCount: all or nothing)."""
        tags = host_tags(ctx)
        request: dict[str, Any] = {
            **self.run_instances_kwargs,
            "ImageId": self.image_id,
            "InstanceType": instance_type,
            "MinCount": host_count,
            "MaxCount": host_count,
            # Idempotent per try: botocore's retry of a timed-out RunInstances cannot launch twice.
            "ClientToken": ctx.run_token[:64],
            "TagSpecifications": [
                *self.run_instances_kwargs.get("TagSpecifications", []),
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if self.subnet_id:
            request["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            request["SecurityGroupIds"] = list(self.security_group_ids)
        if self.iam_instance_profile:
            key = "Arn" if self.iam_instance_profile.startswith("arn:") else "Name"
            request["IamInstanceProfile"] = {key: self.iam_instance_profile}
        self.log.info("Launching %d x %s from %s", host_count, instance_type, self.image_id)
        for instance in self.ec2_hook.run_instances(**request):
            self._launched[instance["InstanceId"]] = instance.get("LaunchTime") or datetime.now(UTC)
        self.log.info("Launched %s", ", ".join(self._launched))

    def _wait_for_hosts(self, waiter_name: str, instance_ids: list[str]) -> None:
        self.ec2_hook.wait_for_instances(
            waiter_name, instance_ids, self.host_waiter_delay, self.host_waiter_max_attempts
        )

    def _wait_until_ready(self) -> None:
        ids = list(self._launched)
        self._wait_for_hosts("instance_running", ids)
        self.readiness_check(self, ids)

    def _run_command(self, identity: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """SendCommand to every host, wait with the upstream ``command_executed`` waiter, return each host's
        GetCommandInvocation (a failed command is read, not raised: it is recorded)."""
        ids = list(self._launched)
        self._command_id = self.ssm_hook.send_command(
            RUN_SHELL_SCRIPT,
            ids,
            {
                "commands": commands_with_identity(self.commands, identity),
                "executionTimeout": [str(int(self.command_timeout_s))],
            },
            **self.run_command_kwargs,
        )
        self.log.info("Sent SSM command %s to %s", self._command_id, ", ".join(ids))
        waiter = self.hook.get_waiter("command_executed")
        for instance_id in ids:
            try:
                waiter.wait(
                    CommandId=self._command_id,
                    InstanceId=instance_id,
                    WaiterConfig={"Delay": self.waiter_delay, "MaxAttempts": self.waiter_max_attempts},
                )
            except WaiterError as err:
                # A command that ended badly is read and recorded below; anything else (still running
                # after waiter_max_attempts: a timeout) is the waiter's error.
                if (err.last_response or {}).get("Status") not in SSM_FAILED_STATUSES:
                    raise
        return {
            instance_id: dict(self.hook.get_command_invocation(self._command_id, instance_id))
            for instance_id in ids
        }

    def _terminate_hosts(self) -> None:
        """Terminate every launched host not yet seen terminated, and wait for it. Errors are logged (the
        sweep is the safety net) so that they never hide the job's own outcome."""
        remaining = [instance_id for instance_id in self._launched if instance_id not in self._terminated]
        if not remaining:
            return
        try:
            self.ec2_hook.terminate_instances(instance_ids=remaining)
            self._wait_for_hosts("instance_terminated", remaining)
        except Exception:
            self.log.error(
                "Could not confirm termination of %s: the orphan sweep will terminate them",
                ", ".join(remaining),
                exc_info=True,
            )
            return
        now = datetime.now(UTC)
        for instance_id in remaining:
            self._terminated[instance_id] = now
        self.log.info("Terminated %s", ", ".join(remaining))

    # ---------------------------------------------------------------------------------------- recording

    def _record(
        self, result: RunnerResult, instance_type: str, invocations: Mapping[str, Mapping[str, Any]]
    ) -> None:
        ids = list(self._launched)
        run_source = "RunInstances Instances[].InstanceId"
        if ids:
            result.record("resources_used.instance_type", instance_type, "RunInstances InstanceType")
        else:
            result.absent("resources_used.instance_type", "no host was launched")
        result.record("resources_used.host_count", len(ids), run_source)
        result.record("resources_used.instance_ids", ids, run_source)
        result.absent(
            "resources_used.memory_used_bytes",
            not_reported(EC2, "not in EC2's own metrics: memory needs the CloudWatch agent on the host"),
        )
        hosts: list[dict[str, Any]] = []
        for instance_id, launched in self._launched.items():
            terminated = self._terminated.get(instance_id)
            lifetime = (terminated - launched).total_seconds() if terminated else None
            hosts.append(
                {
                    "instance_id": instance_id,
                    "launched_at": iso_or_none(launched),
                    "terminated_at": iso_or_none(terminated),
                    "lifetime_s": round(lifetime, 3) if lifetime is not None else None,
                }
            )
        result.record(
            "details.hosts",
            hosts,
            "launched_at: RunInstances LaunchTime; terminated_at: clock of the Airflow worker when the "
            "instance_terminated waiter returned (None: termination not confirmed, left to the sweep)",
        )
        known = [host["lifetime_s"] for host in hosts if host["lifetime_s"] is not None]
        result.record("billing_inputs.instance_type", instance_type, "policy size table (launched as)")
        result.record("billing_inputs.host_count", len(ids), run_source)
        result.record(
            "billing_inputs.host_lifetimes_s",
            {host["instance_id"]: host["lifetime_s"] for host in hosts},
            "terminated_at - launched_at per host (details.hosts)",
        )
        result.record(
            "billing_inputs.host_seconds", round(sum(known), 3), "sum of billing_inputs.host_lifetimes_s"
        )
        if self._terminated:
            result.record(
                "timings.hosts_terminated_at",
                iso_or_none(max(self._terminated.values())),
                "clock of the Airflow worker when the last instance_terminated waiter returned",
            )
        else:
            result.absent(
                "timings.hosts_terminated_at", "no host was launched, or termination was not confirmed"
            )
        result.record("digests.image_id", self.image_id, "operator argument image_id (the AMI)")
        result.absent("driver_version", not_reported(SSM, "a shell command has no driver version"))
        result.record("details.command_id", self._command_id, "SendCommand Command.CommandId")
        if self._command_id:
            result.record("external_run_id", self._command_id, "SendCommand Command.CommandId")
            link = self._console_link(self._command_id)
            if link:
                result.record("console_link", link, "built from the command id and region")
            else:
                result.absent("console_link", "no region known for the connection")
        else:
            result.absent("external_run_id", "no SSM command was sent (launch or readiness failed)")
            result.absent("console_link", "no SSM command was sent (launch or readiness failed)")
        if invocations:
            record_command_invocations(result, invocations)
        else:
            result.absent("details.status", "no command invocation to read")
            result.absent("details.exit_code", "no command invocation to read")
            result.absent("timings.started_at", "the command did not run")
            result.absent("timings.finished_at", "the command did not run")

    def _console_link(self, command_id: str) -> str | None:
        region = self.hook.conn_region_name
        if not region:
            return None
        domain = BaseAwsLink.get_aws_domain(self.hook.conn_partition)
        return f"https://{region}.console.{domain}/systems-manager/run-command/{command_id}?region={region}"
