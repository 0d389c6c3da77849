"""`airflow dags test` exits once its run is over, every time: no thread BareCount started keeps the process
alive (telemetry/threads.py). Run five times in a row, each in its own process with a project-local
AIRFLOW_HOME under pytest's temporary directory; a process that does not exit within the timeout fails
the test. The DAG's tasks are local (no AWS emulator): in `dags test` they start the same BareCount threads
as runner operators do — the scheduler side's worker (the DAG run's start and end, its evidence) and the
StatsD sink's address lookup — with the OTLP sinks on (through the spool) and pointed at a port that
refuses connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

RUNS = 5
EXIT_TIMEOUT_S = 240  # a run takes seconds; a hung process is killed here and fails the test
DAG_SOURCE = '''
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="exits_dag", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def exits_dag():
    @task
    def first():
        return 1

    @task
    def second(value):
        return value + 1

    second(first())


exits_dag()
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_airflow_dags_test_exits_every_time(tmp_path: Path) -> None:
    home, dags = tmp_path / "home", tmp_path / "dags"
    dags.mkdir()
    (dags / "exits_dag.py").write_text(DAG_SOURCE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OTEL_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
            "AIRFLOW__BARECOUNT__OTLP_METRICS_ON": "True",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{_free_port()}/v1/metrics",
            "AIRFLOW__BARECOUNT__STATSD_ON": "True",
            "AIRFLOW__BARECOUNT__STATSD_HOST": "localhost",  # a name: the lookup thread runs
            "AIRFLOW__BARECOUNT__STATSD_PORT": str(_free_port()),
        }
    )
    airflow = [sys.executable, "-m", "airflow"]
    migrated = subprocess.run([*airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    for attempt in range(RUNS):
        try:
            done = subprocess.run(
                [*airflow, "dags", "test", "exits_dag"], env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as hung:
            output = (hung.stdout or b"")[-3000:] if isinstance(hung.stdout, bytes) else str(hung.stdout or "")[-3000:]
            raise AssertionError(f"`airflow dags test` did not exit (run {attempt + 1} of {RUNS}): {output}") from None
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        finished = [line for line in (done.stdout + done.stderr).splitlines() if "DagRun Finished" in line]
        assert finished and "state=success" in finished[-1], done.stdout[-3000:] + done.stderr[-3000:]
