"""With Airflow's own tracing on: BareCount's spans join Airflow's trace, under its worker span, and the
tenant's sampling ratio drives Airflow's per-run decision. A second real stack, configured for it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import EXAMPLE_DAGS, SYSTEM_DAGS
from .stack import AirflowStack

pytestmark = pytest.mark.system

POLICY = """
version: 1
tenants:
  quiet:
    trace_sampling_ratio: 0.0
"""


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-home-traced")
    dags = tmp_path_factory.mktemp("dags-traced")
    shutil.copy(EXAMPLE_DAGS / "example_zero_code.py", dags)
    shutil.copy(SYSTEM_DAGS / "quiet_tenant_dag.py", dags)
    policy = home / "policy.yaml"
    policy.write_text(POLICY)
    extra_env = {
        "AIRFLOW__TRACES__OTEL_ON": "True",
        "OTEL_TRACES_EXPORTER": "barecount_file",  # BareCount's JSON-lines exporter, through Airflow's loader
        "AIRFLOW__BARECOUNT__POLICY_PATH": str(policy),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
    }
    with AirflowStack(home=home, dags_folder=dags, extra_env=extra_env) as stack:
        yield stack


def _spans(stack: AirflowStack) -> list[dict]:
    path = Path(stack.home) / "barecount" / "telemetry" / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(stack: AirflowStack, dag_id: str) -> str:
    stack.wait_for_dag(dag_id)
    stack.unpause(dag_id)
    run_id = stack.trigger(dag_id)
    assert stack.wait_for_run(dag_id, run_id, timeout=240) == "success"
    return run_id


@pytest.fixture(scope="module")
def traced_run_id(traced_stack: AirflowStack) -> str:
    return _run(traced_stack, "example_zero_code")


def test_try_spans_are_children_of_airflows_worker_spans(traced_stack: AirflowStack, traced_run_id: str):
    run_id = traced_run_id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = [s for s in _spans(traced_stack) if s["attributes"].get("airflow.dag_run.run_id") == run_id]
        if any(s["name"] == "task_try load" for s in spans):
            break
        time.sleep(0.5)
    by_id = {s["span_id"]: s for s in _spans(traced_stack)}
    tries = [s for s in spans if s["name"].startswith("task_try ")]
    assert {s["name"] for s in tries} >= {"task_try extract", "task_try transform", "task_try load"}
    for span in tries:
        parent = by_id.get(span["parent_span_id"])
        assert parent is not None and parent["name"] == "worker." + span["attributes"]["airflow.task_id"]
        assert parent["trace_id"] == span["trace_id"]
    assert len({s["trace_id"] for s in tries}) == 1  # one trace per run, Airflow's


def test_the_tenant_ratio_decides_airflows_sampling(traced_stack: AirflowStack, traced_run_id: str):
    run_id = _run(traced_stack, "quiet_tenant_dag")
    time.sleep(3)
    runs_with_spans = {s["attributes"].get("airflow.dag_run.run_id") for s in _spans(traced_stack)}
    assert traced_run_id in runs_with_spans  # control: the default tenant's run (ratio 1.0) was traced
    assert run_id not in runs_with_spans  # tenant "quiet" has ratio 0.0: Airflow dropped the whole run
