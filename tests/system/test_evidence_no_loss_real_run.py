"""No run left unsealed when the scheduler stops, is killed with SIGKILL, or restarts (a real api-server,
scheduler and dag-processor; LocalExecutor, SQLite).

One small DAG: ``ok`` succeeds, then ``vanish`` kills its own task process with SIGKILL, so its entry never
comes and the run waits the whole grace period (``evidence_grace_seconds`` = 30 here) before it is sealed.
Each run therefore ends while the scheduler still holds it unsealed:

* run A: the scheduler is stopped (SIGTERM) within the grace period; it is left in the pending table, and the
  next scheduler to start seals it;
* run B: the scheduler is killed with SIGKILL within the grace period, and its pending row is removed too, as
  if it had died before its background thread took the run's end: the next scheduler to start finds the run
  from Airflow's records and its entries, and seals it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .stack import AirflowStack
from .test_evidence_real_run import _wait_for_record

pytestmark = pytest.mark.system

DAG_ID = "no_loss_dag"
GRACE_SECONDS = 30
DAG_SOURCE = '''
import os
import signal
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="no_loss_dag", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def no_loss_dag():
    @task(retries=0)
    def ok():
        return 1

    @task(retries=0)
    def vanish(_):
        os.kill(os.getpid(), signal.SIGKILL)  # no listener runs: this try's entry never comes

    vanish(ok())


no_loss_dag()
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home, dags = tmp_path_factory.mktemp("no-loss-home"), tmp_path_factory.mktemp("no-loss-dags")
    (dags / "no_loss_dag.py").write_text(DAG_SOURCE)
    extra_env = {
        "AIRFLOW__BARECOUNT__EVIDENCE_GRACE_SECONDS": str(GRACE_SECONDS),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
    }
    with AirflowStack(home=home, dags_folder=dags, extra_env=extra_env) as started:
        yield started


def _pending(stack: AirflowStack) -> set[tuple[str, str]]:
    index = stack.home / "barecount" / "evidence" / "index.db"
    with sqlite3.connect(index) as connection:
        return set(connection.execute("SELECT dag_id, run_id FROM barecount_evidence_pending").fetchall())


def _records(stack: AirflowStack) -> set[str]:
    index = stack.home / "barecount" / "evidence" / "index.db"
    if not index.exists():
        return set()
    with sqlite3.connect(index) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "barecount_evidence_records" not in tables:
            return set()
        return {row[0] for row in connection.execute("SELECT run_id FROM barecount_evidence_records")}


def _stop_scheduler(stack: AirflowStack, sig: int) -> None:
    scheduler = stack.processes.pop("scheduler")
    os.kill(scheduler.pid, sig)
    try:
        scheduler.wait(timeout=60)
    finally:
        try:  # what the scheduler forked (executor workers, the forwarder), left behind by a SIGKILL
            os.killpg(scheduler.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _run_to_its_end(stack: AirflowStack) -> str:
    run_id = stack.trigger(DAG_ID)
    assert stack.wait_for_run(DAG_ID, run_id, timeout=240) == "failed"
    return run_id


def _check(record: dict[str, Any], run_id: str) -> None:
    assert (record["run_id"], record["state"], record["run_type"]) == (run_id, "failed", "manual")
    assert record["complete"] is False and record["absent"] == ["vanish#1"]
    by_key = {entry["key"]: entry for entry in record["entries"]}
    assert by_key["ok#1"]["source"] == "task" and by_key["ok#1"]["timings"]["queued_at"] is not None
    assert by_key["vanish#1"]["source"] == "airflow" and by_key["vanish#1"]["absent"] is True
    # its supervisor lived on and reported it failed: Airflow recorded no reason (the signal is in its log only)
    assert by_key["vanish#1"]["reason"]["code"] == "ended_without_entry"
    assert by_key["vanish#1"]["reason"]["airflow_event"] is None


def test_runs_left_unsealed_by_a_stopped_or_killed_scheduler_are_sealed_at_the_next_start(stack: AirflowStack) -> None:
    stack.wait_for_dag(DAG_ID)
    stack.unpause(DAG_ID)

    # A: stopped (SIGTERM) while the run waits for its missing entry: kept for the next start
    run_a = _run_to_its_end(stack)
    _stop_scheduler(stack, signal.SIGTERM)
    assert run_a not in _records(stack), "sealed before its grace period ended: the test proves nothing"
    assert (DAG_ID, run_a) in _pending(stack)
    stack._spawn("scheduler")

    # B: killed with SIGKILL while the run waits; its pending row removed as if the scheduler had died first
    run_b = _run_to_its_end(stack)
    _stop_scheduler(stack, signal.SIGKILL)
    assert run_b not in _records(stack), "sealed before its grace period ended: the test proves nothing"
    index = stack.home / "barecount" / "evidence" / "index.db"
    with sqlite3.connect(index) as connection:
        connection.execute("DELETE FROM barecount_evidence_pending WHERE run_id = ?", (run_b,))
    stack._spawn("scheduler")

    for run_id in (run_a, run_b):
        _check(_wait_for_record(stack, run_id, timeout=180, dag_id=DAG_ID), run_id)
    assert _pending(stack) == set()
    verified = subprocess.run(
        [str(Path(sys.executable).with_name("barecount")), "evidence", "verify"],
        env={**os.environ, "AIRFLOW_HOME": str(stack.home)}, capture_output=True, text=True, timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
