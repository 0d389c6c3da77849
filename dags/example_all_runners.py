"""One pipeline on every runner class: tenant acme's `orders` ingest on Lambda (serverless), transform on Glue
(managed ETL), an enrichment container on ECS (container) and a heavy step on EC2 hosts launched just for it
(dedicated), then a report of what each recorded.

Each runner operator pushes its ``runner_result`` XCom; the next step reads what it needs from it through
templates: the Glue job gets the Lambda request id, the ECS task the Glue run id, the dedicated hosts the ECS
task ARN. The report task reads the four runner_results.

Needs AWS (or an emulator) behind the connection ``aws_conn_id`` with: a Lambda function ``function_name``, a
Glue job ``glue_job_name``, an ECS cluster ``ecs_cluster`` with the task definition ``ecs_task_definition``
(a container named ``app``) and subnets and security groups for its awsvpc network, and an AMI ``image_id``
that runs the SSM agent with an instance profile that lets it register. It carries the tag ``needs-aws``:
``make demo`` runs it against an in-process moto on loopback (tests/system/aws_emulator.py) that has all of
these under the default names. Parsing it needs nothing. The tests build the same DAG with
``build_dag(aws_conn_id=...)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.operators.ec2 import DedicatedComputeOperator, ReadinessCheck
from barecount_provider.operators.ecs import EcsRunnerOperator
from barecount_provider.operators.glue import GlueRunnerOperator
from barecount_provider.operators.lambda_function import LambdaRunnerOperator

DAG_ID = "example_all_runners"
NEEDS_AWS_TAG = "needs-aws"
TENANT = "acme"
PIPELINE = "orders"
RUNNER_TASKS = {
    "ingest": "serverless",
    "transform": "managed_etl",
    "enrich": "container",
    "heavy_step": "dedicated",
}
# The run's day. Not ``{{ ds }}``: a run triggered without a logical date (the REST API's
# ``"logical_date": null``, Airflow 3) has none, while every run has ``run_after``.
DAY = "{{ dag_run.run_after | ds }}"


def _upstream(task_id: str, field: str) -> str:
    """A template reading ``field`` of ``task_id``'s runner_result XCom."""
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}', key='runner_result')['{field}'] }}}}"


def build_dag(
    aws_conn_id: str = "aws_default",
    function_name: str = "barecount-example-echo",
    glue_job_name: str = "barecount-example-transform",
    ecs_cluster: str = "pipelines",
    ecs_task_definition: str = "orders-transform",
    subnets: list[str] | None = None,
    security_groups: list[str] | None = None,
    image_id: str = "ami-0example0barecount",
    iam_instance_profile: str | None = "barecount-ssm-managed-instance",
    size: str = "s",
    heavy_size: str = "m",
    readiness_check: ReadinessCheck | None = None,
    poll_interval_s: int = 6,
) -> DAG:
    with DAG(
        dag_id=DAG_ID,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        tags=["example", NEEDS_AWS_TAG, f"tenant:{TENANT}", f"pipeline:{PIPELINE}"],  # the report task's too
        default_args={"retries": 0},
    ) as dag:
        ingest = LambdaRunnerOperator(
            task_id="ingest",
            function_name=function_name,
            tenant=TENANT,
            pipeline=PIPELINE,
            size=size,
            network_profile="public",
            payload='{"source": "orders", "day": "' + DAY + '", "run_id": "{{ run_id }}"}',
            aws_conn_id=aws_conn_id,
        )
        transform = GlueRunnerOperator(
            task_id="transform",
            job_name=glue_job_name,
            tenant=TENANT,
            pipeline=PIPELINE,
            size=size,
            network_profile="public",
            script_args={"--day": DAY, "--ingest_request_id": _upstream("ingest", "external_run_id")},
            job_poll_interval=poll_interval_s,
            aws_conn_id=aws_conn_id,
        )
        enrich = EcsRunnerOperator(
            task_id="enrich",
            tenant=TENANT,
            pipeline=PIPELINE,
            size=size,
            network_profile="public",
            cluster=ecs_cluster,
            task_definition=ecs_task_definition,
            launch_type="FARGATE",
            overrides={
                "containerOverrides": [
                    {
                        "name": "app",
                        "environment": [
                            {"name": "ORDERS_DAY", "value": DAY},
                            {"name": "GLUE_RUN_ID", "value": _upstream("transform", "external_run_id")},
                        ],
                    }
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
            waiter_delay=poll_interval_s,
            aws_conn_id=aws_conn_id,
        )
        heavy_step = DedicatedComputeOperator(
            task_id="heavy_step",
            commands=[
                "set -euo pipefail",
                f'echo "orders {DAY} after ECS task {_upstream("enrich", "external_run_id")}"',
                'echo "correlation $BARECOUNT_CORRELATION_ID"',
            ],
            image_id=image_id,
            iam_instance_profile=iam_instance_profile,
            tenant=TENANT,
            pipeline=PIPELINE,
            size=heavy_size,  # instance type and host count from the policy's size table
            network_profile="public",
            readiness_check=readiness_check,  # None: each host's SSM agent must be Online
            command_timeout_s=3600,
            host_waiter_delay=poll_interval_s,
            waiter_delay=poll_interval_s,
            aws_conn_id=aws_conn_id,
        )

        @task
        def report(ti: Any = None) -> dict[str, Any]:
            summary = {}
            for task_id in RUNNER_TASKS:
                result = ti.xcom_pull(task_ids=task_id, key="runner_result")
                print(
                    f"{task_id}: {result['runner_class']} size {result['size']}, "
                    f"run {result['external_run_id']}, error {result['error']}"
                )
                summary[task_id] = {
                    "runner_class": result["runner_class"],
                    "external_run_id": result["external_run_id"],
                    "error": result["error"],
                }
            return summary

        ingest >> transform >> enrich >> heavy_step >> report()
    return dag


dag = build_dag()
