"""A DAG that opts out of BareCount with the `barecount:off` tag: nothing is emitted for it."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_opt_out",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["barecount:off", "example"],
) as dag:
    BashOperator(task_id="quiet", bash_command="echo not observed")
