"""The serverless runner class: invoke a Lambda function as tenant acme's `orders` ingest, then read what it
recorded (the ``runner_result`` XCom) downstream.

Needs AWS (or an emulator) behind the connection ``aws_conn_id`` and a function named ``function_name``: it
carries the tag ``needs-aws``: ``make demo`` runs it, with these defaults, against an in-process AWS emulator
on loopback (tests/system/aws_emulator.py) behind ``aws_default``. Parsing it needs nothing.
The integration tests build the same DAG with ``build_dag(aws_conn_id=...)`` against moto on loopback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.operators.lambda_function import LambdaRunnerOperator

DAG_ID = "example_serverless"
NEEDS_AWS_TAG = "needs-aws"


def build_dag(
    aws_conn_id: str = "aws_default",
    function_name: str = "barecount-example-echo",
    size: str = "s",
    qualifier: str | None = None,
) -> DAG:
    with DAG(
        dag_id=DAG_ID,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        tags=["example", NEEDS_AWS_TAG, "tenant:acme", "pipeline:orders"],
    ) as dag:
        ingest = LambdaRunnerOperator(
            task_id="ingest",
            function_name=function_name,
            qualifier=qualifier,  # the published version or alias that implements `size`
            tenant="acme",
            pipeline="orders",
            size=size,
            network_profile="public",
            payload='{"source": "orders", "run_id": "{{ run_id }}"}',
            aws_conn_id=aws_conn_id,
            retries=0,
        )

        @task
        def report(ti: Any = None) -> dict[str, Any]:
            result = ti.xcom_pull(task_ids="ingest", key="runner_result")
            print(
                f"ingest ran on {result['runner_class']} size {result['size']}: "
                f"billed {result['timings'].get('billed_duration_s')} s, "
                f"request {result['external_run_id']}"
            )
            return {"external_run_id": result["external_run_id"], "error": result["error"]}

        ingest >> report()
    return dag


dag = build_dag()
