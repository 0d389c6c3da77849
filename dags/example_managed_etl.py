"""The managed ETL runner class: tenant acme's `orders` pipeline transforms on AWS Glue, aggregates on EMR
Serverless, then reads what both recorded (the ``runner_result`` XComs) downstream.

Needs AWS (or an emulator) behind the connection ``aws_conn_id``, a Glue job named ``glue_job_name`` and an
EMR Serverless application ``emr_application_id``: it carries the tag ``needs-aws``: ``make demo`` runs it,
with these defaults, against an in-process AWS emulator on loopback (tests/system/aws_emulator.py) behind
``aws_default``. Parsing it needs nothing. The integration tests build the same DAG with
``build_dag(aws_conn_id=...)`` against moto on loopback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.operators.emr_serverless import EmrServerlessRunnerOperator
from barecount_provider.operators.glue import GlueRunnerOperator

DAG_ID = "example_managed_etl"
NEEDS_AWS_TAG = "needs-aws"


def build_dag(
    aws_conn_id: str = "aws_default",
    glue_job_name: str = "barecount-example-transform",
    emr_application_id: str = "00example0app0id",
    execution_role_arn: str = "arn:aws:iam::123456789012:role/barecount-example-emr-job",
    size: str = "s",
    poll_interval_s: float = 6.0,
) -> DAG:
    with DAG(
        dag_id=DAG_ID,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        tags=["example", NEEDS_AWS_TAG, "tenant:acme", "pipeline:orders"],
    ) as dag:
        transform = GlueRunnerOperator(
            task_id="transform",
            job_name=glue_job_name,  # an existing job; its connections implement the network profile
            tenant="acme",
            pipeline="orders",
            size=size,  # WorkerType and NumberOfWorkers of this run, from the policy's size table
            network_profile="public",
            script_args={"--day": "{{ dag_run.run_after | ds }}"},
            job_poll_interval=poll_interval_s,
            aws_conn_id=aws_conn_id,
            retries=0,
        )
        aggregate = EmrServerlessRunnerOperator(
            task_id="aggregate",
            application_id=emr_application_id,  # the application that implements `size` and the profile
            execution_role_arn=execution_role_arn,
            job_driver={
                "sparkSubmit": {
                    "entryPoint": "s3://barecount-example-code/aggregate.py",
                    "entryPointArguments": ["--day", "{{ dag_run.run_after | ds }}"],
                    "sparkSubmitParameters": "--conf spark.executor.cores=4",
                }
            },
            tenant="acme",
            pipeline="orders",
            size=size,
            network_profile="public",
            waiter_delay=max(1, round(poll_interval_s)),
            aws_conn_id=aws_conn_id,
            retries=0,
        )

        @task
        def report(ti: Any = None) -> dict[str, Any]:
            glue = ti.xcom_pull(task_ids="transform", key="runner_result")
            emr = ti.xcom_pull(task_ids="aggregate", key="runner_result")
            print(
                f"transform: Glue {glue['driver_version']} run {glue['external_run_id']}, "
                f"{glue['billing_inputs'].get('dpu_seconds')} DPU-s; "
                f"aggregate: {emr['driver_version']} job {emr['external_run_id']}, "
                f"{emr['billing_inputs'].get('billed_vcpu_hours')} vCPU-h billed"
            )
            return {"glue": glue["external_run_id"], "emr_serverless": emr["external_run_id"]}

        transform >> aggregate >> report()
    return dag


dag = build_dag()
