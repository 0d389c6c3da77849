"""The example runner DAGs on a real Airflow (api-server, scheduler, dag-processor, LocalExecutor, SQLite)
against the AWS emulator (tests/system/aws_emulator.py: moto in this process on 127.0.0.1).

The DAG files run unchanged with their defaults: the session's stack serves them from its copy of ``dags/``,
and the connection ``aws_default`` they use is created through the REST API for this module, pointing at the
emulator. Task processes reach moto over real HTTP; the checks read what moto received (its request
recorder), the ``runner_result`` XComs (REST API) and the EC2 hosts left on the emulator.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from .aws_emulator import DEFAULT_CONN_ID, AwsEmulator
from .stack import AirflowStack

pytestmark = pytest.mark.system

# dag_id -> {runner task: runner class}
RUNNER_DAGS = {
    "example_all_runners": {
        "ingest": "serverless",
        "transform": "managed_etl",
        "enrich": "container",
        "heavy_step": "dedicated",
    },
    "example_serverless": {"ingest": "serverless"},
    "example_managed_etl": {"transform": "managed_etl", "aggregate": "managed_etl"},
    "example_ecs": {"transform": "container"},
    "example_dedicated": {"heavy_step": "dedicated"},
}
ECS_TARGET = "AmazonEC2ContainerServiceV20141113"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEmulator]:
    with AwsEmulator() as emulator:
        emulator.start_recording()
        yield emulator
        emulator.stop_recording()


@pytest.fixture(scope="module")
def aws_connection(airflow_stack: AirflowStack, aws: AwsEmulator) -> Iterator[str]:
    """``aws_default`` in the stack's metadata DB, pointing at the emulator; deleted afterwards."""
    conn = aws.connection()
    airflow_stack.api("DELETE", f"connections/{DEFAULT_CONN_ID}", check=False)
    _api_retrying(
        airflow_stack,
        "POST",
        "connections",
        json={
            "connection_id": DEFAULT_CONN_ID,
            "conn_type": conn["conn_type"],
            "login": conn["login"],
            "password": conn["password"],
            "extra": json.dumps(conn["extra"]),
        },
    )
    yield DEFAULT_CONN_ID
    airflow_stack.api("DELETE", f"connections/{DEFAULT_CONN_ID}", check=False)


def _api_retrying(stack: AirflowStack, method: str, path: str, **kwargs: Any) -> Any:
    """SQLite: a write of the api-server can time out on the lock while the scheduler and the task processes
    write (HTTP 500 "Database error"); try again."""
    for attempt in range(5):
        resp = stack.api(method, path, check=False, **kwargs)
        if resp.status_code < 500 or attempt == 4:
            break
        time.sleep(1 + attempt)
    assert resp.status_code < 400, f"{method} {path} -> {resp.status_code}: {resp.text[:1000]}"
    return resp.json()


def _trigger_now(stack: AirflowStack, dag_id: str) -> str:
    """A run with logical date = now: the single-runner examples template ``{{ ds }}``."""
    logical_date = datetime.now(UTC).isoformat()
    run = _api_retrying(
        stack, "POST", f"dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": {}}
    )
    return str(run["dag_run_id"])


@pytest.fixture(scope="module")
def runs(airflow_stack: AirflowStack, aws_connection: str) -> dict[str, tuple[str, str]]:
    """Every runner DAG triggered at once; dag_id -> (run_id, final state)."""
    run_ids = {}
    for dag_id in RUNNER_DAGS:
        if airflow_stack.wait_for_dag(dag_id).get("is_paused"):
            _api_retrying(airflow_stack, "PATCH", f"dags/{dag_id}", json={"is_paused": False})
    for dag_id in RUNNER_DAGS:
        run_ids[dag_id] = _trigger_now(airflow_stack, dag_id)
    return {
        dag_id: (run_id, airflow_stack.wait_for_run(dag_id, run_id, timeout=240))
        for dag_id, run_id in run_ids.items()
    }


def _runner_result(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
    resp = stack.api(
        "GET",
        f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/runner_result",
        params={"deserialize": True, "stringify": False},
        check=False,
    )
    if resp.status_code != 200:
        return None
    value = resp.json()["value"]
    return json.loads(value) if isinstance(value, str) else dict(value)


def _correlation_id(stack: AirflowStack, run_id: str, timeout: float = 30) -> str:
    """The run's correlation id as BareCount recorded it (the stack has its own secret key)."""
    path = stack.home / "barecount" / "telemetry" / "events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                event = json.loads(line) if line.strip() else {}
                if event.get("run_id") == run_id and event.get("correlation_id"):
                    return str(event["correlation_id"])
        time.sleep(0.5)
    raise AssertionError(f"no BareCount record of run {run_id}")


def _body(request: dict[str, Any]) -> str:
    body = request.get("body") or ""
    return base64.b64decode(body).decode() if request.get("body_encoded") else str(body)


def _target(request: dict[str, Any]) -> str:
    return str({key.lower(): value for key, value in request["headers"].items()}.get("x-amz-target", ""))


def test_runner_dags_succeed_against_the_emulator(
    airflow_stack: AirflowStack, runs: dict[str, tuple[str, str]]
) -> None:
    failed = {
        dag_id: {ti["task_id"]: ti["state"] for ti in airflow_stack.task_instances(dag_id, run_id)}
        for dag_id, (run_id, state) in runs.items()
        if state != "success"
    }
    assert not failed, failed


def test_each_runner_task_pushed_its_runner_result(
    airflow_stack: AirflowStack, runs: dict[str, tuple[str, str]]
) -> None:
    for dag_id, tasks in RUNNER_DAGS.items():
        run_id, _ = runs[dag_id]
        for task_id, runner_class in tasks.items():
            result = _runner_result(airflow_stack, dag_id, run_id, task_id)
            assert result is not None, (dag_id, task_id)
            assert (result["runner_class"], result["tenant"], result["pipeline"]) == (
                runner_class,
                "acme",
                "orders",
            )
            assert result["external_run_id"] and result["error"] is None, (dag_id, task_id, result)


def test_identity_of_the_all_runners_run_reached_every_service(
    airflow_stack: AirflowStack, aws: AwsEmulator, runs: dict[str, tuple[str, str]]
) -> None:
    run_id, _ = runs["example_all_runners"]
    correlation_id = _correlation_id(airflow_stack, run_id)
    results = {
        task_id: _runner_result(airflow_stack, "example_all_runners", run_id, task_id)
        for task_id in RUNNER_DAGS["example_all_runners"]
    }
    requests = aws.recorded_requests()
    tokens: dict[str, str] = {}

    # Lambda: the identity in the client context, the run in the templated payload
    invokes = []
    for request in requests:
        if "/invocations" not in request["url"] or request["method"] != "POST":
            continue
        headers = {key.lower(): value for key, value in request["headers"].items()}
        custom = json.loads(base64.b64decode(headers["x-amz-client-context"]))["custom"]
        if custom["BARECOUNT_CORRELATION_ID"] == correlation_id:
            invokes.append((custom, json.loads(_body(request))))
    ((custom, event),) = invokes
    assert event["run_id"] == run_id and custom["TRACEPARENT"].startswith("00-")
    tokens["ingest"] = custom["BARECOUNT_RUN_TOKEN"]

    # Glue: the identity and the upstream Lambda request id as job arguments
    (arguments,) = [
        body["Arguments"]
        for body in (json.loads(_body(r)) for r in requests if _target(r) == "AWSGlue.StartJobRun")
        if body["Arguments"].get("--barecount_correlation_id") == correlation_id
    ]
    assert arguments["--ingest_request_id"] == results["ingest"]["external_run_id"]  # type: ignore[index]
    tokens["transform"] = arguments["--barecount_run_token"]

    # ECS: the identity and the upstream Glue run id in the container's environment
    envs = []
    for request in requests:
        if _target(request) != f"{ECS_TARGET}.RunTask":
            continue
        for override in json.loads(_body(request))["overrides"]["containerOverrides"]:
            env = {entry["name"]: entry["value"] for entry in override["environment"]}
            if env.get("BARECOUNT_CORRELATION_ID") == correlation_id:
                envs.append(env)
    (env,) = envs
    assert env["GLUE_RUN_ID"] == results["transform"]["external_run_id"]  # type: ignore[index]
    tokens["enrich"] = env["BARECOUNT_RUN_TOKEN"]

    # Dedicated: the identity exported before the author's commands, the upstream ECS task ARN in them
    (commands,) = [
        body["Parameters"]["commands"]
        for body in (json.loads(_body(r)) for r in requests if _target(r) == "AmazonSSM.SendCommand")
        if body["Parameters"]["commands"][0] == f"export BARECOUNT_CORRELATION_ID={correlation_id}"
    ]
    assert commands[1].startswith("export BARECOUNT_RUN_TOKEN=")
    tokens["heavy_step"] = commands[1].split("=", 1)[1]
    assert any(results["enrich"]["external_run_id"] in line for line in commands[3:])  # type: ignore[index]

    # one run token per task try, none empty
    assert all(tokens.values()) and len(set(tokens.values())) == 4, tokens


def test_no_dedicated_host_is_left_running(aws: AwsEmulator, runs: dict[str, tuple[str, str]]) -> None:
    hosts = aws.instances(**{"barecount:managed": "true"})
    run_ids = {
        tag["Value"] for host in hosts for tag in host.get("Tags", []) if tag["Key"] == "barecount:run_id"
    }
    assert {runs["example_all_runners"][0], runs["example_dedicated"][0]} <= run_ids
    assert {
        host["InstanceId"]: host["State"]["Name"] for host in hosts if host["State"]["Name"] != "terminated"
    } == {}


def test_each_runner_run_is_sealed_into_a_valid_complete_evidence_record(
    airflow_stack: AirflowStack, runs: dict[str, tuple[str, str]]
) -> None:
    """The scheduler side seals every example run's record; each runner try's entry carries its
    runner_result, its cost and the policy rules it passed; the chain verifies."""
    import jsonschema

    from .test_evidence_real_run import SCHEMA, _cli, _wait_for_record

    for dag_id, tasks in RUNNER_DAGS.items():
        run_id, _ = runs[dag_id]
        record = _wait_for_record(airflow_stack, run_id, dag_id=dag_id)
        jsonschema.Draft202012Validator(SCHEMA).validate(record)
        assert record["complete"] is True, (dag_id, record["absent"])
        entries = {entry["context"]["task_id"]: entry for entry in record["entries"]}
        for task_id, runner_class in tasks.items():
            entry = entries[task_id]
            assert entry["source"] == "task" and entry["runner_result"]["runner_class"] == runner_class
            assert entry["cost"] is not None and entry["cost"]["basis"] == "list-price estimate"
            assert any(v["rule"] == "max_size" and v["outcome"] == "passed" for v in entry["policy"]["validations"])
    verified = _cli(airflow_stack, "evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
