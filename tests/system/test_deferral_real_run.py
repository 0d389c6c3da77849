"""A try that defers and resumes in a new task process: one try, one run token, counted once."""

from __future__ import annotations

import re

import pytest

from .conftest import UdpCollector
from .stack import AirflowStack
from .test_zero_code_real_run import _wait_for_run_event

pytestmark = pytest.mark.system


def test_deferred_try_keeps_its_run_token_and_is_started_once(airflow_stack: AirflowStack, statsd_collector: UdpCollector):
    airflow_stack.wait_for_dag("deferring_dag")
    airflow_stack.unpause("deferring_dag")
    run_id = airflow_stack.trigger("deferring_dag")
    assert airflow_stack.wait_for_run("deferring_dag", run_id, timeout=180) == "success"
    events = _wait_for_run_event(airflow_stack, "deferring_dag", run_id, task_tries=1)

    text = airflow_stack.task_log_path("deferring_dag", run_id, "wait_then_go").read_text()
    before = re.search(r"before defer: run token ([0-9a-f]{40})", text)
    after = re.search(r"after resume: run token ([0-9a-f]{40})", text)
    assert before and after and before.group(1) == after.group(1)

    (try_event,) = [e for e in events if e["kind"] == "task_try"]
    assert (try_event["try_number"], try_event["state"]) == (1, "success")
    def ours(received: list[str]) -> list[str]:
        return [line for line in received if "dag_id:deferring_dag" in line]

    # The try's end points come from the scheduler's forwarder (handed off), within a round.
    lines = ours(statsd_collector.wait_for(lambda received: any(line.startswith("barecount.task.finished:") for line in ours(received))))
    assert sum(line.startswith("barecount.task.started:") for line in lines) == 1
    assert sum(line.startswith("barecount.task.resumed:") for line in lines) == 1
    assert sum(line.startswith("barecount.task.finished:") for line in lines) == 1
