"""Tenants bound to DAG bundles and teams (policy ``declared_by``): a DAG of one team cannot declare another
team's tenant. Refused at parse time by Airflow's own DagBag (an import error) and, at run time, by the
scheduler side, which records nothing of such a DAG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from barecount_provider import config, policy, tenancy

POLICY = """
version: 1
tenants:
  team_a:
    declared_by: {teams: [team_a]}
  team_b:
    declared_by: {teams: [team_b], bundles: [shared_dags]}
"""
BUNDLES = [
    {"name": "team_a_dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}, "team_name": "team_a"},
    {"name": "team_b_dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}, "team_name": "team_b"},
    {"name": "shared_dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
]

DAG_FILE = (
    "from datetime import datetime\n"
    "from airflow.providers.standard.operators.empty import EmptyOperator\n"
    "from airflow.sdk import DAG\n"
    "with DAG('{dag_id}', schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:{tenant}']):\n"
    "    EmptyOperator(task_id='a')\n"
    "    EmptyOperator(task_id='b'{task_tenant})\n"
)


@pytest.fixture(autouse=True)
def bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_PATH", str(tmp_path / "policy.yaml"))
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(BUNDLES))
    monkeypatch.setattr(tenancy, "_BUNDLE_OF_DAG", {})

    def clear() -> None:
        config.cache_clear()
        policy.get_policy.cache_clear()
        tenancy.bundle_teams.cache_clear()

    clear()
    yield
    clear()


def _bag(folder: Path, bundle: str, dag_id: str, tenant: str, task_tenant: str | None = None):
    from airflow.dag_processing.dagbag import BundleDagBag

    folder.mkdir(parents=True, exist_ok=True)
    extra = f", params={{'tenant': '{task_tenant}'}}" if task_tenant else ""
    (folder / f"{dag_id}.py").write_text(DAG_FILE.format(dag_id=dag_id, tenant=tenant, task_tenant=extra))
    return BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name=bundle)


def test_a_dag_of_one_team_declaring_another_teams_tenant_is_an_import_error(tmp_path: Path) -> None:
    bag = _bag(tmp_path / "a", "team_a_dags", "sneaky", "team_b")
    assert "sneaky" not in bag.dags
    (error,) = bag.import_errors.values()
    assert error == (
        "AirflowClusterPolicyViolation: BareCount: DAG 'sneaky': tenant 'team_b' may be declared only by DAGs of "
        f"teams team_b or bundles shared_dags (declared_by in {tmp_path / 'policy.yaml'}); this DAG is in bundle "
        "'team_a_dags' of team 'team_a'"
    )


def test_a_task_declaring_another_teams_tenant_refuses_its_dag(tmp_path: Path) -> None:
    bag = _bag(tmp_path / "a", "team_a_dags", "mixed_tasks", "team_a", task_tenant="team_b")
    assert "mixed_tasks" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "tenant 'team_b' may be declared only by DAGs of teams team_b" in error


@pytest.mark.parametrize(
    ("bundle", "tenant"),
    [
        ("team_a_dags", "team_a"),  # its own team
        ("team_b_dags", "team_b"),
        ("shared_dags", "team_b"),  # a bundle named in declared_by
        ("shared_dags", "unbound"),  # a tenant the policy does not bind
        ("team_a_dags", "unbound"),
    ],
)
def test_a_dag_may_declare_a_tenant_its_bundle_or_team_is_allowed(tmp_path: Path, bundle: str, tenant: str) -> None:
    bag = _bag(tmp_path / bundle, bundle, "fine", tenant)
    assert not bag.import_errors and "fine" in bag.dags


def test_the_default_tenant_is_bound_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__DEFAULT_TENANT", "team_b")
    config.cache_clear()
    from airflow.dag_processing.dagbag import BundleDagBag

    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "plain.py").write_text(
        "from datetime import datetime\nfrom airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "with DAG('plain', schedule=None, start_date=datetime(2026, 1, 1)):\n    EmptyOperator(task_id='a')\n"
    )
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="team_a_dags")
    assert "plain" not in bag.dags and "tenant 'team_b'" in next(iter(bag.import_errors.values()))


def test_a_dag_parsed_outside_any_bundle_is_not_judged(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "loose.py").write_text(DAG_FILE.format(dag_id="loose", tenant="team_b", task_tenant=""))
    bag = DagBag(dag_folder=str(tmp_path))
    assert not bag.import_errors and "loose" in bag.dags


def test_the_scheduler_side_records_nothing_of_a_dag_whose_bundle_may_not_declare_its_tenant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: a DAG serialized before the policy bound its tenant still has runs."""
    from types import SimpleNamespace

    from barecount_provider.runtime.scheduler_side import SchedulerSide

    monkeypatch.setattr(tenancy, "bundle_of_dag", {"stale": "team_a_dags", "own": "team_b_dags"}.get)
    side = SchedulerSide()
    stale = SimpleNamespace(dag_id="stale", tags=["tenant:team_b"], params={}, default_args={})
    own = SimpleNamespace(dag_id="own", tags=["tenant:team_b"], params={}, default_args={})
    assert side.tenant_of("stale", stale)[0] == "team_b" and side.opted_out("stale") is True
    assert side.tenant_of("own", own)[0] == "team_b" and side.opted_out("own") is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("declared_by: {teams: team_a}", "tenants.x.declared_by.teams: 'team_a' is not a list of Airflow team names"),
        ("declared_by: {bundles: ['']}", "tenants.x.declared_by.bundles[0]: '' is not a DAG bundle name (a non-empty string)"),
        ("declared_by: {team: [a]}", "tenants.x.declared_by.team: 'team' is not a known key (allowed: teams, bundles)"),
    ],
)
def test_declared_by_mistakes_are_named(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"version: 1\ntenants:\n  x:\n    {text}\n", encoding="utf-8")
    assert [str(problem) for problem in policy.validate_file(str(path))] == [f"{path}: {expected}"]


def test_sealing_a_run_by_hand_refuses_a_dag_whose_bundle_may_not_declare_its_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    """``barecount evidence seal`` (seal_run) writes nothing into the chain of a tenant the DAG may not declare."""
    from contextlib import contextmanager
    from datetime import UTC, datetime
    from types import SimpleNamespace

    import airflow.utils.session as airflow_session

    from barecount_provider.runtime import scheduler_side
    from barecount_provider.runtime import sealing as evidence_scheduler

    dag_run = SimpleNamespace(state="success", start_date=datetime(2026, 12, 7, tzinfo=UTC),
                              end_date=datetime(2026, 12, 7, 0, 1, tzinfo=UTC), run_type="manual")

    class Rows(list):
        def first(self):
            return dag_run

    @contextmanager
    def session():
        yield SimpleNamespace(scalars=lambda statement: Rows(["tenant:team_b"]))  # the run, then the DAG's tags

    monkeypatch.setattr(airflow_session, "create_session", session)
    monkeypatch.setattr(tenancy, "bundle_of_dag", {"stale": "team_a_dags"}.get)
    monkeypatch.setattr(scheduler_side, "get_scheduler_side", lambda: scheduler_side.SchedulerSide())
    sealed: list = []
    monkeypatch.setattr(evidence_scheduler, "_store", lambda: sealed.append("store") or pytest.fail("store opened"))
    with pytest.raises(ValueError, match=r"DAG run 'r1' of 'stale' is not sealed: tenant 'team_b' may be declared only"):
        evidence_scheduler.seal_run("stale", "r1", grace_seconds=0)
    assert sealed == []
