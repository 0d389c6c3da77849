"""GlueRunnerOperator and EmrServerlessRunnerOperator: argument building, policy caps and the recording of
what the services report, on fixtures of the real response shapes.

moto 5.2.5's Glue runs never fail, always report ExecutionTime 123 and carry no DPUSeconds or ExecutionClass;
its EMR Serverless jobs start at SUCCESS with zero utilisation. Those paths are tested here on real-shape
responses (tests/fixtures/glue/, tests/fixtures/emr_serverless/); the request path runs against moto in
tests/integration/test_managed_etl_runner.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.operators.emr import EmrServerlessStartJobOperator
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider.hooks.emr_serverless import BareCountEmrServerlessHook
from barecount_provider.hooks.glue import BareCountGlueJobHook
from barecount_provider.operators.base import PolicyViolation, RunnerResult
from barecount_provider.operators.emr_serverless import (
    EmrServerlessJobRunFailed,
    EmrServerlessRunnerOperator,
    emr_serverless_max_workers,
    job_driver_with_identity,
    record_emr_serverless_job_run,
    spark_submit_parameters_with_identity,
)
from barecount_provider.operators.glue import (
    GlueJobRunFailed,
    GlueRunnerOperator,
    glue_dpu_seconds,
    glue_run_kwargs_for_size,
    glue_script_args_with_identity,
    record_glue_job_run,
)

from ..conftest import PolicyFile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDENTITY = {"BARECOUNT_CORRELATION_ID": "c1", "BARECOUNT_RUN_TOKEN": "t1", "TRACEPARENT": "00-a-b-01"}


def fixture(service: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / service / name).read_text())


def _result() -> RunnerResult:
    return RunnerResult(
        runner_class="managed_etl", size="m", tenant="acme", pipeline="orders", network_profile="public"
    )


# ------------------------------------------------------------------------------------------ argument building


def test_glue_identity_goes_into_job_arguments_keeping_the_authors() -> None:
    assert glue_script_args_with_identity({"--day": "1"}, IDENTITY) == {
        "--day": "1",
        "--barecount_correlation_id": "c1",
        "--barecount_run_token": "t1",
        "--traceparent": "00-a-b-01",
    }
    assert glue_script_args_with_identity(None, {"BARECOUNT_RUN_TOKEN": "t"}) == {
        "--barecount_run_token": "t"
    }


def test_glue_size_becomes_per_run_worker_type_and_count() -> None:
    glue = {"worker_type": "G.2X", "number_of_workers": 20}
    assert glue_run_kwargs_for_size({"Timeout": 60}, glue, "l") == {
        "Timeout": 60,
        "WorkerType": "G.2X",
        "NumberOfWorkers": 20,
    }
    with pytest.raises(
        ValueError, match=r"run_job_kwargs: NumberOfWorkers, MaxCapacity cannot be set: size 'l'"
    ):
        glue_run_kwargs_for_size({"NumberOfWorkers": 3, "MaxCapacity": 2.0}, glue, "l")


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


# ---------------------------------------------------------------------------------------------- parsers


def test_glue_run_recorded_on_fixture_standard_run_derives_dpu_seconds() -> None:
    result = _result()
    job_run = fixture("glue", "get_job_run_succeeded_standard.json")["JobRun"]
    record_glue_job_run(result, job_run, console_link="https://console/x")
    assert result.error is None
    assert result.external_run_id == job_run["Id"]
    assert result.driver_version == "4.0"
    assert result.timings["duration_s"] == 262
    assert result.timings["started_at"] == "2026-03-02T10:15:04.118000+00:00"
    assert result.resources_used["worker_type"] == "G.1X" and result.resources_used["number_of_workers"] == 10
    assert result.billing_inputs["dpu_seconds"] == 2620.0
    assert result.field_sources["billing_inputs.dpu_seconds"].startswith(
        "derived: NumberOfWorkers x DPU of WorkerType G.1X"
    )
    assert result.billing_inputs["execution_class"] == "STANDARD"
    assert result.details["execution_class"] == "STANDARD"
    assert result.unexplained_fields() == ["resources_requested"]  # execute() records it from the policy


def test_glue_run_recorded_on_fixture_flex_run_reports_dpu_seconds() -> None:
    result = _result()
    record_glue_job_run(
        result, fixture("glue", "get_job_run_succeeded_flex.json")["JobRun"], console_link=None
    )
    assert result.billing_inputs["dpu_seconds"] == 6211.5
    assert result.field_sources["billing_inputs.dpu_seconds"] == "GetJobRun DPUSeconds"
    assert result.details["execution_class"] == "FLEX"
    assert result.field_sources["console_link"].startswith("not reported by Glue")


def test_glue_dpu_seconds_falls_back_to_max_capacity_or_says_why() -> None:
    assert glue_dpu_seconds({"ExecutionTime": 10, "MaxCapacity": 2.0, "WorkerType": "Nope"})[0] == 20.0
    value, why = glue_dpu_seconds({"JobRunState": "RUNNING"})
    assert value is None and why.startswith("not reported by Glue")


def test_glue_run_recorded_on_fixture_failed_run_with_error_message() -> None:
    result = _result()
    record_glue_job_run(result, fixture("glue", "get_job_run_failed.json")["JobRun"], console_link=None)
    assert result.error == {
        "error_class": "GlueJobRun.FAILED",
        "message": "AnalysisException: Path does not exist: s3://orders-raw/day=2026-03-03",
    }
    assert result.billing_inputs["dpu_seconds"] == 196.0  # what was spent


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


# ----------------------------------------------------------------------------- execute() on a stub service


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def capped_policy(policy_file: PolicyFile) -> None:
    policy_file("version: 1\ntenants:\n  acme:\n    limits: {max_workers: 12}\n")


def _stub_hook(conn: Any, hook_class: type[AwsBaseHook]) -> AwsBaseHook:
    """The operator's own hook class over a stub boto3 client."""
    hook = hook_class(aws_conn_id=None, region_name="eu-west-1")
    hook.__dict__["conn"] = conn
    hook.__dict__["_client"] = SimpleNamespace(meta=SimpleNamespace(region_name="eu-west-1", partition="aws"))
    return hook


def _ti(op: Any, monkeypatch: pytest.MonkeyPatch) -> _TI:
    emitted: list[Any] = []
    monkeypatch.setattr(
        "barecount_provider.operators.base.get_emitter", lambda: SimpleNamespace(emit=emitted.extend)
    )
    return _TI(
        task=op,
        dag_id="d",
        run_id="r",
        task_id=op.task_id,
        try_number=1,
        map_index=-1,
        pushed={},
        emitted=emitted,
    )


def _glue_op(size: str) -> GlueRunnerOperator:
    from airflow.sdk import DAG

    with DAG("glue_fixture", schedule=None):
        return GlueRunnerOperator(
            task_id="transform",
            job_name="orders-transform",
            tenant="acme",
            size=size,
            script_args={"--day": "1"},
        )


def _fake_glue_execute(job_run: dict[str, Any], raises: Exception | None, seen: dict[str, Any]) -> Any:
    def execute(self: GlueJobOperator, context: Any) -> str:
        seen["arguments"] = self._build_script_args(context)
        seen["run_kwargs"] = dict(self.run_job_kwargs)
        self._job_run_id = job_run["Id"]
        if raises is not None:
            raise raises
        return job_run["Id"]

    return execute


def test_glue_execute_on_fixture_failed_run_fails_after_the_result_is_published(
    monkeypatch: pytest.MonkeyPatch, capped_policy: None
) -> None:
    job_run = fixture("glue", "get_job_run_failed.json")["JobRun"]
    seen: dict[str, Any] = {}
    upstream_error = AirflowException(f"Exiting Job {job_run['Id']} Run State: FAILED")
    monkeypatch.setattr(GlueJobOperator, "execute", _fake_glue_execute(job_run, upstream_error, seen))
    op = _glue_op("m")
    conn = SimpleNamespace(get_job_run=lambda **kwargs: {"JobRun": job_run})
    monkeypatch.setattr(GlueRunnerOperator, "hook", _stub_hook(conn, BareCountGlueJobHook))
    ti = _ti(op, monkeypatch)
    failed: list[Any] = []
    monkeypatch.setattr(op, "on_runner_failed", lambda context, result, event: failed.append(event))

    with pytest.raises(
        GlueJobRunFailed, match="'orders-transform' run jr_77e1.*AnalysisException: Path does not exist"
    ):
        op.execute({"ti": ti})
    assert seen["run_kwargs"] == {"WorkerType": "G.1X", "NumberOfWorkers": 10}
    assert seen["arguments"]["--day"] == "1" and seen["arguments"]["--barecount_run_token"]
    assert op.run_job_kwargs == {}  # the author's arguments are restored
    result = ti.pushed["runner_result"]
    assert result["error"]["error_class"] == "GlueJobRun.FAILED"
    assert result["resources_requested"] == {"worker_type": "G.1X", "number_of_workers": 10, "auto_scaling": False}
    assert result["console_link"].startswith(
        "https://console.aws.amazon.com/gluestudio/home?region=eu-west-1#/job/"
    )
    assert failed and failed[0]["job_run"]["Id"] == job_run["Id"]
    errors = [tags for name, _, _, tags in ti.emitted if name == "barecount.runner.errors"]
    assert errors and errors[0]["error_class"] == "GlueJobRun.FAILED"


def test_glue_policy_cap_on_workers_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capped_policy: None
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(GlueJobOperator, "execute", _fake_glue_execute({"Id": "x"}, None, seen))
    op = _glue_op("l")  # 20 G.2X workers; acme's max_workers is 12
    ti = _ti(op, monkeypatch)
    with pytest.raises(PolicyViolation, match="tenant 'acme': workers 20 exceeds max_workers 12") as caught:
        op.execute({"ti": ti})
    assert caught.value.policy_exception == {
        "rule": "max_workers",
        "tenant": "acme",
        "limit": 12,
        "requested": 20,
    }
    assert seen == {} and ti.pushed == {}


def _emr_op(size: str) -> EmrServerlessRunnerOperator:
    from airflow.sdk import DAG

    with DAG("emr_fixture", schedule=None):
        return EmrServerlessRunnerOperator(
            task_id="aggregate",
            application_id="00fk8d7j5q1r2s09",
            execution_role_arn="arn:aws:iam::123456789012:role/emr-serverless-job",
            job_driver={"sparkSubmit": {"entryPoint": "s3://orders-code/aggregate.py"}},
            tenant="acme",
            size=size,
        )


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


def test_operators_refuse_bad_sizes_and_force_synchronous_waiting() -> None:
    with pytest.raises(ValueError, match="size: 'huge' is not one of"):
        GlueRunnerOperator(task_id="g", job_name="j", size="huge")
    # the runner_result is read inside execute(): asking it to return earlier is a parse-time error
    for kwargs in ({"deferrable": True}, {"wait_for_completion": False}):
        with pytest.raises(ValueError, match=r"GlueRunnerOperator: wait_for_completion=.*expected True and False"):
            GlueRunnerOperator(task_id="g2", job_name="j", **kwargs)
    with pytest.raises(ValueError, match="EmrServerlessRunnerOperator: .*deferrable=True"):
        EmrServerlessRunnerOperator(
            task_id="e2", application_id="a", execution_role_arn="arn:aws:iam::1:role/r", job_driver={}, deferrable=True
        )
    op = GlueRunnerOperator(task_id="g3", job_name="j")
    assert (op.deferrable, op.wait_for_completion) == (False, True)
    emr = _emr_op("s")
    assert (emr.deferrable, emr.wait_for_completion) == (False, True)
    assert {"size", "pipeline", "network_profile"} <= set(GlueRunnerOperator.template_fields)
    assert {"size", "pipeline", "network_profile"} <= set(EmrServerlessRunnerOperator.template_fields)


def test_operators_can_be_mapped_with_the_barecount_arguments() -> None:
    from airflow.sdk import DAG

    with DAG("managed_etl_mapped", schedule=None):
        GlueRunnerOperator.partial(task_id="g", job_name="j", tenant="acme", size="s").expand(
            script_args=[{"--day": "1"}, {"--day": "2"}]
        )
        EmrServerlessRunnerOperator.partial(
            task_id="e", application_id="a", execution_role_arn="r", network_profile="vpn"
        ).expand(job_driver=[{"sparkSubmit": {"entryPoint": "s3://b/x.py"}}])
