"""A DAG of a tenant whose policy samples no traces (used with Airflow's tracing on)."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(dag_id="quiet_tenant_dag", start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
         tags=["tenant:quiet"]) as dag:
    BashOperator(task_id="hush", bash_command="echo quiet")
