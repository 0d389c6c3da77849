"""A DAG written to leak secrets (tests/system/test_secrets_real_run.py): every text of a corpus goes out
through the task logger, print(), a subprocess, an exception message and a runner's result.

The secrets are not in this file (Airflow stores a DAG file's source in its database): the tasks read them at
run time from the JSON file named by ``LEAKY_CASES_FILE``. Without it (another stack parses this file too)
the tasks have nothing to leak.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

log = logging.getLogger("leaky")

# On a stack of Celery workers (tests/system/test_celery_real_run.py) LEAKY_QUEUES names each worker's own
# queue: both tasks are then made once per queue, so that every worker supervises every channel.
QUEUES = [queue for queue in os.environ.get("LEAKY_QUEUES", "").split(",") if queue]


def _cases() -> list[dict[str, Any]]:
    path = os.environ.get("LEAKY_CASES_FILE")
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return list(json.load(handle))


def _leak_output(**context: Any) -> None:
    cases = _cases()
    for case in cases:
        line = f"[{case['kind']}] {case['text']}"
        log.info("logging %s", line)
        print(f"print {line}", flush=True)
        subprocess.run(["printf", "subprocess %s\\n", line], check=True)
    # What BareCount's runner operators leave on the task for the try's evidence entry.
    context["task"].barecount_runner_result = {
        "log_tail": [case["text"] for case in cases],
        "by_kind": {case["kind"]: case["text"] for case in cases},
        "billed_duration_ms": 1200,
    }


def _leak_exception() -> None:
    cases = _cases()
    try:
        raise ValueError("upstream said: " + " | ".join(case["text"] for case in cases[: len(cases) // 2]))
    except ValueError as inner:
        raise RuntimeError("load failed: " + " | ".join(case["text"] for case in cases)) from inner


with DAG(
    dag_id="secrets_leak_dag",
    schedule=None,
    start_date=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    tags=["system-test"],
    default_args={"retries": 0},
):
    if not QUEUES:
        leak_output = PythonOperator(task_id="leak_output", python_callable=_leak_output)
        leak_exception = PythonOperator(task_id="leak_exception", python_callable=_leak_exception)
    for queue in QUEUES:
        PythonOperator(task_id=f"leak_output_{queue}", python_callable=_leak_output, queue=queue)
        PythonOperator(task_id=f"leak_exception_{queue}", python_callable=_leak_exception, queue=queue)
