"""The approval gate inside ReplayOperator on a real run (tests/system/dags/replay_gate_dag.py, tenant `ops`,
threshold 100 records): without ReplayApprovalSensor a replay of 150 records is refused and delivers nothing;
with the sensor answered Approve through the REST API, the sensor's task process puts the approval on record
and the replay's task process finds it and delivers the 150."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from barecount_provider.recovery.letters import Scope, make_letter
from barecount_provider.recovery.segments import LocalSegments, SegmentBackend

from .stack import AirflowStack

pytestmark = pytest.mark.system

RECORDS = 150


def _queue(path: Path, n: int = RECORDS) -> SegmentBackend:
    queue = SegmentBackend(LocalSegments(str(path)), "local")
    queue.put([
        make_letter({"n": i}, tenant="ops", pipeline="orders-replay", error=ValueError("v"), idempotency_key=f"gate-{i:04d}")
        for i in range(n)
    ])
    return queue


def _waiting(queue: SegmentBackend) -> int:
    return sum(1 for _ in queue.scan(Scope()))


def _states(stack: AirflowStack, dag_id: str, run_id: str) -> dict[str, str | None]:
    return {ti["task_id"]: ti["state"] for ti in stack.task_instances(dag_id, run_id)}


def _xcom(stack: AirflowStack, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
    resp = stack.api("GET", path, check=False)
    return resp.json()["value"] if resp.status_code == 200 else None


@pytest.fixture(scope="module")
def ready(airflow_stack: AirflowStack) -> AirflowStack:
    for dag_id in ("replay_gate", "replay_gate_ungated"):
        airflow_stack.wait_for_dag(dag_id)
        airflow_stack.unpause(dag_id)
    return airflow_stack


def test_a_replay_over_the_threshold_without_the_sensor_is_refused_on_a_real_run(ready, tmp_path) -> None:
    queue = _queue(tmp_path / "dlq")
    run_id = ready.trigger("replay_gate_ungated", conf={"dlq": str(tmp_path / "dlq")})
    assert ready.wait_for_run("replay_gate_ungated", run_id, timeout=180) == "failed"
    assert _states(ready, "replay_gate_ungated", run_id)["replay"] == "failed"
    log = ready.task_log_path("replay_gate_ungated", run_id, "replay").read_text()
    assert "reaches the approval threshold of tenant 'ops' (100 records in " in log, log[-3000:]
    assert "no approved plan was given" in log
    assert _xcom(ready, "replay_gate_ungated", run_id, "replay", "replay_outcome") is None
    assert _waiting(queue) == RECORDS  # nothing delivered, nothing removed


def test_a_replay_approved_through_the_sensor_delivers_on_a_real_run(ready, tmp_path) -> None:
    queue = _queue(tmp_path / "dlq")
    run_id = ready.trigger("replay_gate", conf={"dlq": str(tmp_path / "dlq")})
    deadline = time.monotonic() + 180
    while _states(ready, "replay_gate", run_id).get("approve") != "awaiting_input":
        assert time.monotonic() < deadline, _states(ready, "replay_gate", run_id)
        time.sleep(0.5)
    time.sleep(3)  # a person answers after a moment (see test_replay_approval_real_run._answer)
    path = f"dags/replay_gate/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails"
    ready.api("PATCH", path, json={"chosen_options": ["Approve"]})
    assert ready.wait_for_run("replay_gate", run_id, timeout=180) == "success"
    outcome = _xcom(ready, "replay_gate", run_id, "replay", "replay_outcome")
    plan = _xcom(ready, "replay_gate", run_id, "plan", "replay_plan")
    assert outcome["delivered"] == RECORDS and plan["records"] == RECORDS and plan["needs_approval"] is True
    assert outcome["approval"]["approver"] == "admin" and outcome["approval"]["plan_id"] == plan["plan_id"]
    assert _waiting(queue) == 0
