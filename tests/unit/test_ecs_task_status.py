"""EcsRunnerOperator's DescribeTasks parser, recording and RunTask overrides, on real-shape fixtures.

moto 5.2.5 leaves ECS containers PENDING with no digests, timestamps or stop code; the integration test
(tests/integration/test_ecs_runner.py) advances its backend itself. The fields a real ECS fills in are
tested here on DescribeTasks responses of the real wire shape (tests/fixtures/ecs/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from barecount_provider.hooks.ecs import BareCountEcsHook
from barecount_provider.operators.base import RunnerResult
from barecount_provider.operators.ecs import (
    EcsRunnerOperator,
    overrides_with_size_and_identity,
    parse_describe_tasks,
    parse_ecs_task,
    record_ecs_requested,
    record_ecs_run,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ecs"
SIZE_S = {"cpu": 512, "memory_mb": 1024}
IDENTITY = {"BARECOUNT_CORRELATION_ID": "bc-1", "BARECOUNT_RUN_TOKEN": "rt-1", "TRACEPARENT": "00-ab-cd-01"}


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _result() -> RunnerResult:
    return RunnerResult(runner_class="container", size="s", tenant="acme", pipeline="orders", network_profile="public")


def test_succeeded_fargate_task_is_parsed_on_fixture_describe_tasks_fargate_succeeded():
    run = parse_describe_tasks(_fixture("describe_tasks_fargate_succeeded.json"))
    assert run is not None
    assert (run.launch_type, run.cpu, run.memory, run.stop_code) == ("FARGATE", "512", "1024", "EssentialContainerExited")
    assert run.pull_started_at == "2025-11-27T10:40:08.431000+00:00"
    assert run.started_at is not None and run.stopped_at is not None
    assert [(c.name, c.exit_code) for c in run.containers] == [("app", 0), ("log-router", 0)]
    assert run.containers[0].image_digest.startswith("sha256:3f0a")
    assert run.error() is None
    assert run.console_link() == (
        "https://us-east-1.console.aws.amazon.com/ecs/v2/clusters/pipelines/tasks/"
        "7f3c9d2a1b8e4c6f9a0d1e2f3a4b5c6d/configuration?region=us-east-1"
    )


def test_recording_on_fixture_leaves_no_field_unexplained():
    result = _result()
    record_ecs_requested(result, SIZE_S, "s")
    record_ecs_run(result, parse_describe_tasks(_fixture("describe_tasks_fargate_succeeded.json")))
    assert result.unexplained_fields() == []
    assert result.resources_requested == {"cpu_units": 512, "memory_mb": 1024}
    assert (result.resources_used["cpu_units"], result.resources_used["memory_mb"]) == (512, 1024)
    assert result.timings["duration_s"] == 63.458  # stoppedAt - startedAt
    assert result.billing_inputs["runtime_s"] == 76.589  # stoppedAt - pullStartedAt
    assert result.digests["image_digest.log-router"].startswith("sha256:9e8d")
    assert result.digests["image_digest"] == result.digests["image_digest.app"]
    assert result.details["exit_code.app"] == 0 and result.details["stop_code"] == "EssentialContainerExited"
    assert result.external_run_id.endswith("/7f3c9d2a1b8e4c6f9a0d1e2f3a4b5c6d")
    assert result.field_sources["timings.pull_started_at"] == "ECS DescribeTasks tasks[].pullStartedAt"


def test_exit_code_1_is_an_error_naming_the_container_on_fixture_describe_tasks_fargate_failed_exit_1():
    run = parse_describe_tasks(_fixture("describe_tasks_fargate_failed_exit_1.json"))
    assert run is not None
    error = run.error()
    assert error is not None
    assert error[0] == "EcsTaskFailed.NonZeroExitCode"
    assert "container 'app' exited with code 1" in error[1] and "EssentialContainerExited" in error[1]
    result = _result()
    record_ecs_run(result, run)
    assert result.details["exit_code.app"] == 1
    assert result.timings["stopped_at"] and result.billing_inputs["runtime_s"] > 0  # what was spent


@pytest.mark.parametrize(
    ("stop_code", "exit_code", "expected"),
    [
        ("TaskFailedToStart", None, "EcsTaskFailed.TaskFailedToStart"),
        ("SpotInterruption", 0, "EcsTaskFailed.SpotInterruption"),
        ("EssentialContainerExited", None, "EcsTaskFailed.NoExitCode"),
        (None, None, "EcsTaskFailed.NoStopCode"),
    ],
)
def test_stop_codes_other_than_a_clean_exit_are_errors_on_fixture(
    stop_code: str | None, exit_code: int | None, expected: str
):
    task = _fixture("describe_tasks_fargate_succeeded.json")["tasks"][0]
    task["stopCode"] = stop_code
    for container in task["containers"]:
        container["exitCode"] = exit_code
    error = parse_ecs_task(task).error()
    assert error is not None and error[0] == expected


def test_nothing_described_is_recorded_as_absent_with_why():
    result = _result()
    record_ecs_requested(result, SIZE_S, "s")
    record_ecs_run(result, None, "RunTask started no task (EcsOperatorError)")
    assert result.unexplained_fields() == []
    assert "EcsOperatorError" in result.field_sources["external_run_id"]


def test_overrides_carry_size_and_identity_into_every_container_replacing_forged_values():
    author = {
        "taskRoleArn": "arn:aws:iam::123456789012:role/orders",
        "containerOverrides": [
            {
                "name": "app",
                "command": ["run"],
                "environment": [
                    {"name": "ORDERS_DAY", "value": "2026-11-27"},
                    {"name": "BARECOUNT_RUN_TOKEN", "value": "forged"},
                ],
            }
        ],
    }
    overrides = overrides_with_size_and_identity(author, SIZE_S, IDENTITY, ["app", "log-router"])
    assert (overrides["cpu"], overrides["memory"]) == ("512", "1024")
    assert overrides["taskRoleArn"] == author["taskRoleArn"]
    app, router = overrides["containerOverrides"]
    assert app["command"] == ["run"]
    assert app["environment"] == [
        {"name": "ORDERS_DAY", "value": "2026-11-27"},
        *({"name": k, "value": v} for k, v in IDENTITY.items()),
    ]
    assert router == {"name": "log-router", "environment": [{"name": k, "value": v} for k, v in IDENTITY.items()]}
    assert author["containerOverrides"][0]["environment"][1]["value"] == "forged"  # the author's dict untouched


def test_operator_refuses_deferrable_and_not_waiting():
    common = {"task_id": "t", "cluster": "c", "task_definition": "d", "size": "s"}
    with pytest.raises(ValueError, match="deferrable=True"):
        EcsRunnerOperator(deferrable=True, **common)
    with pytest.raises(ValueError, match="wait_for_completion=False"):
        EcsRunnerOperator(wait_for_completion=False, **common)
    operator = EcsRunnerOperator(launch_type="FARGATE", **common)
    assert operator.runner_class == "container" and operator.propagate_tags == "TASK_DEFINITION"
    assert {"size", "network_profile", "overrides"} <= set(operator.template_fields)


# ------------------------------------------------------------------------ execute() around a stub upstream


class _TI:
    def __init__(self, task: Any) -> None:
        self.task, self.dag_id, self.run_id, self.task_id = task, "d", "r", "transform"
        self.try_number, self.map_index, self.pushed = 1, -1, {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


class _FakeEcsClient:
    def __init__(self, describe: dict[str, Any]) -> None:
        self.describe = describe

    def describe_task_definition(self, taskDefinition: str) -> dict[str, Any]:
        return {"taskDefinition": {"containerDefinitions": [{"name": "app"}]}}

    def describe_tasks(self, cluster: str, tasks: list[str]) -> dict[str, Any]:
        return self.describe


def test_execute_on_fixture_failed_exit_1_publishes_then_fails_naming_the_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.amazon.aws.operators.ecs import EcsRunTaskOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException

    from barecount_provider.operators.ecs import EcsTaskFailed

    describe = _fixture("describe_tasks_fargate_failed_exit_1.json")
    sent: dict[str, Any] = {}

    def fake_execute(self: Any, context: Any) -> None:  # RunTask, the waiter, then the upstream's check
        sent.update(overrides=self.overrides, tags=self.tags)
        self.arn = describe["tasks"][0]["taskArn"]
        raise AirflowException("This task is not in success state {...}")

    monkeypatch.setattr(EcsRunTaskOperator, "execute", fake_execute)
    monkeypatch.setattr("barecount_provider.operators.base.get_emitter", lambda: type("E", (), {"emit": lambda self, points: None})())
    with DAG("ecs_fixture", schedule=None):
        op = EcsRunnerOperator(task_id="transform", cluster="pipelines", task_definition="orders", tenant="acme", pipeline="orders", size="s")
    hook = BareCountEcsHook(aws_conn_id=None, region_name="us-east-1")
    hook.__dict__["conn"] = _FakeEcsClient(describe)  # the boto3 client, stubbed under the real hook
    op.__dict__["hook"] = hook
    failed: list[Any] = []
    monkeypatch.setattr(op, "on_runner_failed", lambda context, result, event: failed.append(event))
    ti = _TI(op)
    with pytest.raises(EcsTaskFailed, match=r"container 'app' exited with code 1"):
        op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    assert result["error"]["error_class"] == "EcsTaskFailed.NonZeroExitCode"
    assert result["resources_used"]["cpu_units"] == 512 and result["timings"]["duration_s"] > 0
    assert failed and failed[0]["task"]["taskArn"] == describe["tasks"][0]["taskArn"]
    assert (sent["overrides"]["cpu"], sent["overrides"]["memory"]) == ("512", "1024")
    assert sent["tags"]["barecount.io/tenant"] == "acme"
