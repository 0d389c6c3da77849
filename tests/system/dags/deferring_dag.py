"""A task that defers to the triggerer and resumes in a new task process (the same try)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import DAG, BaseOperator


class DeferOnce(BaseOperator):
    def execute(self, context):
        print("before defer: run token", os.environ.get("BARECOUNT_RUN_TOKEN"))
        self.defer(
            trigger=DateTimeTrigger(moment=datetime.now(UTC) + timedelta(seconds=2)),
            method_name="resume",
        )

    def resume(self, context, event=None):
        print("after resume: run token", os.environ.get("BARECOUNT_RUN_TOKEN"))


with DAG(dag_id="deferring_dag", start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
         tags=["tenant:acme", "pipeline:waits"]) as dag:
    DeferOnce(task_id="wait_then_go")
