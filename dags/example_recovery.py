"""Recovery on the embedded defaults (no cloud): tenant acme's `orders` ingest sends the records it cannot
load to the dead-letter queue with one call; a dry run plans their replay (records, estimated cost); the
tenant's policy decides whether a governance approval is needed (the built-in threshold is 1,000,000
records, so this small replay goes on without waiting); the replay re-delivers them to the loader,
idempotently: the ledger records what was delivered, so a re-run delivers nothing twice.

The DLQ is `[barecount] dlq_location` (empty: a local queue under the evidence directory); the ledger lives
in the evidence index database. See docs/recovery.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.hooks.dlq import DeadLetterQueueHook
from barecount_provider.operators.recovery import ReplayOperator
from barecount_provider.sensors.approval import ReplayApprovalSensor

DAG_ID = "example_recovery"


def load_order(record: Any, idempotency_key: str | None = None, **_: Any) -> None:
    """The (idempotent) loader the replay delivers to: keyed by the record's idempotency key."""
    print(f"loaded order {record['order_id']} (key {idempotency_key})")


with DAG(
    dag_id=DAG_ID,
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["example", "tenant:acme", "pipeline:orders"],
) as dag:

    @task
    def ingest(run_id: Any = None) -> int:
        orders = [{"order_id": n, "amount": None if n % 5 == 0 else n * 10} for n in range(20)]
        bad = [order for order in orders if order["amount"] is None]
        DeadLetterQueueHook().send(
            bad,
            error=ValueError("amount is missing"),
            idempotency_key=lambda order: f"{run_id}/order-{order['order_id']}",
        )
        return len(orders) - len(bad)

    plan = ReplayOperator(task_id="plan", target=load_order, pipeline="orders", plan_only=True)
    approve = ReplayApprovalSensor(task_id="approve", plan_task_id="plan")
    replay = ReplayOperator(task_id="replay", target=load_order, pipeline="orders", approved_plan_task_id="plan", rate=1000)

    ingest() >> plan >> approve >> replay
