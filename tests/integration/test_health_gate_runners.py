"""Runner operators register healthy before they launch, on moto in server mode on 127.0.0.1: a profile whose
health URL is down (a closed port on 127.0.0.1) refuses the Lambda and the Glue runner before anything is
invoked or started (moto's request recorder and its job runs show nothing), naming the dependency; the
runner target itself (the function, the job) is checked against moto; what was checked goes to the try's
evidence entry and, as each dependency's last result, to BareCount's database."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG

from barecount_provider import context
from barecount_provider.health import records
from barecount_provider.operators.base import DependencyUnhealthy
from barecount_provider.operators.glue import GlueRunnerOperator
from barecount_provider.operators.lambda_function import LambdaRunnerOperator
from barecount_provider.runtime import entries

from ..conftest import PolicyFile
from ..unit.test_health_trigger import Listener, _free_port
from .conftest import MOTO_CONN_ID, REGION, MotoServer

pytestmark = pytest.mark.integration

FUNCTION = "barecount-gate-echo"
GLUE_JOB = "barecount-gate-etl"
DAG_ID = "health_gate_runners"


@pytest.fixture(scope="module")
def targets(moto_server: MotoServer) -> None:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com", "glue.amazonaws.com"]}, "Action": "sts:AssumeRole"}
        ],
    }
    role = moto_server.client("iam").create_role(
        RoleName="barecount-gate", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return event\n")
    moto_server.client("lambda").create_function(
        FunctionName=FUNCTION, Runtime="python3.11", Role=role, Handler="app.handler",
        Code={"ZipFile": buffer.getvalue()}, MemorySize=512, Publish=True,
    )  # fmt: skip
    moto_server.client("glue").create_job(
        Name=GLUE_JOB, Role=role, Command={"Name": "glueetl", "ScriptLocation": "s3://barecount-gate/etl.py"},
        GlueVersion="4.0", WorkerType="G.1X", NumberOfWorkers=2,
    )  # fmt: skip


def _policy(policy_file: PolicyFile, url: str) -> None:
    policy_file(
        "version: 1\n"
        "tenants:\n"
        "  acme:\n"
        "    max_size: s\n"
        "    network_profiles:\n"
        "      vpn:\n"
        "        dependencies:\n"
        f'          health_urls: ["{url}"]\n'
        "          require_healthy: true\n"
    )


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _run(op: Any) -> Any:
    ti = _TI(task=op, dag_id=DAG_ID, run_id="r1", task_id=op.task_id, try_number=1, map_index=-1, pushed={})
    return op.execute({"ti": ti})


def _lambda(function_name: str = FUNCTION) -> LambdaRunnerOperator:
    with DAG(DAG_ID, schedule=None):
        return LambdaRunnerOperator(
            task_id="ingest", function_name=function_name, tenant="acme", network_profile="vpn", size="s",
            payload=json.dumps({"order": 1}), aws_conn_id=MOTO_CONN_ID, region_name=REGION,
        )  # fmt: skip


def _glue() -> GlueRunnerOperator:
    with DAG(DAG_ID, schedule=None):
        return GlueRunnerOperator(
            task_id="transform", job_name=GLUE_JOB, tenant="acme", network_profile="vpn", size="s",
            aws_conn_id=MOTO_CONN_ID, region_name=REGION, job_poll_interval=0,
        )  # fmt: skip


def _invocations(moto_server: MotoServer, function_name: str = FUNCTION) -> list[dict[str, Any]]:
    return [
        request
        for request in moto_server.recorded_requests()
        if f"/functions/{function_name}/invocations" in request["url"] and request["method"] == "POST"
    ]


def _glue_starts(moto_server: MotoServer) -> list[dict[str, Any]]:
    return [
        request
        for request in moto_server.recorded_requests()
        if {key.lower(): value for key, value in request["headers"].items()}.get("x-amz-target") == "AWSGlue.StartJobRun"
    ]


def _by_kind(results: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    assert results is not None
    return {result["dependency"]["kind"]: result for result in results}


def test_a_lambda_runner_whose_profile_is_down_invokes_nothing(
    moto_server: MotoServer, targets: None, policy_file: PolicyFile, index_url: str
) -> None:
    closed = f"tcp://127.0.0.1:{_free_port()}"
    _policy(policy_file, closed)
    moto_server.start_recording()
    op = _lambda()
    with pytest.raises(DependencyUnhealthy) as raised:
        _run(op)
    message = str(raised.value)
    assert f"url {closed!r} (tenant acme, network profile vpn) is unhealthy, error_code refused" in message
    assert _invocations(moto_server) == []  # nothing invoked, nothing billed
    checked = _by_kind(op.barecount_health)
    assert checked["url"]["error_code"] == "refused"
    assert checked["lambda_function"]["status"] == "healthy"  # the target itself is ready, on moto
    assert checked["lambda_function"]["dependency"]["id"] == FUNCTION
    # the last results, in BareCount's database
    stored = _by_kind(records.latest_results(["acme"]))
    assert stored["url"]["status"] == "unhealthy" and stored["lambda_function"]["status"] == "healthy"


def test_a_glue_runner_whose_profile_is_down_starts_no_run(
    moto_server: MotoServer, targets: None, policy_file: PolicyFile, index_url: str
) -> None:
    _policy(policy_file, f"tcp://127.0.0.1:{_free_port()}")
    moto_server.start_recording()
    op = _glue()
    with pytest.raises(DependencyUnhealthy, match="GlueRunnerOperator transform: not launched: .*error_code refused"):
        _run(op)
    assert _glue_starts(moto_server) == []
    assert moto_server.client("glue").get_job_runs(JobName=GLUE_JOB)["JobRuns"] == []
    assert _by_kind(op.barecount_health)["glue_job"]["status"] == "healthy"


def test_a_missing_runner_target_refuses_as_not_found(
    moto_server: MotoServer, targets: None, policy_file: PolicyFile, index_url: str
) -> None:
    server = Listener()
    try:
        _policy(policy_file, f"tcp://127.0.0.1:{server.port}")
        moto_server.start_recording()
        op = _lambda("barecount-gate-missing")
        with pytest.raises(DependencyUnhealthy, match="lambda_function 'barecount-gate-missing'.* error_code not_found"):
            _run(op)
    finally:
        server.close()
    assert _invocations(moto_server, "barecount-gate-missing") == []
    assert _by_kind(op.barecount_health)["url"]["status"] == "healthy"


def test_a_healthy_profile_and_target_let_the_lambda_runner_invoke(
    moto_server: MotoServer, targets: None, policy_file: PolicyFile, index_url: str
) -> None:
    server = Listener()
    try:
        _policy(policy_file, f"tcp://127.0.0.1:{server.port}")
        moto_server.start_recording()
        op = _lambda()
        _run(op)
    finally:
        server.close()
    assert len(_invocations(moto_server)) == 1
    assert {kind: result["status"] for kind, result in _by_kind(op.barecount_health).items()} == {
        "url": "healthy", "lambda_function": "healthy",
    }  # fmt: skip


def test_the_refused_try_s_evidence_entry_carries_what_was_checked(
    moto_server: MotoServer, targets: None, policy_file: PolicyFile, index_url: str
) -> None:
    _policy(policy_file, f"tcp://127.0.0.1:{_free_port()}")
    op = _lambda()
    with pytest.raises(DependencyUnhealthy) as raised:
        _run(op)
    ctx = context.RunContext(
        tenant="acme", pipeline="orders", runner_class="serverless", size="s", network_profile="vpn", dag_id=DAG_ID,
        run_id="r1", task_id="ingest", try_number=1, map_index=-1, correlation_id="c" * 32, run_token="t" * 40,
    )  # fmt: skip
    ti = SimpleNamespace(task=op, queued_dttm=None, hostname="worker-1")
    now = datetime.now(UTC)
    facts = entries.try_facts(
        ctx, ti, state="failed", started_at=now, ended_at=now, duration_s=0.0, metrics={}, trace=None,
        error={"error_class": type(raised.value).__name__, "message": str(raised.value)},
    )  # fmt: skip
    entry = entries.entry_of(facts)
    assert entry["health"] == op.barecount_health
    assert {result["dependency"]["kind"] for result in entry["health"]} == {"url", "lambda_function"}
    assert entry["runner_result"] is None  # nothing ran
