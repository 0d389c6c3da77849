"""The retry-storm breaker on a real run: BareCount's retry policy, attached by the cluster policy in the
DAG processor and evaluated in the real task processes, grants tenant `storm` only the 3 retries of its
window budget across all its failing tasks and refuses the rest with the reason; tenant `calm`'s tasks keep
their retries."""

from __future__ import annotations

import pytest

from .stack import AirflowStack

pytestmark = pytest.mark.system


def _run(stack: AirflowStack, dag_id: str) -> tuple[str, list[dict]]:
    stack.wait_for_dag(dag_id)
    stack.unpause(dag_id)
    run_id = stack.trigger(dag_id)
    assert stack.wait_for_run(dag_id, run_id, timeout=240) == "failed"
    return run_id, stack.task_instances(dag_id, run_id)


def test_storm_stops_at_its_budget_while_calm_retries(airflow_stack: AirflowStack) -> None:
    storm_run, storm = _run(airflow_stack, "retry_storm")
    calm_run, calm = _run(airflow_stack, "retry_calm")
    assert all(ti["state"] == "failed" for ti in storm + calm)

    retries = sum(ti["try_number"] - 1 for ti in storm)
    assert retries == 3, {ti["task_id"]: ti["try_number"] for ti in storm}  # the window's budget, no more
    refused = []
    for ti in storm:
        log = airflow_stack.task_log_path("retry_storm", storm_run, ti["task_id"], ti["try_number"]).read_text(errors="replace")
        if "retry budget exhausted" in log:
            refused.append(ti["task_id"])
            assert "max_retries_per_window" in log
    assert len(refused) >= len(storm) - 3  # every task that found the budget spent says why

    assert [ti["try_number"] for ti in calm] == [3, 3]  # max_retries_per_task: 2 retries each
