"""Replays gated by governance approval (tenants `ops` and `ops-quick`, threshold 100 records in the system
tests' policy): plan -> approve (ReplayApprovalSensor) -> replay. The run's `records` param sizes the replay."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from barecount_provider.sensors.approval import PLAN_XCOM_KEY, ReplayApprovalSensor


def _replay_dag(dag_id: str, tenant: str) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        tags=[f"tenant:{tenant}", "pipeline:orders-replay"],
        params={"records": Param(500, type="integer", minimum=0)},
    ) as dag:

        @task
        def plan(params: Any = None, ti: Any = None) -> None:
            ti.xcom_push(
                key=PLAN_XCOM_KEY,
                value={"records": params["records"], "estimated_cost_usd": 0.25, "scope": {"pipeline": "orders"}},
            )

        approve = ReplayApprovalSensor(task_id="approve", plan_task_id="plan")

        @task
        def replay() -> str:
            return "replayed"

        plan() >> approve >> replay()
    return dag


replay_approval = _replay_dag("replay_approval", "ops")  # answered through the REST API
replay_approval_quick = _replay_dag("replay_approval_quick", "ops-quick")  # left to time out
