"""GlueRunnerOperator (operators/glue.py): argument building, policy caps and the recording of what Glue
reports, on fixtures of the real response shapes.

moto 5.2.5's Glue runs never fail, always report ExecutionTime 123 and carry no DPUSeconds or ExecutionClass:
those paths are tested here on real-shape responses (tests/fixtures/glue/); the request path runs against moto
in tests/integration/test_managed_etl_runner.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider.hooks.glue import BareCountGlueJobHook
from barecount_provider.operators.base import PolicyViolation
from barecount_provider.operators.glue import (
    GlueJobRunFailed,
    GlueRunnerOperator,
    glue_dpu_seconds,
    glue_run_kwargs_for_size,
    glue_script_args_with_identity,
    record_glue_job_run,
)

from .test_managed_etl import IDENTITY, _result, _stub_hook, _ti, fixture

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


# ---------------------------------------------------------------------------------------------------- parsers


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


# -------------------------------------------------------------------------------- execute() on a stub service


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
