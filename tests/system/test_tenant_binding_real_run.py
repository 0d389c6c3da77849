"""Tenants bound to teams on a real Airflow 3.3 in multi-team mode: the policy's ``declared_by`` makes a DAG of
team_a's bundle that declares ``tenant:team_b`` an import error in the real dag-processor, while the DAGs that
declare their own team's tenant are parsed, and run (the task process parses its bundle's file again, with the
same cluster policy).

This test runs its own stack: ``[core] multi_team`` on, two DAG bundles (``team_a_dags`` owned by team
``team_a``, ``team_b_dags`` by ``team_b``; teams created with ``airflow teams sync`` right after the
migration) and a policy that binds tenant ``team_a`` to team_a and tenant ``team_b`` to team_b.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .stack import AirflowStack

pytestmark = pytest.mark.system

BUNDLES = {"team_a_dags": "team_a", "team_b_dags": "team_b"}
POLICY = """
version: 1
tenants:
  team_a:
    declared_by: {teams: [team_a]}
  team_b:
    declared_by: {teams: [team_b]}
"""
DAG_SOURCE = '''
from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="{dag_id}", start_date=datetime(2026, 1, 1), schedule=None, tags=["tenant:{tenant}"]):
    EmptyOperator(task_id="work")
'''
# dag_id -> (bundle, declared tenant)
DAGS = {"own_a": ("team_a_dags", "team_a"), "own_b": ("team_b_dags", "team_b"), "sneaky": ("team_a_dags", "team_b")}


class TeamsStack(AirflowStack):
    """The system stack with the teams created before anything starts."""

    def cli(self, *args: str, timeout: float = 120.0, log_name: str | None = None) -> Any:
        result = super().cli(*args, timeout=timeout, log_name=log_name)
        if args[:2] == ("db", "migrate"):
            super().cli("teams", "sync", timeout=timeout, log_name="teams-sync")
        return result


@pytest.fixture(scope="module")
def teams_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("binding-airflow-home")
    folders = {name: tmp_path_factory.mktemp(name) for name in BUNDLES}
    for dag_id, (bundle, tenant) in DAGS.items():
        source = textwrap.dedent(DAG_SOURCE).replace("{dag_id}", dag_id).replace("{tenant}", tenant)
        (folders[bundle] / f"{dag_id}.py").write_text(source)
    policy = home / "policy.yaml"
    policy.write_text(POLICY)
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(folders[name]), "refresh_interval": 2},
            "team_name": team,
        }
        for name, team in BUNDLES.items()
    ]
    extra_env = {
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__BARECOUNT__POLICY_PATH": str(policy),
        "AIRFLOW__BARECOUNT__EVIDENCE_DIR": str(home / "barecount" / "evidence"),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "binding-system-test-secret",
    }
    with TeamsStack(home=home, dags_folder=tmp_path_factory.mktemp("binding-unused-dags"), extra_env=extra_env) as running:
        yield running


def _wait(what: str, probe: Callable[[], Any], timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _import_errors(stack: AirflowStack, filename: str) -> list[dict[str, Any]]:
    return [e for e in stack.import_errors() if e.get("filename") == filename]


def test_a_dag_declaring_another_teams_tenant_is_an_import_error_of_the_real_dag_processor(teams_stack) -> None:
    stack = teams_stack
    stack.wait_for_dag("own_a")
    stack.wait_for_dag("own_b")
    (error,) = _wait("sneaky's import error", lambda: _import_errors(stack, "sneaky.py"))
    assert error.get("bundle_name") == "team_a_dags"
    assert "AirflowClusterPolicyViolation: BareCount: DAG 'sneaky': tenant 'team_b' may be declared only by DAGs " \
        "of teams team_b" in str(error.get("stack_trace"))
    assert "this DAG is in bundle 'team_a_dags' of team 'team_a'" in str(error.get("stack_trace"))
    assert stack.api("GET", "dags/sneaky", check=False).status_code == 404
    assert not _import_errors(stack, "own_a.py") and not _import_errors(stack, "own_b.py")


def test_a_dag_declaring_its_own_teams_tenant_runs(teams_stack) -> None:
    """The task process parses the DAG's file from its bundle again, with the binding checked there too."""
    stack = teams_stack
    stack.wait_for_dag("own_a")
    stack.unpause("own_a")
    run_id = stack.trigger("own_a")
    assert stack.wait_for_run("own_a", run_id) == "success"
