"""The container runner class on ECS: run tenant acme's `orders` transform as a Fargate task of size s, then
read what it recorded (the ``runner_result`` XCom) downstream.

Needs AWS (or an emulator) behind the connection ``aws_conn_id``, an ECS cluster ``cluster``, a registered
task definition ``task_definition`` and subnets and security groups for the task's awsvpc network: it
carries the tag ``needs-aws``: ``make demo`` runs it, with these defaults, against an in-process AWS emulator
on loopback (tests/system/aws_emulator.py) behind ``aws_default``. Parsing it needs nothing. The
integration tests build the same DAG with ``build_dag(aws_conn_id=...)`` against an in-process moto server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.operators.ecs import EcsRunnerOperator

DAG_ID = "example_ecs"
NEEDS_AWS_TAG = "needs-aws"


def build_dag(
    aws_conn_id: str = "aws_default",
    cluster: str = "pipelines",
    task_definition: str = "orders-transform",
    subnets: list[str] | None = None,
    security_groups: list[str] | None = None,
    size: str = "s",
    launch_type: str = "FARGATE",
    environment: dict[str, str] | None = None,
    waiter_delay: int = 6,
) -> DAG:
    with DAG(
        dag_id=DAG_ID,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        tags=["example", NEEDS_AWS_TAG, "tenant:acme", "pipeline:orders"],
    ) as dag:
        env = {"ORDERS_DAY": "{{ dag_run.run_after | ds }}", **(environment or {})}
        transform = EcsRunnerOperator(
            task_id="transform",
            tenant="acme",
            pipeline="orders",
            size=size,  # task-level cpu and memory from the policy's size table, as this run's overrides
            network_profile="public",
            cluster=cluster,
            task_definition=task_definition,  # never re-registered
            launch_type=launch_type,
            overrides={
                "containerOverrides": [
                    {"name": "app", "environment": [{"name": k, "value": v} for k, v in env.items()]}
                ]
            },
            network_configuration={
                "awsvpcConfiguration": {
                    "subnets": subnets or ["subnet-0example"],
                    "securityGroups": security_groups or ["sg-0example"],
                    "assignPublicIp": "DISABLED",
                }
            },
            tags={"cost-center": "orders"},
            aws_conn_id=aws_conn_id,
            waiter_delay=waiter_delay,
            retries=0,
        )

        @task
        def report(ti: Any = None) -> dict[str, Any]:
            result = ti.xcom_pull(task_ids="transform", key="runner_result")
            print(
                f"transform ran on {result['runner_class']} size {result['size']} "
                f"({result['details'].get('launch_type')}, {result['resources_used'].get('cpu_units')} CPU units, "
                f"image {result['digests'].get('image_digest')}): {result['timings'].get('duration_s')} s, "
                f"task {result['external_run_id']}"
            )
            return {"external_run_id": result["external_run_id"], "error": result["error"]}

        transform >> report()
    return dag


dag = build_dag()
