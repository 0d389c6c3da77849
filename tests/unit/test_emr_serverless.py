"""EmrServerlessRunnerOperator (operators/emr_serverless.py): argument building, policy caps and the recording
of what EMR Serverless reports, on fixtures of the real response shapes.

moto 5.2.5's EMR Serverless jobs start at SUCCESS with zero utilisation: those paths are tested here on
real-shape responses (tests/fixtures/emr_serverless/); the request path runs against moto in
tests/integration/test_managed_etl_runner.py.
"""

from __future__ import annotations

import shlex
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.amazon.aws.operators.emr import EmrServerlessStartJobOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider.hooks.emr_serverless import BareCountEmrServerlessHook
from barecount_provider.operators.base import PolicyViolation
from barecount_provider.operators.emr_serverless import (
    EmrServerlessJobRunFailed,
    EmrServerlessRunnerOperator,
    emr_serverless_max_workers,
    job_driver_with_identity,
    record_emr_serverless_job_run,
    spark_submit_parameters_with_identity,
)

from .test_managed_etl import IDENTITY, _emr_op, _result, _stub_hook, _ti, fixture

# ------------------------------------------------------------------------------------------ argument building


def test_spark_submit_parameters_keep_the_authors_and_add_executor_and_driver_env() -> None:
    params = spark_submit_parameters_with_identity(
        "--conf spark.executor.cores=4", {"BARECOUNT_RUN_TOKEN": "t 1"}
    )
    assert shlex.split(params) == [
        "--conf",
        "spark.executor.cores=4",
        "--conf",
        "spark.executorEnv.BARECOUNT_RUN_TOKEN=t 1",
        "--conf",
        "spark.emr-serverless.driverEnv.BARECOUNT_RUN_TOKEN=t 1",
    ]
    driver = {"sparkSubmit": {"entryPoint": "s3://b/job.py", "sparkSubmitParameters": "--conf a=b"}}
    updated = job_driver_with_identity(driver, IDENTITY)
    assert driver["sparkSubmit"]["sparkSubmitParameters"] == "--conf a=b"  # the author's dict is not changed
    assert updated["sparkSubmit"]["entryPoint"] == "s3://b/job.py"
    assert (
        "--conf spark.emr-serverless.driverEnv.TRACEPARENT=00-a-b-01"
        in updated["sparkSubmit"]["sparkSubmitParameters"]
    )
    hive = job_driver_with_identity({"hive": {"query": "s3://b/q.sql"}}, {"BARECOUNT_RUN_TOKEN": "t"})
    assert hive["hive"]["parameters"] == "--hiveconf barecount_run_token=t"
    with pytest.raises(ValueError, match="has neither sparkSubmit nor hive"):
        job_driver_with_identity({"other": {}}, IDENTITY)


def test_emr_serverless_max_workers_from_the_size_table() -> None:
    assert emr_serverless_max_workers({"worker_cpu": "16 vCPU", "max_cpu": "400 vCPU"}) == 25
    assert emr_serverless_max_workers({"worker_cpu": "4"}) is None


# ---------------------------------------------------------------------------------------------------- parsers


def test_emr_serverless_run_recorded_on_fixture_success_with_utilisation_and_queue() -> None:
    result = _result()
    record_emr_serverless_job_run(
        result, fixture("emr_serverless", "get_job_run_success.json")["jobRun"], console_link="x"
    )
    assert result.error is None
    assert result.external_run_id == "00fk8e1a2b3c4d0a"
    assert result.driver_version == "emr-7.2.0"
    assert result.resources_used["total_vcpu_hours"] == 1.873
    assert result.resources_used["total_memory_gb_hours"] == 7.492
    assert result.resources_used["total_storage_gb_hours"] == 37.46
    assert result.billing_inputs == {
        "billed_vcpu_hours": 2.112,
        "billed_memory_gb_hours": 8.448,
        "billed_storage_gb_hours": 0.0,
    }
    assert result.timings["queued_s"] == pytest.approx(37.698)
    assert result.timings["duration_s"] == 412
    assert result.timings["finished_at"] == "2026-03-02T11:07:30.771000+00:00"
    assert (
        result.field_sources["billing_inputs.billed_vcpu_hours"]
        == "GetJobRun jobRun.billedResourceUtilization.vCPUHour"
    )
    assert result.unexplained_fields() == ["resources_requested"]  # execute() records it from the policy


def test_emr_serverless_run_recorded_on_fixture_failed_state_details() -> None:
    result = _result()
    record_emr_serverless_job_run(
        result, fixture("emr_serverless", "get_job_run_failed.json")["jobRun"], console_link=None
    )
    assert result.error is not None and result.error["error_class"] == "EmrServerlessJobRun.FAILED"
    assert "FileNotFoundException" in result.error["message"]
    assert result.billing_inputs["billed_vcpu_hours"] == 0.267


def test_emr_serverless_missing_fields_are_said_not_reported() -> None:
    result = _result()
    record_emr_serverless_job_run(
        result, {"jobRunId": "j", "state": "SUCCESS", "releaseLabel": "emr-7.0.0"}, console_link=None
    )
    assert result.timings["queued_s"] is None
    assert "queuedDurationMilliseconds" in result.field_sources["timings.queued_s"]
    assert result.unexplained_fields() == ["resources_requested"]  # execute() records it from the policy


# -------------------------------------------------------------------------------- execute() on a stub service


def test_emr_serverless_execute_on_fixture_failed_job_fails_after_the_result_is_published(
    monkeypatch: pytest.MonkeyPatch, capped_policy: None
) -> None:
    job_run = fixture("emr_serverless", "get_job_run_failed.json")["jobRun"]
    seen: dict[str, Any] = {}

    def execute(self: EmrServerlessStartJobOperator, context: Any, event: Any = None) -> str:
        seen["job_driver"] = self.job_driver
        self.job_id = job_run["jobRunId"]
        raise AirflowException("Serverless Job failed: FAILED")

    monkeypatch.setattr(EmrServerlessStartJobOperator, "execute", execute)
    op = _emr_op("s")  # 16 / 4 vCPU: 4 workers at most
    monkeypatch.setattr(
        EmrServerlessRunnerOperator,
        "hook",
        _stub_hook(SimpleNamespace(get_job_run=lambda **kwargs: {"jobRun": job_run}), BareCountEmrServerlessHook),
    )
    ti = _ti(op, monkeypatch)
    with pytest.raises(EmrServerlessJobRunFailed, match="job 00fk8f9e8d7c6b0b: Job failed, please check"):
        op.execute({"ti": ti})
    assert (
        "spark.executorEnv.BARECOUNT_RUN_TOKEN=" in seen["job_driver"]["sparkSubmit"]["sparkSubmitParameters"]
    )
    assert "sparkSubmitParameters" not in op.job_driver["sparkSubmit"]  # the author's driver is restored
    result = ti.pushed["runner_result"]
    assert result["error"]["error_class"] == "EmrServerlessJobRun.FAILED"
    assert result["billing_inputs"]["billed_vcpu_hours"] == 0.267
    assert result["details"]["state_details"].startswith("Job failed")
    assert result["console_link"].endswith(
        "#/serverless-applications/00fk8d7j5q1r2s09/job-runs/00fk8f9e8d7c6b0b"
    )


def test_emr_serverless_policy_cap_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capped_policy: None
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(
        EmrServerlessStartJobOperator, "execute", lambda self, context, event=None: started.append(1)
    )
    op = _emr_op("m")  # 64 / 4 vCPU: 16 workers; acme's max_workers is 12
    ti = _ti(op, monkeypatch)
    with pytest.raises(PolicyViolation, match="tenant 'acme': workers 16 exceeds max_workers 12"):
        op.execute({"ti": ti})
    assert started == [] and ti.pushed == {}
