"""dags/example_all_runners.py run by ``dag.test()`` against the AWS emulator of the system tests
(tests/system/aws_emulator.py: moto in this process on 127.0.0.1, seeded with the DAG's default resources,
ECS tasks driven to STOPPED by a thread, SSM DescribeInstanceInformation added). Real upstream operators,
hooks and waiters, boto3, real HTTP; one DAG run uses all four runner classes and hands each runner_result on.
"""

from __future__ import annotations

import base64
import importlib.util
import inspect
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import context
from tests.system.aws_emulator import AwsEmulator, ExampleResources

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"
CONN_ID = "aws_all_runners_emulator"
DAG_ID = "example_all_runners"
RUNNER_TASKS = {
    "ingest": "serverless",
    "transform": "managed_etl",
    "enrich": "container",
    "heavy_step": "dedicated",
}


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"barecount_{name}", DAGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def emulator() -> Iterator[AwsEmulator]:
    variable = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    with AwsEmulator() as aws:
        saved = os.environ.get(variable)
        os.environ[variable] = aws.connection_env(CONN_ID)[variable]
        try:
            yield aws
        finally:
            if saved is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = saved


def _body(request: dict[str, Any]) -> str:
    body = request.get("body") or ""
    return base64.b64decode(body).decode() if request.get("body_encoded") else str(body)


def _target(request: dict[str, Any]) -> str:
    return str({key.lower(): value for key, value in request["headers"].items()}.get("x-amz-target", ""))


def test_example_dag_defaults_name_the_emulator_resources() -> None:
    """The emulator seeds what the example DAGs name by default: keep both in step."""
    r = ExampleResources()
    expected = {
        "example_serverless": {"function_name": r.function_name, "aws_conn_id": "aws_default"},
        "example_managed_etl": {
            "glue_job_name": r.glue_job_name,
            "emr_application_id": r.emr_application_id,
            "execution_role_arn": r.emr_execution_role_arn,
        },
        "example_ecs": {"cluster": r.ecs_cluster, "task_definition": r.ecs_task_definition},
        "example_dedicated": {"image_id": r.image_id, "iam_instance_profile": r.iam_instance_profile},
        "example_all_runners": {
            "aws_conn_id": "aws_default",
            "function_name": r.function_name,
            "glue_job_name": r.glue_job_name,
            "ecs_cluster": r.ecs_cluster,
            "ecs_task_definition": r.ecs_task_definition,
            "image_id": r.image_id,
            "iam_instance_profile": r.iam_instance_profile,
        },
    }
    for name, defaults in expected.items():
        parameters = inspect.signature(_module(name).build_dag).parameters
        assert {key: parameters[key].default for key in defaults} == defaults, name


def test_all_runner_classes_in_one_run_hand_their_results_on(emulator: AwsEmulator, airflow_db: None) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    emulator.start_recording()
    dag = _module(DAG_ID).build_dag(aws_conn_id=CONN_ID, poll_interval_s=1)
    run = dag.test()
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    results: dict[str, Any] = {}
    with create_session() as session:
        for task_id in [*RUNNER_TASKS, "report"]:
            key = "return_value" if task_id == "report" else "runner_result"
            row = session.scalars(
                XComModel.get_many(run_id=run.run_id, key=key, dag_ids=DAG_ID, task_ids=task_id)
            ).first()
            results[task_id] = XComModel.deserialize_value(row) if row is not None else None
    requests = emulator.recorded_requests()
    emulator.stop_recording()

    for task_id, runner_class in RUNNER_TASKS.items():
        result = results[task_id]
        assert result is not None, task_id
        assert (result["runner_class"], result["tenant"], result["pipeline"]) == (
            runner_class,
            "acme",
            "orders",
        )
        assert result["error"] is None and result["external_run_id"], (task_id, result)
    assert {task_id: r["runner_class"] for task_id, r in results["report"].items()} == RUNNER_TASKS

    correlation_id = context.correlation_id_for(DAG_ID, run.run_id)

    def token(task_id: str) -> str:
        return context.run_token_for(DAG_ID, run.run_id, task_id, -1, 1)

    # Lambda: the identity in the client context
    (invoke,) = [r for r in requests if "/invocations" in r["url"] and r["method"] == "POST"]
    headers = {key.lower(): value for key, value in invoke["headers"].items()}
    custom = json.loads(base64.b64decode(headers["x-amz-client-context"]))["custom"]
    assert (custom["BARECOUNT_CORRELATION_ID"], custom["BARECOUNT_RUN_TOKEN"]) == (
        correlation_id,
        token("ingest"),
    )

    # Glue: the identity and the Lambda request id as job arguments
    (glue_start,) = [json.loads(_body(r)) for r in requests if _target(r) == "AWSGlue.StartJobRun"]
    arguments = glue_start["Arguments"]
    assert arguments["--barecount_correlation_id"] == correlation_id
    assert arguments["--ingest_request_id"] == results["ingest"]["external_run_id"]
    assert len([r for r in requests if _target(r) == "AWSGlue.GetJobRun"]) >= 2  # through RUNNING

    # ECS: the identity and the Glue run id in the container's environment
    (run_task,) = [
        json.loads(_body(r)) for r in requests if _target(r) == "AmazonEC2ContainerServiceV20141113.RunTask"
    ]
    (app,) = run_task["overrides"]["containerOverrides"]
    env = {entry["name"]: entry["value"] for entry in app["environment"]}
    assert env["BARECOUNT_CORRELATION_ID"] == correlation_id and env["BARECOUNT_RUN_TOKEN"] == token("enrich")
    assert env["GLUE_RUN_ID"] == results["transform"]["external_run_id"]
    assert results["enrich"]["details"]["exit_code.app"] == 0

    # Dedicated: the identity and the ECS task ARN in the commands; the SSM-agent readiness check ran
    (send,) = [json.loads(_body(r)) for r in requests if _target(r) == "AmazonSSM.SendCommand"]
    commands = send["Parameters"]["commands"]
    assert commands[0] == f"export BARECOUNT_CORRELATION_ID={correlation_id}"
    assert commands[1] == f"export BARECOUNT_RUN_TOKEN={token('heavy_step')}"
    assert results["enrich"]["external_run_id"] in shlex.join(commands)
    assert [r for r in requests if _target(r) == "AmazonSSM.DescribeInstanceInformation"]
    (command,) = emulator.client("ssm").list_commands(CommandId=results["heavy_step"]["external_run_id"])[
        "Commands"
    ]
    assert sorted(command["InstanceIds"]) == sorted(send["InstanceIds"])  # its own hosts only
    hosts = emulator.instances(**{"barecount:run_id": run.run_id})
    assert hosts and {host["State"]["Name"] for host in hosts} == {"terminated"}
    assert sorted(h["InstanceId"] for h in hosts) == sorted(
        results["heavy_step"]["resources_used"]["instance_ids"]
    )


def test_the_run_writes_a_valid_complete_evidence_record_with_cost(
    emulator: AwsEmulator, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dag.test() runs every task in this process: each try writes its entry at its end; the run is then
    sealed as the scheduler side does it (dag.test has no scheduler: `barecount evidence seal` does the same)."""
    import jsonschema

    from barecount_provider import config
    from barecount_provider.evidence import store as evidence_store
    from barecount_provider.runtime import sealing as evidence

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    evidence_store.clear_caches()
    evidence.clear_caches()
    dag = _module(DAG_ID).build_dag(aws_conn_id=CONN_ID, poll_interval_s=1)
    run = dag.test()
    assert run.state == "success"
    record = evidence.seal_run(DAG_ID, run.run_id, grace_seconds=0)
    assert record is not None
    schema = json.loads((DAGS.parent / "docs" / "evidence.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(record)
    assert record["complete"] is True and record["absent"] == []
    assert (record["tenant"], record["pipeline"], record["state"]) == ("acme", "orders", "success")
    by_task = {entry["context"]["task_id"]: entry for entry in record["entries"]}
    assert set(by_task) == {*RUNNER_TASKS, "report"}
    for task_id, runner_class in RUNNER_TASKS.items():
        entry = by_task[task_id]
        assert entry["source"] == "task" and entry["context"]["runner_class"] == runner_class
        assert entry["runner_result"]["runner_class"] == runner_class
        assert entry["cost"]["basis"] == "list-price estimate", entry["cost"]
        assert {v["rule"] for v in entry["policy"]["validations"]} >= {"allowed_runner_classes", "max_size"}
    # Glue: DPU-seconds derived from moto's ExecutionTime and the size's workers, priced
    assert by_task["transform"]["cost"]["total_usd"] > 0
    # Lambda: moto sends no REPORT line, so no billed duration: the cost is unknown, never 0, and says why
    assert by_task["ingest"]["cost"]["total_usd"] is None
    assert any("billed" in reason.lower() for reason in by_task["ingest"]["cost"]["missing"])
    assert record["cost"]["complete"] is False and "ingest#1" in record["cost"]["unknown"]
    assert record["cost"]["total_usd"] >= by_task["transform"]["cost"]["total_usd"]  # the known part
    assert record["correlation_id"] == context.correlation_id_for(DAG_ID, run.run_id)
    store = evidence_store.open_store()
    assert store.verify("acme") == {"acme": []}
    assert store.get(record["record_id"]) == record

    # `barecount evidence seal` on the same run: already sealed, the record is left as it is (stored once)
    from barecount_provider import cli

    capsys_out = _run_cli(cli, ["evidence", "seal", "--dag", DAG_ID, "--run", run.run_id, "--json"])
    (sealed,) = json.loads(capsys_out)
    assert (sealed["record_id"], sealed["sequence"]) == (record["record_id"], record["chain"]["sequence"])
    assert store.list_records(evidence_store.RecordFilter(dag_id=DAG_ID))[1] == 1


def _run_cli(cli: Any, argv: list[str]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(argv) == 0
    return buffer.getvalue()
