"""A lost worker (a real api-server, scheduler and dag-processor; LocalExecutor, SQLite).

One small DAG: ``ok``, then ``sibling`` (quick) and ``sleeper`` (sleeps ten minutes) side by side. While
``sleeper`` runs, the process that supervises it (a LocalExecutor worker, which heartbeats the try to the
API server) and its task process are killed with SIGKILL, supervisor first: nobody reports the try's end
and no entry is written. Airflow's scheduler fails the try once its heartbeat is older than
``[scheduler] task_instance_heartbeat_timeout`` (15 s here, checked every 5 s); the run ends failed and its
record is sealed ``evidence_grace_seconds`` (10 s here) later, with that try failed, absent, its reason
``heartbeat_timeout`` and its cost unknown, and every other try's own entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from .stack import AirflowStack
from .test_evidence_real_run import _wait_for_record

pytestmark = pytest.mark.system

DAG_ID = "lost_worker_dag"
HEARTBEAT_TIMEOUT = 15
CHECK_INTERVAL = 5
GRACE_SECONDS = 10
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
DAG_SOURCE = """
import time
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="lost_worker_dag", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def lost_worker_dag():
    @task(retries=0)
    def ok():
        return 1

    @task(retries=0)
    def sibling(_):
        return 2

    @task(retries=0)
    def sleeper(_):
        time.sleep(600)  # killed long before

    value = ok()
    sibling(value)
    sleeper(value)


lost_worker_dag()
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home, dags = tmp_path_factory.mktemp("lost-worker-home"), tmp_path_factory.mktemp("lost-worker-dags")
    (dags / "lost_worker_dag.py").write_text(DAG_SOURCE)
    extra_env = {
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(CHECK_INTERVAL),
        "AIRFLOW__BARECOUNT__EVIDENCE_GRACE_SECONDS": str(GRACE_SECONDS),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
    }
    with AirflowStack(home=home, dags_folder=dags, extra_env=extra_env) as started:
        yield started


def _sleeper_running(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    """The sleeper's task instance once it runs (with its task process id) and its sibling has succeeded."""

    def probe() -> dict[str, Any] | None:
        states = {ti["task_id"]: ti for ti in stack.task_instances(DAG_ID, run_id)}
        sleeper, sibling = states.get("sleeper"), states.get("sibling")
        if (
            sleeper
            and sibling
            and sleeper["state"] == "running"
            and sleeper.get("pid")
            and sibling["state"] == "success"
        ):
            return sleeper
        return None

    def detail() -> str:
        return str({ti["task_id"]: ti["state"] for ti in stack.task_instances(DAG_ID, run_id)})

    return dict(stack._poll("the sleeper to run", 180, probe, detail))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_worker_killed_mid_task_seals_the_try_failed_with_its_reason_and_an_unknown_cost(
    stack: AirflowStack,
) -> None:
    stack.wait_for_dag(DAG_ID)
    stack.unpause(DAG_ID)
    run_id = stack.trigger(DAG_ID)
    sleeper = _sleeper_running(stack, run_id)

    task_process = psutil.Process(int(sleeper["pid"]))
    supervisor = task_process.parent()
    assert supervisor is not None and "LocalExecutor" in " ".join(supervisor.cmdline()), supervisor
    killed_at = datetime.now(UTC)
    supervisor.kill()  # SIGKILL, the supervisor first: nothing reports the try's end, nor heartbeats it
    task_process.kill()
    _gone, alive = psutil.wait_procs([supervisor, task_process], timeout=10)
    assert not alive, alive

    assert stack.wait_for_run(DAG_ID, run_id, timeout=180) == "failed"
    record = _wait_for_record(stack, run_id, timeout=120, dag_id=DAG_ID)
    sealed_after = (_at(record["sealed_at"]) - killed_at).total_seconds()
    print(
        f"\nlost worker: record sealed {sealed_after:.0f} s after the kill (heartbeat timeout {HEARTBEAT_TIMEOUT} s "
        f"+ check interval {CHECK_INTERVAL} s + grace {GRACE_SECONDS} s)"
    )

    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(record)
    assert (record["run_id"], record["state"]) == (run_id, "failed")
    assert record["complete"] is False and record["absent"] == ["sleeper#1"]
    by_key = {entry["key"]: entry for entry in record["entries"]}
    assert sorted(by_key) == ["ok#1", "sibling#1", "sleeper#1"]
    for key in ("ok#1", "sibling#1"):  # nothing else lost: the other tries' own entries
        entry = by_key[key]
        assert (entry["source"], entry["state"], entry.get("reason")) == ("task", "success", None)
    lost = by_key["sleeper#1"]
    assert (lost["source"], lost["state"], lost["absent"]) == ("airflow", "failed", True)
    assert lost["host"] == "127.0.0.1"  # the stack's hostname_callable: from Airflow's task instance
    reason = lost["reason"]
    assert (reason["code"], reason["airflow_event"]) == ("heartbeat_timeout", "heartbeat timeout")
    assert f"({HEARTBEAT_TIMEOUT} seconds)" in reason["detail"]  # Airflow's own message names the limit
    assert _at(reason["at"]) >= killed_at  # the scheduler's check after the kill failed it, not its process
    assert record["cost"]["complete"] is False and record["cost"]["absent"] == ["sleeper#1"]
    assert "sleeper#1" not in record["cost"]["unknown"]
    # the missing entry kept the record open for the whole grace period after the run ended
    assert _at(record["sealed_at"]) >= _at(record["ended_at"]) + timedelta(seconds=GRACE_SECONDS)

    verified = subprocess.run(
        [str(Path(sys.executable).with_name("barecount")), "evidence", "verify"],
        env={**os.environ, "AIRFLOW_HOME": str(stack.home)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
