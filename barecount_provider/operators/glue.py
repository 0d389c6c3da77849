"""The Glue runner: ``GlueRunnerOperator`` runs an AWS Glue job through the upstream amazon operator and
records its run.

Shared configuration is never changed at run time. Glue takes a worker type and count per run
(StartJobRun ``WorkerType`` / ``NumberOfWorkers``), so the size sets them per run and the job definition is
left alone.

What is recorded, and from which response field, is documented in docs/runners/managed_etl.md.
"""
from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.links.base_aws import BaseAwsLink
from airflow.providers.amazon.aws.links.glue import GlueJobRunDetailsLink
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider import context as bc_context
from barecount_provider.cost.backends.glue import GLUE_DPU_PER_WORKER
from barecount_provider.hooks.glue import BareCountGlueJobHook
from barecount_provider.operators import cloudwatch
from barecount_provider.operators.base import (
    BARECOUNT_TEMPLATE_FIELDS,
    BareCountRunnerMixin,
    RunnerConsoleLink,
    RunnerResult,
    iso_or_none,
    not_reported,
    record_or_absent,
    record_requested_from_size_table,
    record_wall_clock,
    require_synchronous,
)
from barecount_provider.runtime import health as runtime_health

GLUE = "Glue"
GLUE_AUTO_SCALING_ARGUMENT = "--enable-auto-scaling"

GLUE_SUCCESS_STATE = "SUCCEEDED"
# Capacity arguments of StartJobRun that the size decides; a DAG author setting them too is a conflict.
GLUE_CAPACITY_RUN_ARGUMENTS = ("WorkerType", "NumberOfWorkers", "MaxCapacity", "AllocatedCapacity")


class GlueJobRunFailed(AirflowException):
    """The Glue job run ended in a state other than SUCCEEDED (its ErrorMessage is the message)."""


# ------------------------------------------------------------------------------------ identity in request


def glue_identity_arguments(identity: Mapping[str, str]) -> dict[str, str]:
    """The identity as Glue job arguments: ``BARECOUNT_RUN_TOKEN`` -> ``--barecount_run_token``.

    A Glue script reads them with ``getResolvedOptions(sys.argv, ["barecount_correlation_id", ...])``."""
    return {f"--{name.lower()}": value for name, value in identity.items()}


def glue_script_args_with_identity(
    script_args: Mapping[str, Any] | None, identity: Mapping[str, str]
) -> dict[str, Any]:
    """The author's script arguments plus the identity (the identity wins on a clash: it names this run)."""
    return {**(script_args or {}), **glue_identity_arguments(identity)}


def glue_run_kwargs_for_size(
    run_job_kwargs: Mapping[str, Any] | None, glue_size: Mapping[str, Any], size: str
) -> dict[str, Any]:
    """StartJobRun keyword arguments with the size's ``WorkerType`` and ``NumberOfWorkers``.

    Raises ValueError when the author's ``run_job_kwargs`` set capacity too: the size decides it."""
    run_kwargs = dict(run_job_kwargs or {})
    conflicts = [key for key in GLUE_CAPACITY_RUN_ARGUMENTS if key in run_kwargs]
    if conflicts:
        raise ValueError(
            f"run_job_kwargs: {', '.join(conflicts)} cannot be set: size {size!r} sets WorkerType "
            f"{glue_size.get('worker_type')!r} and NumberOfWorkers {glue_size.get('number_of_workers')!r}"
        )
    run_kwargs["WorkerType"] = glue_size["worker_type"]
    run_kwargs["NumberOfWorkers"] = int(glue_size["number_of_workers"])
    return run_kwargs


# ---------------------------------------------------------------------------------------------- recording


def glue_dpu_seconds(job_run: Mapping[str, Any]) -> tuple[float | None, str]:
    """(DPU-seconds, where from): ``DPUSeconds`` when Glue reports it (Flex and auto-scaling runs), else
    derived as capacity x ``ExecutionTime``; (None, why) when neither is known."""
    reported = job_run.get("DPUSeconds")
    if isinstance(reported, int | float):
        return float(reported), "GetJobRun DPUSeconds"
    execution_time = job_run.get("ExecutionTime")
    if not isinstance(execution_time, int | float):
        return None, not_reported(GLUE, "no DPUSeconds and no ExecutionTime in GetJobRun")
    worker_type, workers = job_run.get("WorkerType"), job_run.get("NumberOfWorkers")
    if worker_type in GLUE_DPU_PER_WORKER and isinstance(workers, int):
        dpus = GLUE_DPU_PER_WORKER[worker_type] * workers
        return dpus * execution_time, (
            f"derived: NumberOfWorkers x DPU of WorkerType {worker_type} ({GLUE_DPU_PER_WORKER[worker_type]}) "
            "x ExecutionTime (GetJobRun has no DPUSeconds)"
        )
    capacity = job_run.get("MaxCapacity")
    if isinstance(capacity, int | float):
        return float(
            capacity
        ) * execution_time, "derived: MaxCapacity x ExecutionTime (GetJobRun has no DPUSeconds)"
    return None, not_reported(GLUE, "no DPUSeconds, and no capacity to derive it from")


def record_glue_job_run(
    result: RunnerResult, job_run: Mapping[str, Any], *, console_link: str | None
) -> None:
    """Record one GetJobRun ``JobRun`` into ``result``; a failed state becomes ``result.error``."""
    source = "GetJobRun"
    gap = not_reported(GLUE, "absent from GetJobRun")
    state = job_run.get("JobRunState")
    result.record("details.job_run_state", state, f"{source} JobRunState")
    record_or_absent(result, "external_run_id", job_run.get("Id"), f"{source} Id", gap)
    record_or_absent(result, "driver_version", job_run.get("GlueVersion"), f"{source} GlueVersion", gap)
    record_or_absent(result, "details.job_name", job_run.get("JobName"), f"{source} JobName", gap)
    record_or_absent(result, "details.attempt", job_run.get("Attempt"), f"{source} Attempt", gap)
    execution_class = job_run.get("ExecutionClass")
    record_or_absent(
        result,
        "details.execution_class",
        execution_class,
        f"{source} ExecutionClass",
        not_reported(GLUE, "no ExecutionClass in GetJobRun (moto never sends it)"),
    )
    for path, field in (
        ("resources_used.worker_type", "WorkerType"),
        ("resources_used.number_of_workers", "NumberOfWorkers"),
        ("resources_used.max_capacity_dpu", "MaxCapacity"),
        ("timings.duration_s", "ExecutionTime"),
        ("billing_inputs.worker_type", "WorkerType"),
        ("billing_inputs.number_of_workers", "NumberOfWorkers"),
    ):
        record_or_absent(result, path, job_run.get(field), f"{source} {field}", gap)
    record_or_absent(
        result,
        "billing_inputs.execution_class",
        execution_class,
        f"{source} ExecutionClass",
        not_reported(GLUE, "no ExecutionClass in GetJobRun (STANDARD unless the job runs FLEX)"),
    )
    record_or_absent(
        result, "timings.started_at", iso_or_none(job_run.get("StartedOn")), f"{source} StartedOn", gap
    )
    record_or_absent(
        result, "timings.finished_at", iso_or_none(job_run.get("CompletedOn")), f"{source} CompletedOn", gap
    )
    dpu_seconds, dpu_source = glue_dpu_seconds(job_run)
    if dpu_seconds is None:
        result.absent("billing_inputs.dpu_seconds", dpu_source)
    else:
        result.record("billing_inputs.dpu_seconds", dpu_seconds, dpu_source)
    result.absent("digests.script", not_reported(GLUE, "GetJobRun has no digest of the job's script"))
    record_or_absent(result, "console_link", console_link, "built from the job name, run id and region", gap)
    if state != GLUE_SUCCESS_STATE:
        message = job_run.get("ErrorMessage") or f"job run ended in state {state}"
        result.record("details.error_message", job_run.get("ErrorMessage"), f"{source} ErrorMessage")
        result.fail(f"GlueJobRun.{state}", message)


# -------------------------------------------------------------------------------------------------- Glue


class GlueRunnerOperator(BareCountRunnerMixin, GlueJobOperator):
    """Run an AWS Glue job as a BareCount managed ETL runner, and record its runner_result.

    Adds to :class:`GlueJobOperator`: the tenant's policy checked before the run starts (size and worker
    count), the size's worker type and count as the run's ``WorkerType`` / ``NumberOfWorkers`` (the job is
    never modified), the run's identity as job arguments (``--barecount_correlation_id``,
    ``--barecount_run_token``, ``--traceparent``), the ``runner_result`` XCom and the runner metrics. It
    always waits for the run to finish, synchronously, through the upstream hook; a run that does not
    succeed fails the task after the runner_result is published.

    :param job_name: the Glue job, or the name under which the tenant's policy (``runner_targets.glue``)
        maps network profiles and sizes to the jobs that implement them (their connections and defaults).
    :param script_args: job arguments; the identity arguments are added.
    :param run_job_kwargs: further StartJobRun arguments; capacity (``WorkerType``, ``NumberOfWorkers``,
        ``MaxCapacity``, ``AllocatedCapacity``) is the size's and may not be set here.
    :param tenant: see :class:`~barecount_provider.operators.base.BareCountRunnerMixin`.
    :param pipeline: see the mixin.
    :param size: size profile; ``managed_etl.<size>.glue`` gives the worker type and count.
    :param network_profile: see the mixin; the job's connections implement it.
    :param require_healthy: check its network profile's dependencies and the job (``glue_job``) before
        launching; None: the tenant's policy. See docs/health.md.
    :param wait_for_healthy: a timedelta: wait (deferred) up to this long for them to be healthy; None: fail at
        once when one is not.
    :param job_poll_interval: seconds between GetJobRun polls of the upstream hook.
    :param aws_conn_id: the Airflow AWS connection.
    """

    runner_class = "managed_etl"
    aws_hook_class = BareCountGlueJobHook
    # the upstream links, then BareCount's (mypy: the upstream tuple's exact type is not a contract)
    operator_extra_links = (*GlueJobOperator.operator_extra_links, RunnerConsoleLink())  # type: ignore[assignment]
    template_fields: Sequence[str] = (*GlueJobOperator.template_fields, *BARECOUNT_TEMPLATE_FIELDS)

    def __init__(
        self,
        *,
        job_name: str,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        # A runner_result needs the finished run, polled in this process by the upstream hook.
        require_synchronous(
            "GlueRunnerOperator",
            wait_for_completion=kwargs.pop("wait_for_completion", True),
            deferrable=kwargs.pop("deferrable", False),
        )
        super().__init__(
            job_name=job_name,
            tenant=tenant,
            pipeline=pipeline,
            size=size,
            network_profile=network_profile,
            require_healthy=require_healthy,
            wait_for_healthy=wait_for_healthy,
            deferrable=False,
            wait_for_completion=True,
            **kwargs,
        )
        self._barecount_identity: dict[str, str] = {}
        self._barecount_scaling_args: dict[str, str] = {}

    def _build_script_args(self, context: Any) -> dict:
        args = glue_script_args_with_identity(super()._build_script_args(context), self._barecount_identity)
        return {**args, **self._barecount_scaling_args}

    def execute(self, context: Any) -> str | None:
        ctx = self.barecount_context(context)
        # Both checks raise PolicyViolation before anything is started.
        glue_size = self.governed_resources(ctx).get("glue", {})
        self.governed_resources(ctx, workers=int(glue_size.get("number_of_workers", 0)))
        run_kwargs = glue_run_kwargs_for_size(self.run_job_kwargs, glue_size, ctx.size)
        result = self.new_runner_result(ctx)
        self.job_name = self.select_target(ctx, result, "glue", self.job_name)  # PolicyViolation if unmapped
        self.check_health_before_launch(ctx)  # DependencyUnhealthy, or a deferral, before StartJobRun
        record_requested_from_size_table(result, glue_size, f"managed_etl.{ctx.size}.glue")
        workers = int(glue_size.get("number_of_workers", 0))
        if glue_size.get("auto_scaling"):
            # Glue Auto Scaling: NumberOfWorkers is the maximum, Glue removes idle workers down to its minimum
            self._barecount_scaling_args = {GLUE_AUTO_SCALING_ARGUMENT: "true"}
            parallelism = f"auto scaling, at most {workers} workers ({GLUE_AUTO_SCALING_ARGUMENT} true)"
        else:
            parallelism = f"fixed: {workers} workers"
        result.record("details.parallelism", parallelism, f"policy size_tables.managed_etl.{ctx.size}.glue")
        self._barecount_identity = self.identity_env(ctx)
        author_run_kwargs, self.run_job_kwargs = self.run_job_kwargs, run_kwargs

        started_at, started = datetime.now(UTC), time.monotonic()
        failure: Exception | None = None
        try:
            super().execute(context)
        except Exception as err:
            if self._job_run_id is None:  # nothing was started: nothing spent, nothing to record
                raise
            failure = err
        finally:
            self.run_job_kwargs = author_run_kwargs
        record_wall_clock(result, started_at, started, "StartJobRun and the polling until the run ended")

        run_id = self._job_run_id
        job_run = self._get_job_run(result, run_id) if run_id else {}
        if run_id and job_run:
            record_glue_job_run(result, job_run, console_link=self._console_link(run_id))
        if run_id:  # job metrics: CPU load, heap, bytes and records read, shuffle, tasks (CloudWatch only)
            cloudwatch.read_into(
                result, self, cloudwatch.glue_job_metric_queries(self.job_name, run_id), started_at, datetime.now(UTC)
            )
        if failure is not None and result.error is None:
            result.fail(type(failure).__name__, str(failure))
        if result.error is not None:
            self.log.error("Glue job %s run %s failed: %s", self.job_name, run_id, result.error["message"])
        self.publish_runner_result(context, result)
        if result.error is not None:
            self.on_runner_failed(context, result, {"job_name": self.job_name, "job_run": job_run})
            raise GlueJobRunFailed(
                f"Glue job {self.job_name!r} run {run_id}: {result.error['message']}"
            ) from failure
        return run_id

    def runner_health_target(self, ctx: bc_context.RunContext) -> runtime_health.DependencySpec:
        """The job this try runs (the policy's target): it exists, and its connections answer."""
        return runtime_health.runner_spec(
            "glue_job",
            self.job_name,
            tenant=ctx.tenant,
            network_profile=ctx.network_profile,
            conn_id=self.aws_conn_id,
            region_name=self.region_name,
        )

    @property
    def glue_hook(self) -> BareCountGlueJobHook:
        """``self.hook``, typed: the upstream operator builds it from ``aws_hook_class``."""
        hook = self.hook
        if not isinstance(hook, BareCountGlueJobHook):
            raise TypeError(f"{type(self).__name__}.hook is a {type(hook).__name__}, not a BareCountGlueJobHook")
        return hook

    def _get_job_run(self, result: RunnerResult, run_id: str) -> dict[str, Any]:
        """GetJobRun of the finished run; on failure, recorded as missing, never fatal."""
        try:
            return self.glue_hook.get_job_run(self.job_name, run_id)
        except Exception as err:
            self.log.warning("BareCount could not read Glue job run %s: %s", run_id, err)
            result.record("details.get_job_run_error", str(err), f"GetJobRun failed ({type(err).__name__})")
            result.record("external_run_id", run_id, "StartJobRun JobRunId")
            return {}

    def _console_link(self, run_id: str) -> str | None:
        region = self.hook.conn_region_name
        if not region:
            return None
        return GlueJobRunDetailsLink.format_str.format(
            aws_domain=BaseAwsLink.get_aws_domain(self.hook.conn_partition),
            region_name=region,
            job_name=urllib.parse.quote(self.job_name, safe=""),
            job_run_id=run_id,
        )
