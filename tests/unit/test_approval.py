"""ReplayApprovalSensor's decisions from the tenant's policy (the waiting itself is Airflow's: proven on a
real run in tests/system/test_replay_approval_real_run.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.sensors.approval import APPROVAL_XCOM_KEY, PLAN_XCOM_KEY, ReplayApprovalSensor

from ..conftest import PolicyFile

POLICY = """
version: 1
tenants:
  ops:
    replay_approval: {threshold_records: 100, threshold_cost_usd: 5.0, approvers: [alice, bob], timeout_seconds: 60, default: reject}
"""


@pytest.fixture(autouse=True)
def ops_policy(policy_file: PolicyFile) -> None:
    policy_file(POLICY)


class TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        return self.pulled.get((task_ids, key))


def _sensor(**kwargs: Any) -> ReplayApprovalSensor:
    from airflow.sdk import DAG

    with DAG("replays", schedule=None):
        return ReplayApprovalSensor(task_id="approve", tenant="ops", **kwargs)


def test_below_the_threshold_no_wait_and_the_decision_is_recorded() -> None:
    sensor = _sensor(plan_task_id="plan")
    ti = TI(pushed={}, pulled={("plan", PLAN_XCOM_KEY): {"records": 99, "estimated_cost_usd": 1.0, "scope": {"p": 1}}})
    result = sensor.execute({"ti": ti})
    assert result["approved"] is True and result["decision"] == "not required"
    assert ti.pushed[APPROVAL_XCOM_KEY]["scope"]["records"] == 99
    assert sensor.barecount_approvals[0]["decision"] == "not required"


@pytest.mark.parametrize(("records", "cost"), [(100, 0.0), (5, 5.0)])
def test_at_the_threshold_it_waits_for_the_policys_approvers_with_its_timeout_and_default(records: int, cost: float) -> None:
    from airflow.sdk.exceptions import TaskAwaitingInput

    sensor = _sensor(records=records, estimated_cost_usd=cost)
    ti = TI(pushed={}, pulled={}, id="0190e1d5-0000-7000-8000-000000000000")
    upserted: dict[str, Any] = {}

    import airflow.providers.standard.operators.hitl as hitl

    original = hitl.upsert_hitl_detail
    hitl.upsert_hitl_detail = lambda **kwargs: upserted.update(kwargs)  # the Execution API call of a real task
    try:
        with pytest.raises(TaskAwaitingInput):
            sensor.execute({"ti": ti, "task_instance": ti})
    finally:
        hitl.upsert_hitl_detail = original
    assert upserted["assigned_users"] == [{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}]
    assert upserted["defaults"] == ["Reject"]
    assert sensor.response_timeout == timedelta(seconds=60)
    assert ti.pushed["replay_approval_request"]["records"] == records


def test_the_answer_is_recorded_with_who_when_and_scope() -> None:
    sensor = _sensor(records=500)
    ti = TI(pushed={}, pulled={("approve", "replay_approval_request"): {"tenant": "ops", "records": 500}})
    when = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    event = {"chosen_options": ["Approve"], "params_input": {}, "responded_at": when, "responded_by_user": {"id": "alice", "name": "alice"}}
    sensor.execute_complete({"ti": ti, "task": sensor}, event)
    assert ti.pushed[APPROVAL_XCOM_KEY] == {
        "approver": "alice",
        "decided_at": when.isoformat(),
        "decision": "approved",
        "scope": {"tenant": "ops", "records": 500},
    }


def test_policy_settings_cannot_be_overridden_by_the_dag() -> None:
    with pytest.raises(ValueError, match="assigned_users comes from the tenant's policy"):
        _sensor(records=1, assigned_users=[{"id": "mallory", "name": "mallory"}])


def test_a_decision_on_a_replay_plan_is_put_on_record_for_the_replay_task(tmp_path: Path) -> None:
    from barecount_provider.recovery.approvals import ApprovalStore

    url = f"sqlite:///{tmp_path}/ledger.db"
    sensor = _sensor(plan_task_id="plan", ledger_url=url)
    request = {"tenant": "ops", "records": 500, "estimated_cost_usd": 1.0, "scope": {"tenant": "ops"},
               "plan_id": "p" * 32, "scope_id": "s" * 32}
    ti = TI(pushed={}, pulled={("approve", "replay_approval_request"): request}, dag_id="replays", run_id="r1", task_id="approve")
    when = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    event = {"chosen_options": ["Approve"], "params_input": {}, "responded_at": when, "responded_by_user": {"id": "alice", "name": "alice"}}
    sensor.execute_complete({"ti": ti, "task": sensor}, event)
    store = ApprovalStore(url)
    [row] = store.decisions("p" * 32)
    assert (row["approver"], row["decision"], row["records"], row["tenant"]) == ("alice", "approved", 500, "ops")
    assert (row["decided_at"], row["dag_id"], row["run_id"]) == (when.isoformat(), "replays", "r1")
    found = store.approval_for(plan_id="p" * 32, tenant="ops", scope_id="s" * 32, scope={"tenant": "ops"}, records=500)
    assert found is not None
    assert store.approval_for(plan_id="p" * 32, tenant="ops", scope_id="s" * 32, scope={"tenant": "ops"}, records=501) is None
