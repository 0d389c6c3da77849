"""The replay's own approval gate (tenant `ops`, threshold 100 records in the system tests' policy): a
ReplayOperator over the threshold delivers only with an approval of its plan on record.

* `replay_gate`: plan (ReplayOperator, plan_only) -> approve (ReplayApprovalSensor) -> replay;
* `replay_gate_ungated`: the replay alone, no sensor: refused.

The run's `dlq` param names the local dead-letter queue (a directory the test fills)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from barecount_provider.operators.recovery import ReplayOperator
from barecount_provider.sensors.approval import ReplayApprovalSensor


def deliver(payload: Any, key: str) -> None:
    """The replay's target: takes every record (the outcome counts them)."""


COMMON: dict[str, Any] = {"target": deliver, "dlq_backend": "local", "dlq_location": "{{ params.dlq }}", "retries": 0}
PARAMS = {"dlq": Param("", type="string")}

with DAG("replay_gate", schedule=None, tags=["tenant:ops", "pipeline:orders-replay"], params=PARAMS):
    plan = ReplayOperator(task_id="plan", plan_only=True, **COMMON)
    approve = ReplayApprovalSensor(task_id="approve", plan_task_id="plan")
    replay = ReplayOperator(task_id="replay", approved_plan_task_id="plan", **COMMON)
    plan >> approve >> replay

with DAG("replay_gate_ungated", schedule=None, tags=["tenant:ops", "pipeline:orders-replay"], params=PARAMS):
    ReplayOperator(task_id="replay", **COMMON)
