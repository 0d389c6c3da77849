"""Health on the embedded defaults: every 5 minutes, every dependency of every tenant's network profiles.

``example_health`` checks what the policy's ``network_profiles.<profile>.dependencies`` name (VPN tunnels,
VPC endpoints and their probes, on-premise agents' heartbeats, health URLs) for every tenant, concurrently,
each within ``[barecount] health_timeout_seconds``. The results go to the ``barecount.health.*`` /
``barecount.network.*`` metrics, to ``GET /barecount/health`` and ``barecount health check``'s store, and
into this run's evidence (the try's ``health`` section); the task fails when a profile does not pass, so
Airflow's own failure notifications fire. The built-in policy declares no dependency: the task then says
so and succeeds. Give ``[barecount] policy_path`` a policy with dependencies (docs/health.md has a full
example) and it checks them. No cron is needed: the DAG's schedule is the interval.

``example_health_runner`` (tag ``needs-aws``; ``make demo`` runs it against its AWS emulator) waits, as a
sensor in poke mode, until the Lambda function that tenant acme's serverless runner invokes is ready
(``State=Active``, ``LastUpdateStatus=Successful``). With a triggerer, ``deferrable=True`` waits there
instead of holding a worker slot. See docs/health.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from barecount_provider.operators.health import HealthCheckOperator
from barecount_provider.sensors.health import RunnerHealthSensor

NEEDS_AWS_TAG = "needs-aws"

with DAG(
    dag_id="example_health",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(minutes=5),
    catchup=False,
    max_active_runs=1,
    tags=["example", "health", "pipeline:platform-health"],
):
    HealthCheckOperator(task_id="check_every_profile", retries=0)

with DAG(
    dag_id="example_health_runner",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["example", "health", NEEDS_AWS_TAG, "tenant:acme", "pipeline:orders"],
):
    RunnerHealthSensor(
        task_id="wait_for_the_function",
        network_profile="public",
        runner_kind="lambda_function",
        runner_id="barecount-example-echo",
        aws_conn_id="aws_default",
        poke_interval=5,
        timeout=120,
        mode="poke",
    )
