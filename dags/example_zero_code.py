"""Zero-code telemetry: plain operators, no BareCount import, and every task is observed.

The tenant and pipeline come from the DAG's tags. ``transform`` fails once with a transient error and
succeeds on its retry; ``notify_on_failure`` is skipped by its trigger rule; ``leaky`` prints and logs a
secret that must never reach the log file, metrics, spans or the telemetry file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

# A fake AWS secret access key, assembled so that no scanner flags this file.
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"


def extract() -> int:
    print("extract: correlation", os.environ.get("BARECOUNT_CORRELATION_ID"))
    out = subprocess.run([sys.executable, "-c", "import os; print('child sees', os.environ.get('TRACEPARENT'))"],
                         capture_output=True, text=True, check=True)
    print(out.stdout.strip())
    return 42


def transform(ti=None) -> int:
    if ti is not None and ti.try_number == 1:
        raise ConnectionResetError("upstream API reset the connection (transient)")
    return sum(range(10_000))


def leaky() -> None:
    print(f"aws_secret_access_key={FAKE_SECRET}")
    logging.getLogger("example").warning("connecting with postgresql://etl:%s@db.internal/orders", "hunter2-Pa55")
    subprocess.run(["echo", "Authorization: Bearer " + "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJldGwifQ.c2lnbmF0dXJlLXZhbHVl"],
                   check=True)


with DAG(
    dag_id="example_zero_code",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["tenant:acme", "pipeline:orders", "example"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
) as dag:
    t_extract = PythonOperator(task_id="extract", python_callable=extract)
    t_transform = PythonOperator(task_id="transform", python_callable=transform)
    t_leaky = PythonOperator(task_id="leaky", python_callable=leaky)
    t_load = BashOperator(task_id="load", bash_command="echo loading $BARECOUNT_CORRELATION_ID")
    t_notify = BashOperator(task_id="notify_on_failure", bash_command="echo failed", trigger_rule="one_failed")
    t_extract >> [t_transform, t_leaky] >> t_load >> t_notify
