"""The dedicated compute runner class: tenant acme's `orders` pipeline runs a heavy step on EC2 hosts launched
just in time for it, then reads what was recorded (the ``runner_result`` XCom) downstream.

Needs AWS (or an emulator) behind the connection ``aws_conn_id``, an AMI ``image_id`` that runs the SSM agent
and an instance profile that lets it register: it carries the tag ``needs-aws``: ``make demo`` runs it, with
these defaults, against an in-process AWS emulator on loopback (tests/system/aws_emulator.py, which answers
the SSM-agent readiness check) behind ``aws_default``. Parsing it needs nothing. The integration tests build
the same DAG with ``build_dag(aws_conn_id=..., readiness_check=instance_state_only)`` against plain moto on
loopback (moto has no DescribeInstanceInformation, so the SSM-agent readiness check cannot run there).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.operators.ec2 import DedicatedComputeOperator, ReadinessCheck

DAG_ID = "example_dedicated"
NEEDS_AWS_TAG = "needs-aws"


def build_dag(
    aws_conn_id: str = "aws_default",
    image_id: str = "ami-0example0barecount",
    iam_instance_profile: str | None = "barecount-ssm-managed-instance",
    size: str = "s",
    readiness_check: ReadinessCheck | None = None,
    poll_interval_s: int = 15,
) -> DAG:
    with DAG(
        dag_id=DAG_ID,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        tags=["example", NEEDS_AWS_TAG, "tenant:acme", "pipeline:orders"],
    ) as dag:
        heavy = DedicatedComputeOperator(
            task_id="heavy_step",
            commands=[
                "set -euo pipefail",
                'echo "orders {{ dag_run.run_after | ds }} correlation $BARECOUNT_CORRELATION_ID"',
            ],
            image_id=image_id,
            iam_instance_profile=iam_instance_profile,
            tenant="acme",
            pipeline="orders",
            size=size,  # instance type and host count, from the policy's size table
            network_profile="public",
            readiness_check=readiness_check,  # None: each host's SSM agent must be Online
            command_timeout_s=3600,
            host_waiter_delay=poll_interval_s,
            waiter_delay=poll_interval_s,
            aws_conn_id=aws_conn_id,
            retries=0,
        )

        @task
        def report(ti: Any = None) -> dict[str, Any]:
            result = ti.xcom_pull(task_ids="heavy_step", key="runner_result")
            print(
                f"heavy_step: command {result['external_run_id']} on "
                f"{result['billing_inputs']['host_count']} x {result['billing_inputs']['instance_type']}, "
                f"{result['billing_inputs']['host_seconds']} host-seconds"
            )
            return {
                "command_id": result["external_run_id"],
                "hosts": result["resources_used"]["instance_ids"],
            }

        heavy >> report()
    return dag


dag = build_dag()
