"""The EMR Serverless runner: ``EmrServerlessRunnerOperator`` runs a job on an EMR Serverless application
through the upstream amazon operator and records its run.

Shared configuration is never changed at run time. EMR Serverless capacity and networking belong to the
application: the DAG author's ``application_id`` names the application that implements the size and network
profile; the size's entry of the policy's size table is recorded as *requested*.

What is recorded, and from which response field, is documented in docs/runners/managed_etl.md.
"""
from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.links.base_aws import BaseAwsLink
from airflow.providers.amazon.aws.operators.emr import EmrServerlessStartJobOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider import context as bc_context
from barecount_provider.hooks.emr_serverless import BareCountEmrServerlessHook
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

EMR_SERVERLESS = "EMR Serverless"
EMR_SUCCESS_STATE = "SUCCESS"
_VCPU = re.compile(r"\s*(\d+(?:\.\d+)?)\s*vCPU\s*")


class EmrServerlessJobRunFailed(AirflowException):
    """The EMR Serverless job run ended in a state other than SUCCESS (its stateDetails is the message)."""


# ------------------------------------------------------------------------------------ identity in request


def spark_submit_parameters_with_identity(parameters: str | None, identity: Mapping[str, str]) -> str:
    """The author's ``sparkSubmitParameters`` followed by one ``--conf`` per identity variable for the
    executors (``spark.executorEnv.X``) and the driver (``spark.emr-serverless.driverEnv.X``).

    spark-submit keeps the last ``--conf`` of a key, so the identity wins over an author's value."""
    confs = [
        f"--conf {prefix}.{name}={shlex.quote(value)}"
        for name, value in identity.items()
        for prefix in ("spark.executorEnv", "spark.emr-serverless.driverEnv")
    ]
    return " ".join(part for part in ((parameters or "").strip(), *confs) if part)


def job_driver_with_identity(job_driver: Mapping[str, Any], identity: Mapping[str, str]) -> dict[str, Any]:
    """The job driver with the identity added: Spark submit parameters, or ``--hiveconf`` for Hive."""
    driver = {key: dict(value) if isinstance(value, Mapping) else value for key, value in job_driver.items()}
    spark = driver.get("sparkSubmit")
    hive = driver.get("hive")
    if isinstance(spark, dict):
        spark["sparkSubmitParameters"] = spark_submit_parameters_with_identity(
            spark.get("sparkSubmitParameters"), identity
        )
    elif isinstance(hive, dict):
        hiveconf = " ".join(
            f"--hiveconf {name.lower()}={shlex.quote(value)}" for name, value in identity.items()
        )
        hive["parameters"] = " ".join(
            part for part in ((hive.get("parameters") or "").strip(), hiveconf) if part
        )
    else:
        raise ValueError(f"job_driver: {sorted(job_driver)} has neither sparkSubmit nor hive")
    return driver


# ---------------------------------------------------------------------------------------------- recording


def _utilisation(section: Any) -> dict[str, Any]:
    return dict(section) if isinstance(section, Mapping) else {}


def record_emr_serverless_job_run(
    result: RunnerResult, job_run: Mapping[str, Any], *, console_link: str | None
) -> None:
    """Record one GetJobRun ``jobRun`` into ``result``; a state other than SUCCESS becomes ``result.error``."""
    source = "GetJobRun"
    gap = not_reported(EMR_SERVERLESS, "absent from GetJobRun")
    state = job_run.get("state")
    result.record("details.state", state, f"{source} jobRun.state")
    record_or_absent(result, "external_run_id", job_run.get("jobRunId"), f"{source} jobRun.jobRunId", gap)
    record_or_absent(
        result, "driver_version", job_run.get("releaseLabel"), f"{source} jobRun.releaseLabel", gap
    )
    record_or_absent(
        result, "details.application_id", job_run.get("applicationId"), f"{source} jobRun.applicationId", gap
    )
    record_or_absent(result, "details.mode", job_run.get("mode"), f"{source} jobRun.mode", gap)
    record_or_absent(result, "details.attempt", job_run.get("attempt"), f"{source} jobRun.attempt", gap)
    total = _utilisation(job_run.get("totalResourceUtilization"))
    billed = _utilisation(job_run.get("billedResourceUtilization"))
    for key, field in (
        ("vcpu_hours", "vCPUHour"),
        ("memory_gb_hours", "memoryGBHour"),
        ("storage_gb_hours", "storageGBHour"),
    ):
        record_or_absent(
            result,
            f"resources_used.total_{key}",
            total.get(field),
            f"{source} jobRun.totalResourceUtilization.{field}",
            not_reported(EMR_SERVERLESS, "no totalResourceUtilization in GetJobRun (moto never sends it)"),
        )
        record_or_absent(
            result,
            f"billing_inputs.billed_{key}",
            billed.get(field),
            f"{source} jobRun.billedResourceUtilization.{field}",
            not_reported(EMR_SERVERLESS, "no billedResourceUtilization in GetJobRun"),
        )
    record_or_absent(
        result,
        "timings.duration_s",
        job_run.get("totalExecutionDurationSeconds"),
        f"{source} jobRun.totalExecutionDurationSeconds",
        gap,
    )
    queued_ms = job_run.get("queuedDurationMilliseconds")
    record_or_absent(
        result,
        "timings.queued_s",
        queued_ms / 1000.0 if isinstance(queued_ms, int | float) else None,
        f"{source} jobRun.queuedDurationMilliseconds",
        not_reported(EMR_SERVERLESS, "no queuedDurationMilliseconds in GetJobRun (moto never sends it)"),
    )
    for path, field in (
        ("timings.created_at", "createdAt"),
        ("timings.started_at", "startedAt"),
        ("timings.finished_at", "endedAt"),
    ):
        record_or_absent(result, path, iso_or_none(job_run.get(field)), f"{source} jobRun.{field}", gap)
    for path in ("resources_used.cpu_load", "resources_used.memory_used_bytes"):
        result.absent(
            path, not_reported(EMR_SERVERLESS, "in GetJobRun; only the utilisation totals in hours")
        )
    result.absent(
        "digests.image",
        not_reported(
            EMR_SERVERLESS,
            "GetJobRun has no image digest (custom images: the application's imageConfiguration)",
        ),
    )
    record_or_absent(
        result, "console_link", console_link, "built from the application id, job run id and region", gap
    )
    if state != EMR_SUCCESS_STATE:
        details = job_run.get("stateDetails")
        result.record("details.state_details", details, f"{source} jobRun.stateDetails")
        result.fail(f"EmrServerlessJobRun.{state}", details or f"job run ended in state {state}")


# ---------------------------------------------------------------------------------------- EMR Serverless


def emr_serverless_max_workers(emr_size: Mapping[str, Any]) -> int | None:
    """The most workers a size may scale to: ``max_cpu`` / ``worker_cpu`` (None when not in vCPU)."""
    max_cpu, worker_cpu = (_VCPU.fullmatch(str(emr_size.get(key, ""))) for key in ("max_cpu", "worker_cpu"))
    if max_cpu is None or worker_cpu is None or float(worker_cpu.group(1)) == 0:
        return None
    return int(float(max_cpu.group(1)) // float(worker_cpu.group(1)))


class EmrServerlessRunnerOperator(BareCountRunnerMixin, EmrServerlessStartJobOperator):
    """Run a job on an EMR Serverless application as a BareCount managed ETL runner, and record its
    runner_result.

    Adds to :class:`EmrServerlessStartJobOperator`: the tenant's policy checked before the job starts, the
    run's identity as Spark ``--conf spark.executorEnv.X`` / ``spark.emr-serverless.driverEnv.X`` submit
    parameters (``--hiveconf`` for Hive; the author's parameters are kept), the ``runner_result`` XCom and the
    runner metrics. It always waits for the job to finish, synchronously, with the upstream waiter; a job
    that does not succeed fails the task after the runner_result is published.

    :param application_id: the application that implements the size and network profile (capacity and
        networking belong to the application; they are never changed at run time), or the name under which
        the tenant's policy (``runner_targets.emr``) maps network profiles and sizes to application ids.
    :param execution_role_arn: the job's execution role.
    :param job_driver: ``{"sparkSubmit": {...}}`` or ``{"hive": {...}}``; the identity is added.
    :param tenant: see :class:`~barecount_provider.operators.base.BareCountRunnerMixin`.
    :param pipeline: see the mixin.
    :param size: size profile; ``managed_etl.<size>.emr`` is recorded as requested and its
        ``max_cpu / worker_cpu`` is checked against the tenant's ``max_workers``.
    :param network_profile: see the mixin.
    :param require_healthy: check its network profile's dependencies and the application
        (``emr_serverless_application``) before launching; None: the tenant's policy. See docs/health.md.
    :param wait_for_healthy: a timedelta: wait (deferred) up to this long for them to be healthy; None: fail at
        once when one is not.
    :param waiter_delay: seconds between GetJobRun polls of the upstream waiter.
    :param aws_conn_id: the Airflow AWS connection.
    """

    runner_class = "managed_etl"
    aws_hook_class = BareCountEmrServerlessHook
    operator_extra_links = (  # type: ignore[assignment]
        *EmrServerlessStartJobOperator.operator_extra_links,
        RunnerConsoleLink(),
    )
    template_fields: Sequence[str] = (
        *EmrServerlessStartJobOperator.template_fields,
        *BARECOUNT_TEMPLATE_FIELDS,
    )

    def __init__(
        self,
        *,
        application_id: str,
        execution_role_arn: str,
        job_driver: dict,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        require_synchronous(
            "EmrServerlessRunnerOperator",
            wait_for_completion=kwargs.pop("wait_for_completion", True),
            deferrable=kwargs.pop("deferrable", False),
        )
        super().__init__(
            application_id=application_id,
            execution_role_arn=execution_role_arn,
            job_driver=job_driver,
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

    def execute(self, context: Any, event: dict[str, Any] | None = None) -> str | None:
        ctx = self.barecount_context(context)
        # Both checks raise PolicyViolation before anything is started.
        emr_size = self.governed_resources(ctx).get("emr", {})
        self.governed_resources(ctx, workers=emr_serverless_max_workers(emr_size))
        identity: dict[str, str] = self.identity_env(ctx)
        driver = job_driver_with_identity(self.job_driver, identity)
        result = self.new_runner_result(ctx)
        self.application_id = self.select_target(ctx, result, "emr", self.application_id)
        self.check_health_before_launch(ctx)  # DependencyUnhealthy, or a deferral, before StartJobRun
        record_requested_from_size_table(result, emr_size, f"managed_etl.{ctx.size}.emr")
        author_driver, self.job_driver = self.job_driver, driver

        started_at, started = datetime.now(UTC), time.monotonic()
        failure: Exception | None = None
        try:
            super().execute(context)
        except Exception as err:
            if self.job_id is None:  # nothing was started: nothing spent, nothing to record
                raise
            failure = err
        finally:
            self.job_driver = author_driver
        record_wall_clock(result, started_at, started, "StartJobRun and the waiting until the job ended")

        self._record_application(result, emr_size)
        job_run = self._get_job_run(result) if self.job_id else {}
        if job_run:
            record_emr_serverless_job_run(result, job_run, console_link=self._console_link())
        if failure is not None and result.error is None:
            result.fail(type(failure).__name__, str(failure))
        if result.error is not None:
            self.log.error("EMR Serverless job %s failed: %s", self.job_id, result.error["message"])
        self.publish_runner_result(context, result)
        if result.error is not None:
            self.on_runner_failed(
                context,
                result,
                {"application_id": self.application_id, "job_driver": driver, "job_run": job_run},
            )
            raise EmrServerlessJobRunFailed(
                f"EMR Serverless application {self.application_id!r} job {self.job_id}: {result.error['message']}"
            ) from failure
        return self.job_id

    def runner_health_target(self, ctx: bc_context.RunContext) -> runtime_health.DependencySpec:
        """The application this try's job runs on (the policy's target): ``CREATED`` or ``STARTED``."""
        return runtime_health.runner_spec(
            "emr_serverless_application",
            self.application_id,
            tenant=ctx.tenant,
            network_profile=ctx.network_profile,
            conn_id=self.aws_conn_id,
            region_name=self.region_name,
        )

    @property
    def emr_hook(self) -> BareCountEmrServerlessHook:
        """``self.hook``, typed: the upstream operator builds it from ``aws_hook_class``."""
        hook = self.hook
        if not isinstance(hook, BareCountEmrServerlessHook):
            raise TypeError(
                f"{type(self).__name__}.hook is a {type(hook).__name__}, not a BareCountEmrServerlessHook"
            )
        return hook

    def _record_application(self, result: RunnerResult, emr_size: Mapping[str, Any]) -> None:
        """The application's own capacity (its parallelism bounds): GetApplication, never changed here."""
        try:
            application = self.emr_hook.get_application(self.application_id)
        except Exception as err:
            reason = f"GetApplication failed ({type(err).__name__})"
            for path in ("resources_used.initial_capacity", "resources_used.maximum_capacity"):
                result.absent(path, reason)
            return
        source = "GetApplication application"
        initial = application.get("initialCapacity")
        maximum = application.get("maximumCapacity")
        if initial:
            result.record("resources_used.initial_capacity", initial, f"{source}.initialCapacity")
        else:
            result.record("resources_used.initial_capacity", None, f"{source}: no initialCapacity (no pre-initialized workers)")
        if maximum:
            result.record("resources_used.maximum_capacity", maximum, f"{source}.maximumCapacity")
            wanted = (str(emr_size.get("max_cpu", "")).replace(" ", ""), str(emr_size.get("max_memory", "")).replace(" ", ""))
            has = (str(maximum.get("cpu", "")).replace(" ", ""), str(maximum.get("memory", "")).replace(" ", ""))
            if all(wanted) and wanted != has:
                result.record(
                    "details.size_mismatch",
                    f"size {result.size!r} asks for at most {wanted[0]} / {wanted[1]}; the application allows "
                    f"{has[0] or '?'} / {has[1] or '?'}",
                    "policy size table compared with GetApplication maximumCapacity",
                )
        else:
            result.record("resources_used.maximum_capacity", None, f"{source}: no maximumCapacity (account limits only)")

    def _get_job_run(self, result: RunnerResult) -> dict[str, Any]:
        try:
            return self.emr_hook.get_job_run(self.application_id, str(self.job_id or ""))
        except Exception as err:
            self.log.warning("BareCount could not read EMR Serverless job run %s: %s", self.job_id, err)
            result.record("details.get_job_run_error", str(err), f"GetJobRun failed ({type(err).__name__})")
            result.record("external_run_id", self.job_id, "StartJobRun jobRunId")
            return {}

    def _console_link(self) -> str | None:
        region = self.hook.conn_region_name
        if not region:
            return None
        domain = BaseAwsLink.get_aws_domain(self.hook.conn_partition)
        return (
            f"https://console.{domain}/emr/home?region={region}"
            f"#/serverless-applications/{self.application_id}/job-runs/{self.job_id}"
        )
