"""The system-test stack itself: a DAG runs for real and every listening socket is on loopback."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .stack import LOOPBACK, AirflowStack

pytestmark = pytest.mark.system

PRINTED_LINE = "stack-smoke: hello from print()"
SUBPROCESS_LINE = "stack-smoke: hello from a subprocess"


def test_smoke_dag_runs_and_logs_reach_the_file(airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    stack.wait_for_dag("smoke_dag")
    stack.unpause("smoke_dag")
    run_id = stack.trigger("smoke_dag", conf={"from": "test_stack_smoke"})

    assert stack.wait_for_run("smoke_dag", run_id, timeout=180) == "success"

    tis = {ti["task_id"]: ti for ti in stack.task_instances("smoke_dag", run_id)}
    assert {task: ti["state"] for task, ti in tis.items()} == {
        "say_hello": "success",
        "run_subprocess": "success",
    }
    say_hello_log = stack.task_log_path(
        "smoke_dag", run_id, "say_hello", try_number=tis["say_hello"]["try_number"]
    )
    assert say_hello_log.is_file(), f"no log file at {say_hello_log}"
    assert PRINTED_LINE in say_hello_log.read_text()
    bash_log = stack.task_log_path("smoke_dag", run_id, "run_subprocess")
    assert SUBPROCESS_LINE in bash_log.read_text()

    # The API reads the same log.
    api_log = stack.api("GET", f"dags/smoke_dag/dagRuns/{run_id}/taskInstances/say_hello/logs/1").text
    assert PRINTED_LINE in api_log


def _ss_listeners(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP listener owned by ``pids``, as `ss -ltnp` reports them."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                found.append((pid, fields[3]))
    return found


def test_every_listening_socket_is_on_loopback(airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    listeners = stack.listening_sockets()
    ports = {sock["port"] for sock in listeners}
    assert stack.api_port in ports, listeners
    assert stack.log_server_port in ports, listeners
    assert [s for s in listeners if s["ip"] != LOOPBACK] == []

    if shutil.which("ss"):
        ss = _ss_listeners(set(stack.pids()))
        assert ss, "ss -ltnp shows no listener of the stack"
        assert [(pid, addr) for pid, addr in ss if not addr.startswith(f"{LOOPBACK}:")] == []
