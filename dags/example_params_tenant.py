"""The tenant declared in DAG params (its declared default): a run's conf cannot change it."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_params_tenant",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    params={"tenant": "globex", "pipeline": "billing"},
    tags=["example"],
) as dag:
    PythonOperator.partial(task_id="score", python_callable=lambda x: x * 2).expand(op_args=[[1], [2], [3]])
