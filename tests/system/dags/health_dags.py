"""The health tests' DAGs (test_health_real_run.py), both of tenant netops (tests/system/policy.yaml).

* ``health_wait_dag``: a deferrable RunnerHealthSensor waits in the triggerer until every dependency of the
  on_prem profile (an agent's heartbeat, a TCP service on loopback) is healthy.
* ``health_gate_dag``: a Lambda runner over the vpn profile, whose policy requires it healthy before launch;
  the VPN connection's tunnels are down on the AWS emulator, so nothing may be invoked.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from barecount_provider.operators.lambda_function import LambdaRunnerOperator
from barecount_provider.sensors.health import RunnerHealthSensor

with DAG(
    dag_id="health_wait_dag",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["tenant:netops", "pipeline:health"],
):
    RunnerHealthSensor(
        task_id="wait_for_on_prem",
        network_profile="on_prem",
        deferrable=True,
        poke_interval=2,
        timeout=300,
    )

with DAG(
    dag_id="health_gate_dag",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["tenant:netops", "pipeline:health"],
):
    LambdaRunnerOperator(
        task_id="ingest",
        function_name="barecount-example-echo",
        network_profile="vpn",
        size="s",
        payload='{"source": "health"}',
        retries=0,
    )
