"""Governance approval of a large replay on a real run: the approval task waits in Airflow 3.3's
awaiting_input state; approve, reject and time out (the policy's default, applied by the scheduler) are
answered through the REST API; a replay below the threshold runs without waiting; the decision goes to XCom
and into the try's evidence entry."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest

from .stack import AirflowStack
from .test_evidence_real_run import _wait_for_record

pytestmark = pytest.mark.system

DAG_ID = "replay_approval"


QUICK_DAG_ID = "replay_approval_quick"  # tenant ops-quick: 5 s to answer


def _trigger(stack: AirflowStack, records: int, dag_id: str = DAG_ID) -> str:
    resp = stack.api("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {"records": records}})
    return str(resp.json()["dag_run_id"])


def _states(stack: AirflowStack, run_id: str, dag_id: str = DAG_ID) -> dict[str, str | None]:
    return {ti["task_id"]: ti["state"] for ti in stack.task_instances(dag_id, run_id)}


def _wait_for_task_state(
    stack: AirflowStack, run_id: str, task_id: str, state: str, timeout: float = 120, dag_id: str = DAG_ID
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _states(stack, run_id, dag_id).get(task_id) == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"{task_id} never reached {state}: {_states(stack, run_id, dag_id)}")


def _answer(stack: AirflowStack, run_id: str, option: str) -> dict[str, Any]:
    # Airflow 3.3 race: an answer within a fraction of a second of the park resumes the task before the
    # scheduler has processed the parked process's exit, which it then reads as a failed try. A person
    # takes longer than that; the test waits a few seconds like one.
    time.sleep(3)
    path = f"dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails"
    return dict(stack.api("PATCH", path, json={"chosen_options": [option]}).json())


def _decision(stack: AirflowStack, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
    path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/xcomEntries/replay_approval"
    return dict(stack.api("GET", path).json()["value"])


@pytest.fixture(scope="module")
def ready(airflow_stack: AirflowStack) -> AirflowStack:
    for dag_id in (DAG_ID, QUICK_DAG_ID):
        airflow_stack.wait_for_dag(dag_id)
        airflow_stack.unpause(dag_id)
    return airflow_stack


def test_approved_through_the_rest_api_the_replay_runs(ready: AirflowStack) -> None:
    run_id = _trigger(ready, 500)
    _wait_for_task_state(ready, run_id, "approve", "awaiting_input")
    detail = ready.api("GET", f"dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails").json()
    assert [user["name"] for user in detail["assigned_users"]] == ["admin"]  # the policy's approvers
    assert detail["defaults"] == ["Reject"]
    _answer(ready, run_id, "Approve")
    assert ready.wait_for_run(DAG_ID, run_id, timeout=120) == "success"
    assert _states(ready, run_id)["replay"] == "success"
    decision = _decision(ready, run_id)
    assert (decision["approver"], decision["decision"]) == ("admin", "approved")
    assert decision["scope"]["records"] == 500 and decision["scope"]["tenant"] == "ops"
    record = _wait_for_record(ready, run_id, dag_id=DAG_ID)
    (entry,) = [e for e in record["entries"] if e["context"]["task_id"] == "approve" and e["state"] == "success"]
    assert entry["approvals"][0]["decision"] == "approved" and entry["approvals"][0]["approver"] == "admin"
    assert record["approvals"] and record["approvals"][0]["decision"] == "approved"


def test_rejected_through_the_rest_api_the_replay_does_not_run(ready: AirflowStack) -> None:
    run_id = _trigger(ready, 500)
    _wait_for_task_state(ready, run_id, "approve", "awaiting_input")
    _answer(ready, run_id, "Reject")
    ready.wait_for_run(DAG_ID, run_id, timeout=120)
    assert _states(ready, run_id)["replay"] == "skipped"
    assert _decision(ready, run_id)["decision"] == "rejected"


def test_no_answer_within_the_policys_timeout_applies_its_default(ready: AirflowStack) -> None:
    run_id = _trigger(ready, 500, QUICK_DAG_ID)
    _wait_for_task_state(ready, run_id, "approve", "awaiting_input", dag_id=QUICK_DAG_ID)
    ready.wait_for_run(QUICK_DAG_ID, run_id, timeout=120)  # 5 s timeout, swept every 2 s
    assert _states(ready, run_id, QUICK_DAG_ID)["replay"] == "skipped"
    decision = _decision(ready, run_id, QUICK_DAG_ID)
    assert decision["decision"] == "timed out: rejected" and decision["approver"] is None


def test_below_the_threshold_the_replay_runs_without_waiting(ready: AirflowStack) -> None:
    run_id = _trigger(ready, 10)
    assert ready.wait_for_run(DAG_ID, run_id, timeout=120) == "success"
    assert _states(ready, run_id)["replay"] == "success"
    assert _decision(ready, run_id)["decision"] == "not required"
