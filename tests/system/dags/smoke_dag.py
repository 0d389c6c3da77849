"""Smoke DAG for the system-test stack: one task prints, one runs a subprocess."""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

PRINTED_LINE = "stack-smoke: hello from print()"
SUBPROCESS_LINE = "stack-smoke: hello from a subprocess"


def _say_hello() -> None:
    print(PRINTED_LINE)


with DAG(
    dag_id="smoke_dag",
    schedule=None,
    start_date=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    tags=["system-test"],
):
    say_hello = PythonOperator(task_id="say_hello", python_callable=_say_hello)
    run_subprocess = BashOperator(task_id="run_subprocess", bash_command=f"echo '{SUBPROCESS_LINE}'")
    say_hello >> run_subprocess
