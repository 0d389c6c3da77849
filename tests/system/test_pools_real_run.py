"""Pools per tenant and runner class on a real Airflow 3.3: `barecount pools sync` through the REST API, the
cluster policy assigning them in the DAG processor, and a missing pool reported as an import error.

This test runs its own small stack (its own policy file and dags folder): the registry Variable it writes
turns pools on, which must not change how the shared stack parses the example DAGs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .stack import ADMIN_PASSWORD, ADMIN_USER, AirflowStack

pytestmark = pytest.mark.system

POLICY_V1 = """
version: 1
defaults:
  allowed_runner_classes: [serverless, container, local]
  limits: {max_parallel_tasks: 4}
tenants:
  acme:
    limits: {max_parallel_tasks: 3}
"""
POLICY_V2 = POLICY_V1 + """
  beta:
    limits: {max_parallel_tasks: 2}
"""

DAG_TEMPLATE = '''
from datetime import datetime

from airflow.sdk import DAG, task

from barecount_provider.operators.kubernetes import KubernetesRunnerOperator
from barecount_provider.operators.lambda_function import LambdaRunnerOperator

with DAG(dag_id="pools_{tenant}", start_date=datetime(2026, 1, 1), schedule=None, tags=["tenant:{tenant}"]):
    ingest = LambdaRunnerOperator(task_id="ingest", function_name="nowhere", retries=0)
    fan_out = KubernetesRunnerOperator.partial(
        task_id="fan_out", name="fan-out", image="busybox", retries=0
    ).expand(arguments=[["1"], ["2"]])

    @task
    def local_step():
        return 1

    ingest >> fan_out >> local_step()
'''


@pytest.fixture(scope="module")
def pools_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("pools-airflow-home")
    dags = tmp_path_factory.mktemp("pools-dags")
    policy = home / "policy.yaml"
    policy.write_text(POLICY_V1)
    for tenant in ("acme", "beta"):
        (dags / f"pools_{tenant}.py").write_text(textwrap.dedent(DAG_TEMPLATE).replace("{tenant}", tenant))
    extra_env = {
        "AIRFLOW__BARECOUNT__POLICY_PATH": str(policy),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "pools-system-test-secret",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3",
        # a DAG whose pools change is rewritten in place: the API server re-reads it after this interval
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "3",
    }
    with AirflowStack(home=home, dags_folder=dags, extra_env=extra_env) as stack:
        yield stack


def _barecount(stack: AirflowStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **stack.env,
        "BARECOUNT_API_URL": stack.base_url,
        "BARECOUNT_API_USERNAME": ADMIN_USER,
        "BARECOUNT_API_PASSWORD": ADMIN_PASSWORD,
    }
    return subprocess.run(
        [sys.executable, "-m", "barecount_provider.cli", *args],
        env=env,
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait(what: str, probe: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _task_pool(stack: AirflowStack, dag_id: str, task_id: str) -> str | None:
    resp = stack.api("GET", f"dags/{dag_id}/tasks/{task_id}", check=False)
    return resp.json().get("pool") if resp.status_code == 200 else None


def _import_errors(stack: AirflowStack, filename: str) -> list[str]:
    return [str(e.get("stack_trace")) for e in stack.import_errors() if e.get("filename") == filename]


def test_sync_creates_pools_the_policy_assigns_them_and_a_missing_one_is_an_import_error(pools_stack):
    stack = pools_stack
    dag_ids, errors = stack.wait_for_dags_folder()
    # Before any sync there is no registry: pools are off, runner tasks stay in default_pool, nothing fails.
    assert {"pools_acme", "pools_beta"} <= set(dag_ids) and errors == []
    assert _task_pool(stack, "pools_acme", "ingest") == "default_pool"

    synced = _barecount(stack, "pools", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "+ create barecount_acme_serverless  slots 3" in synced.stdout
    assert ADMIN_PASSWORD not in synced.stdout + synced.stderr
    pools = {p["name"]: p for p in stack.api("GET", "pools").json()["pools"]}
    assert {name: p["slots"] for name, p in pools.items() if name != "default_pool"} == {
        "barecount_acme_container": 3,
        "barecount_acme_serverless": 3,
        "barecount_default_container": 4,
        "barecount_default_serverless": 4,
    }
    assert pools["barecount_acme_container"]["include_deferred"] is True

    # The DAG processor re-parses: acme's runner tasks (plain and mapped) get acme's pools, the local task
    # keeps default_pool; beta is not in the policy, so its file becomes an import error.
    _wait("acme's tasks in acme's pools", lambda: _task_pool(stack, "pools_acme", "ingest") == "barecount_acme_serverless")
    assert _task_pool(stack, "pools_acme", "fan_out") == "barecount_acme_container"
    assert _task_pool(stack, "pools_acme", "local_step") == "default_pool"
    (trace,) = _wait("beta's import error", lambda: _import_errors(stack, "pools_beta.py"))
    assert "AirflowClusterPolicyViolation" in trace
    assert "pool 'barecount_beta_serverless'" in trace and "tenant 'beta' is not declared in the policy" in trace
    listed = subprocess.run(  # exits 1 when there are import errors
        [sys.executable, "-m", "airflow", "dags", "list-import-errors", "--output", "json"],
        env=stack.env,
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert '"filepath": "pools_beta.py"' in listed.stdout and "barecount_beta_serverless" in listed.stdout

    check = _barecount(stack, "pools", "check")
    assert check.returncode == 0, check.stdout + check.stderr

    # Onboard beta: the policy declares it, the sync creates its pools, the import error goes away.
    (stack.home / "policy.yaml").write_text(POLICY_V2)
    drift = _barecount(stack, "pools", "check")
    assert drift.returncode == 1 and "+ create barecount_beta_serverless" in drift.stdout
    synced = _barecount(stack, "pools", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    _wait("beta's import error to go", lambda: not _import_errors(stack, "pools_beta.py"))
    _wait("beta's tasks in beta's pools", lambda: _task_pool(stack, "pools_beta", "ingest") == "barecount_beta_serverless")
    assert _task_pool(stack, "pools_beta", "fan_out") == "barecount_beta_container"

    # The scheduler queues a run's runner task in its pool (not left waiting for a pool that does not exist).
    stack.unpause("pools_acme")
    run_id = stack.trigger("pools_acme")

    def ingest_left_scheduled() -> dict[str, Any] | None:
        tis = {ti["task_id"]: ti for ti in stack.task_instances("pools_acme", run_id)}
        ingest = tis.get("ingest")
        done = ingest and ingest.get("state") in ("queued", "running", "success", "failed", "up_for_retry")
        return ingest if done else None

    ingest = _wait("ingest to be queued", ingest_left_scheduled, timeout=60)
    assert ingest["pool"] == "barecount_acme_serverless"


def test_sync_reports_refused_credentials_and_never_prints_the_password(pools_stack):
    wrong = "not-the-password-" + os.urandom(4).hex()
    result = subprocess.run(
        [sys.executable, "-m", "barecount_provider.cli", "pools", "sync", "--username", ADMIN_USER],
        env={
            **pools_stack.env,
            "BARECOUNT_API_URL": pools_stack.base_url,
            "BARECOUNT_API_PASSWORD": wrong,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "refused user 'admin'" in result.stderr
    assert wrong not in result.stdout + result.stderr


def test_sync_explains_a_wrong_url(pools_stack):
    result = _barecount(pools_stack, "pools", "sync", "--api-url", f"{pools_stack.base_url}/api/v2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is " in result.stderr and "the Airflow 3 API server" in result.stderr
