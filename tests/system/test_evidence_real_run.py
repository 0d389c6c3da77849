"""Evidence on a real run (api-server, scheduler, dag-processor, LocalExecutor, SQLite): each task process
writes its entry, the scheduler side seals the run's record off the scheduling loop, the record validates
against the schema, the chain verifies through `barecount evidence verify`, and no secret reaches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .stack import AirflowStack
from .test_zero_code_real_run import SECRETS

pytestmark = pytest.mark.system

DAG_ID = "example_zero_code"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())


def _cli(stack: AirflowStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIRFLOW_HOME": str(stack.home)}
    return subprocess.run(
        [str(Path(sys.executable).with_name("barecount")), *args], env=env, capture_output=True, text=True, timeout=120
    )


def _wait_for_record(stack: AirflowStack, run_id: str, timeout: float = 120, dag_id: str = DAG_ID) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = _cli(stack, "evidence", "list", "--dag", dag_id, "--json")
        if listed.returncode == 0:
            for row in json.loads(listed.stdout)["records"]:
                if row["run_id"] == run_id:
                    shown = _cli(stack, "evidence", "show", row["record_id"], "--json")
                    assert shown.returncode == 0, shown.stderr
                    return dict(json.loads(shown.stdout))
        time.sleep(1.0)
    raise AssertionError(f"no evidence record for {dag_id} {run_id}: {listed.stdout[-500:]} {listed.stderr[-2000:]}")


@pytest.fixture(scope="module")
def sealed(airflow_stack: AirflowStack) -> tuple[str, dict[str, Any]]:
    airflow_stack.wait_for_dag(DAG_ID)
    airflow_stack.unpause(DAG_ID)
    run_id = airflow_stack.trigger(DAG_ID)
    assert airflow_stack.wait_for_run(DAG_ID, run_id, timeout=240) == "success"
    return run_id, _wait_for_record(airflow_stack, run_id)


def test_the_run_is_sealed_complete_and_valid(sealed: tuple[str, dict[str, Any]]) -> None:
    run_id, record = sealed
    jsonschema.Draft202012Validator(SCHEMA).validate(record)
    assert (record["dag_id"], record["run_id"], record["state"]) == (DAG_ID, run_id, "success")
    assert record["complete"] is True and record["absent"] == []
    by_key = {entry["key"]: entry for entry in record["entries"]}
    assert {key: entry["state"] for key, entry in by_key.items()} == {
        "extract#1": "success",
        "transform#1": "up_for_retry",
        "transform#2": "success",
        "leaky#1": "success",
        "load#1": "success",
        "notify_on_failure#0": "skipped",
    }
    # written by the task processes themselves; the skipped try never had one: built from Airflow's records
    assert {key for key, entry in by_key.items() if entry["source"] == "task"} == set(by_key) - {"notify_on_failure#0"}
    assert by_key["notify_on_failure#0"]["source"] == "airflow"
    # each try that reached the worker names its host; one machine, so no local-store exception
    hosts = {by_key[key]["host"] for key in by_key if key != "notify_on_failure#0"}
    assert len(hosts) == 1 and None not in hosts
    assert not [e for e in record["policy"]["exceptions"] if e["rule"] == "evidence_store_one_host"]
    retried = by_key["transform#1"]
    assert retried["error"]["error_class"] and retried["trace"]["trace_id"] == record["trace_id"]
    assert retried["log"]["location"].endswith("task_id=transform/attempt=1.log")
    assert all(entry["context"]["correlation_id"] == record["correlation_id"] for entry in by_key.values())
    # a local task's cost: runtime x the worker-slot rate, which this deployment did not configure
    assert by_key["extract#1"]["cost"]["total_usd"] is None and by_key["extract#1"]["cost"]["missing"]


def test_the_scheduler_side_signs_a_checkpoint_at_every_seal(
    airflow_stack: AirflowStack, sealed: tuple[str, dict[str, Any]]
) -> None:
    from .conftest import CHECKPOINT_KEY, checkpoint_env

    _run_id, record = sealed
    tenant, sequence = record["tenant"], record["chain"]["sequence"]
    path = airflow_stack.home / "barecount" / "evidence-checkpoints" / tenant / f"{sequence:012d}.json"
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:  # written right after the record is sealed
        time.sleep(0.5)
    checkpoint = json.loads(path.read_text())
    assert (checkpoint["record_id"], checkpoint["hash"]) == (record["record_id"], record["chain"]["hash"])
    public = checkpoint_env(CHECKPOINT_KEY)["AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_PUBLIC_KEY"]
    verified = _cli(airflow_stack, "evidence", "verify", "--tenant", tenant, "--public-key", public, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (chain,) = json.loads(verified.stdout)["chains"]
    assert chain["checkpoints"] == "checked" and chain["checkpointed_through"] >= sequence


def test_the_chain_verifies_with_the_command_and_no_secret_is_in_the_evidence(
    airflow_stack: AirflowStack, sealed: tuple[str, dict[str, Any]]
) -> None:
    verified = _cli(airflow_stack, "evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    evidence_dir = airflow_stack.home / "barecount" / "evidence"
    text = "".join(path.read_text(errors="replace") for path in evidence_dir.rglob("*.json"))
    assert text, "no evidence written"
    for secret in SECRETS:
        assert secret not in text
