"""Zero-code telemetry proven on a real run: api-server, scheduler, dag-processor, LocalExecutor, SQLite.

`dag.test()` runs everything in one process, skips `on_starting` and `on_dag_run_running` and allows ORM
access that real task processes forbid, so these checks run against real task processes whose output
reaches the log file through the supervisor.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from .conftest import UdpCollector
from .stack import AirflowStack

pytestmark = pytest.mark.system

DAG_ID = "example_zero_code"
SECRETS = (
    "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY",
    "hunter2-Pa55",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJldGwifQ.c2lnbmF0dXJlLXZhbHVl",
)


def _events(stack: AirflowStack) -> list[dict]:
    path = stack.home / "barecount" / "telemetry" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TASK_TRIES = 5  # the tries that end in a task process (extract, transform twice, leaky, load)


def _wait_for_run_event(
    stack: AirflowStack, dag_id: str, run_id: str, task_tries: int = TASK_TRIES, timeout: float = 60
) -> list[dict]:
    """The scheduler side writes the run's record after the run ends, off the scheduling loop; the tries'
    events written by the scheduler's forwarder (task_outputs = auto) arrive within one of its rounds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in _events(stack) if e.get("run_id") == run_id]
        from_tasks = [e for e in events if e["kind"] == "task_try" and e["source"] == "task"]
        if any(e["kind"] == "dag_run" for e in events) and len(from_tasks) >= task_tries:
            return events
        time.sleep(0.5)
    raise AssertionError(f"no dag_run record or task events for {dag_id} {run_id}; events: {_events(stack)[-5:]}")


@pytest.fixture(scope="module")
def zero_code_run(airflow_stack: AirflowStack) -> tuple[str, list[dict]]:
    airflow_stack.wait_for_dag(DAG_ID)
    airflow_stack.unpause(DAG_ID)
    run_id = airflow_stack.trigger(DAG_ID)
    assert airflow_stack.wait_for_run(DAG_ID, run_id, timeout=240) == "success"
    return run_id, _wait_for_run_event(airflow_stack, DAG_ID, run_id)


def test_every_try_is_recorded_with_its_context(zero_code_run):
    run_id, events = zero_code_run
    tries = {(e["task_id"], e["try_number"]): e for e in events if e["kind"] == "task_try"}
    assert {k: e["state"] for k, e in tries.items()} == {
        ("extract", 1): "success",
        ("transform", 1): "up_for_retry",
        ("transform", 2): "success",
        ("leaky", 1): "success",
        ("load", 1): "success",
        ("notify_on_failure", 0): "skipped",  # skipped by its trigger rule: taken on the scheduler side
    }
    assert tries[("notify_on_failure", 0)]["source"] == "scheduler"
    assert tries[("transform", 1)]["error_class"] == "ConnectionResetError"
    assert {e["tenant"] for e in tries.values()} == {"acme"}
    assert {e["pipeline"] for e in tries.values()} == {"orders"}
    assert len({e["correlation_id"] for e in events}) == 1
    task_side = [e for e in tries.values() if e["source"] == "task"]
    assert len({e["trace_id"] for e in task_side}) == 1
    # The task processes handed their outputs to the scheduler's forwarder, which wrote them.
    assert {e["sinks"]["written_by"] for e in task_side} == {"forwarder"}
    assert all(e["resources"]["peak_memory_bytes"] > 0 for e in task_side)
    # os.times() counts in clock ticks (10 ms): a short try may read 0, the run as a whole may not.
    assert all(e["resources"]["cpu_seconds"] >= 0 for e in task_side)
    assert sum(e["resources"]["cpu_seconds"] for e in task_side) > 0
    assert all(e["resources"]["read_bytes"] > 0 and e["resources"]["write_bytes"] > 0 for e in task_side)


def test_statsd_received_tagged_metrics_from_task_and_scheduler_sides(zero_code_run, statsd_collector: UdpCollector):
    run_id, events = zero_code_run
    correlation_id = events[0]["correlation_id"]
    expected = {
        "barecount.task.started",
        "barecount.task.finished",
        "barecount.task.duration",
        "barecount.task.cpu_time",
        "barecount.task.peak_memory",
        "barecount.task.retries",
        "barecount.task.failures",
        "barecount.task.queued_time",
        "barecount.dag_run.finished",
        "barecount.dag_run.duration",
    }

    def ours(received: list[str]) -> list[str]:
        return [line for line in received if f"dag_id:{DAG_ID}" in line]

    # The end points of the handed-off tries come from the scheduler's forwarder, within a round.
    lines = ours(statsd_collector.wait_for(lambda received: expected <= {line.split(":", 1)[0] for line in ours(received)}))
    names = {line.split(":", 1)[0] for line in lines}
    assert expected <= names
    assert any(line.startswith("barecount.task.finished:1|c|#") and "state:up_for_retry" in line for line in lines)
    assert any("task_id:notify_on_failure" in line and "state:skipped" in line for line in lines)
    assert any(
        line.startswith("barecount.task.retries:1|c|#tenant:acme,pipeline:orders,runner_class:local,size:m,dag_id:example_zero_code,task_id:transform")
        for line in lines
    )
    for line in lines:  # unbounded values never become tags
        assert run_id not in line and correlation_id not in line and "try_number" not in line


def test_a_sink_that_is_down_is_counted_and_reported_through_the_others(zero_code_run, statsd_collector: UdpCollector):
    # The OTLP metric endpoint of this stack refuses connections: every task above still succeeded.
    assert any(
        line.startswith("barecount.emit.failed:") and "sink:otlp_metrics" in line for line in statsd_collector.lines
    )


def test_tasks_in_flight_are_sampled_on_the_scheduler_side(zero_code_run, statsd_collector: UdpCollector):
    assert any(line.startswith("barecount.task.in_flight:") for line in statsd_collector.lines)


def test_log_lines_carry_the_context_and_no_secret(airflow_stack: AirflowStack, zero_code_run):
    run_id, events = zero_code_run
    leaky = next(e for e in events if e["task_id"] == "leaky")
    text = airflow_stack.task_log_path(DAG_ID, run_id, "leaky").read_text()
    for secret in SECRETS:
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    printed = [r for r in records if r.get("logger") == "task.stdout"]
    assert any(r["event"] == "aws_secret_access_key=***" for r in printed)  # print(), masked by the supervisor
    assert any(r["event"] == "Authorization: Bearer ***" for r in printed)  # a subprocess's output
    logged = next(r for r in records if r.get("logger") == "example")
    assert logged["event"] == "connecting with postgresql://etl:***@db.internal/orders"
    for field in ("correlation_id", "run_token", "tenant", "pipeline", "runner_class", "network_profile", "trace_id", "span_id"):
        assert field in logged, field
    assert logged["correlation_id"] == leaky["correlation_id"]
    assert logged["trace_id"] == leaky["trace_id"]


def test_identity_reaches_the_task_and_the_processes_it_starts(airflow_stack: AirflowStack, zero_code_run):
    run_id, events = zero_code_run
    extract = next(e for e in events if e["task_id"] == "extract")
    text = airflow_stack.task_log_path(DAG_ID, run_id, "extract").read_text()
    assert f"extract: correlation {extract['correlation_id']}" in text
    match = re.search(r"child sees 00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]", text)
    assert match, "TRACEPARENT did not reach the subprocess"
    assert match.group(1) == extract["trace_id"] and match.group(2) == extract["span_id"]


def test_spans_form_one_trace_with_parents_and_links(airflow_stack: AirflowStack, zero_code_run):
    run_id, events = zero_code_run
    trace_id = next(e["trace_id"] for e in events if e["kind"] == "dag_run")
    path = Path(airflow_stack.home) / "barecount" / "telemetry" / "spans.jsonl"
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    spans = [s for s in spans if s["trace_id"] == trace_id]
    by_name = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (root,) = by_name[f"dag_run {DAG_ID}"]
    assert root["parent_span_id"] is None
    task_spans = {s["attributes"]["airflow.task_id"]: s for s in spans if s["name"].startswith("task ")}
    assert set(task_spans) == {"extract", "transform", "leaky", "load", "notify_on_failure"}
    assert all(s["parent_span_id"] == root["span_id"] for s in task_spans.values())
    tries = by_name["task_try transform"]
    assert len(tries) == 2 and all(t["parent_span_id"] == task_spans["transform"]["span_id"] for t in tries)
    (load,) = by_name["task_try load"]
    assert {link["span_id"] for link in load["links"]} == {task_spans["transform"]["span_id"], task_spans["leaky"]["span_id"]}
    retried = next(t for t in tries if t["attributes"]["airflow.task_instance.try_number"] == 1)
    assert "retry_scheduled" in [e["name"] for e in retried["events"]]


def test_opted_out_dag_leaves_no_trace(airflow_stack: AirflowStack, statsd_collector: UdpCollector):
    airflow_stack.wait_for_dag("example_opt_out")
    airflow_stack.unpause("example_opt_out")
    run_id = airflow_stack.trigger("example_opt_out")
    assert airflow_stack.wait_for_run("example_opt_out", run_id, timeout=180) == "success"
    # Give the scheduler side the time it would need to write (it writes nothing for this DAG).
    time.sleep(3)
    assert not [e for e in _events(airflow_stack) if e.get("dag_id") == "example_opt_out"]
    assert not [line for line in statsd_collector.lines if "example_opt_out" in line]


def test_a_run_conf_cannot_change_the_tenant(airflow_stack: AirflowStack):
    airflow_stack.wait_for_dag("example_params_tenant")
    airflow_stack.unpause("example_params_tenant")
    run_id = airflow_stack.trigger("example_params_tenant", conf={"tenant": "evil", "pipeline": "stolen"})
    assert airflow_stack.wait_for_run("example_params_tenant", run_id, timeout=180) == "success"
    events = _wait_for_run_event(airflow_stack, "example_params_tenant", run_id, task_tries=3)
    tries = [e for e in events if e["kind"] == "task_try"]
    assert sorted(e["map_index"] for e in tries) == [0, 1, 2]
    assert {(e["tenant"], e["pipeline"]) for e in tries} == {("globex", "billing")}
    (run_record,) = [e for e in events if e["kind"] == "dag_run"]  # the scheduler side agrees
    assert (run_record["tenant"], run_record["pipeline"]) == ("globex", "billing")
