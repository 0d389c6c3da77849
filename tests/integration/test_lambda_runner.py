"""LambdaRunnerOperator against moto in server mode on 127.0.0.1, run by ``dag.test()`` (a real task context,
the real upstream LambdaHook and boto3, real HTTP). moto's simple Lambda backend echoes the event and sends
no LogResult: the REPORT path is covered on fixtures in tests/unit/test_lambda_report.py."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import context
from barecount_provider.operators.lambda_function import LambdaRunnerOperator

from ..conftest import PolicyFile
from .conftest import MOTO_CONN_ID, MotoServer

pytestmark = pytest.mark.integration

FUNCTION = "barecount-echo"
HANDLER_SOURCE = "def handler(event, context):\n    return event\n"


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HANDLER_SOURCE)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def echo_function(moto_server: MotoServer) -> str:
    iam = moto_server.client("iam")
    role = iam.create_role(
        RoleName="barecount-lambda",
        AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        ),
    )["Role"]["Arn"]
    moto_server.client("lambda").create_function(
        FunctionName=FUNCTION,
        Runtime="python3.11",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": _zip()},
        MemorySize=512,
        Architectures=["arm64"],
        Publish=True,
    )
    return FUNCTION


@pytest.fixture
def acme_policy(policy_file: PolicyFile) -> None:
    policy_file("version: 1\ntenants:\n  acme:\n    max_size: s\n")


def _invocations(moto_server: MotoServer) -> list[dict[str, Any]]:
    return [
        request
        for request in moto_server.recorded_requests()
        if f"/functions/{FUNCTION}/invocations" in request["url"] and request["method"] == "POST"
    ]


def _example_module() -> Any:
    """dags/example_serverless.py, loaded by path (dags/ is not a package); the same file is in the suite's
    dags folder, which dag.test() serializes the DAG from."""
    path = Path(__file__).resolve().parents[2] / "dags" / "example_serverless.py"
    spec = importlib.util.spec_from_file_location("barecount_example_serverless", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(size: str) -> tuple[Any, dict[str, Any] | None]:
    """Run the example DAG (the runner, then a downstream task reading runner_result) with dag.test()."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = _example_module().build_dag(aws_conn_id=MOTO_CONN_ID, function_name=FUNCTION, size=size)
    run = dag.test()
    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, key="runner_result", dag_ids=dag.dag_id, task_ids="ingest")
        ).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    return run, result


def test_lambda_runner_carries_identity_and_records_runner_result(
    moto_server: MotoServer, airflow_db: None, echo_function: str, acme_policy: None
) -> None:
    moto_server.start_recording()
    run, result = _run_example("s")
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    correlation_id = context.correlation_id_for("example_serverless", run.run_id)
    run_token = context.run_token_for("example_serverless", run.run_id, "ingest", -1, 1)
    (request,) = _invocations(moto_server)
    headers = {key.lower(): value for key, value in request["headers"].items()}
    assert headers["x-amz-log-type"] == "Tail"
    custom = json.loads(base64.b64decode(headers["x-amz-client-context"]))["custom"]
    assert custom["BARECOUNT_CORRELATION_ID"] == correlation_id
    assert custom["BARECOUNT_RUN_TOKEN"] == run_token
    assert custom["TRACEPARENT"].startswith("00-")  # the listener's span, exported before execute()
    body = base64.b64decode(request["body"]) if request.get("body_encoded") else request["body"].encode()
    event = json.loads(body)
    assert event["source"] == "orders" and event["run_id"] == run.run_id  # templated, then identity added
    assert event["barecount"] == custom

    assert result is not None
    assert (result["runner_class"], result["size"], result["tenant"], result["pipeline"]) == (
        "serverless", "s", "acme", "orders",
    )
    assert result["resources_requested"] == {"memory_mb": 512, "ephemeral_storage_mb": 512}
    assert result["resources_used"]["memory_size_mb"] == 512
    assert result["resources_used"]["architecture"] == "arm64"
    assert result["driver_version"] == "python3.11"
    assert result["digests"]["code_sha256"]
    assert result["details"]["status_code"] == 200
    assert result["external_run_id"]
    assert result["error"] is None
    # moto sends no LogResult: said plainly, never left silently empty
    for path in ("timings.duration_s", "timings.billed_duration_s", "resources_used.max_memory_used_mb"):
        assert result["field_sources"][path].startswith("not reported by the emulator/service: no LogResult")
    assert result["timings"]["wall_duration_s"] >= 0

    # The operator extra link: Airflow evaluated it when the try ended and kept the URL for the UI / REST API
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=run.run_id, key="_link_RunnerConsoleLink", dag_ids="example_serverless", task_ids="ingest"
            )
        ).first()
        assert row is not None
        assert XComModel.deserialize_value(row) == result["console_link"]
    assert result["console_link"].startswith(f"https://us-east-1.console.aws.amazon.com/lambda/home?region=us-east-1#/functions/{FUNCTION}")


def test_policy_cap_fails_the_task_before_invoking(
    moto_server: MotoServer, airflow_db: None, echo_function: str, acme_policy: None
) -> None:
    moto_server.start_recording()
    run, result = _run_example("l")  # acme's max_size is s
    assert run.state == "failed"
    assert _invocations(moto_server) == []
    assert result is None  # nothing was spent, nothing recorded
    ti = run.get_task_instance("ingest")
    assert ti is not None and ti.state == "failed"
    assert ti.try_number == 1  # PolicyViolation is an AirflowFailException: no retry


def test_operator_runs_against_moto_with_its_own_size_memory(moto_server: MotoServer, echo_function: str) -> None:
    """The function's configuration as moto reports it, read through the upstream hook."""
    op = LambdaRunnerOperator(task_id="x", function_name=FUNCTION, aws_conn_id=MOTO_CONN_ID)
    assert op.hook.conn.get_function_configuration(FunctionName=FUNCTION)["MemorySize"] == 512


def test_policy_selects_the_alias_of_the_profile_and_size_and_concurrency_is_recorded(
    moto_server: MotoServer, airflow_db: None, echo_function: str, policy_file: PolicyFile
) -> None:
    """The policy's runner_targets.lambda picks the alias for (public, s); the invocation goes to that alias;
    the function's reserved concurrency is read back. moto has no provisioned concurrency API: recorded as
    absent, with the reason."""
    client = moto_server.client("lambda")
    version = client.publish_version(FunctionName=FUNCTION)["Version"]
    client.create_alias(FunctionName=FUNCTION, Name="small", FunctionVersion=version)
    client.put_function_concurrency(FunctionName=FUNCTION, ReservedConcurrentExecutions=7)
    policy_file(
        "version: 1\ntenants:\n  acme:\n    max_size: s\n    runner_targets:\n"
        f"      lambda:\n        {FUNCTION}: {{public/s: small, '*': live}}\n"
    )
    try:
        moto_server.start_recording()
        run, result = _run_example("s")
    finally:
        client.delete_function_concurrency(FunctionName=FUNCTION)
    assert run.state == "success"
    (request,) = _invocations(moto_server)
    assert "Qualifier=small" in request["url"]
    assert result is not None
    assert result["details"]["qualifier"] == "small"
    assert result["field_sources"]["details.qualifier"] == f"policy runner_targets.lambda.{FUNCTION}.public/s"
    assert result["details"]["reserved_concurrency"] == 7
    assert "details.provisioned_concurrency" in result["field_sources"]
