"""Pools per tenant and runner class: the plan and the cluster policy on real operators (`barecount pools
sync/check` against a loopback HTTP server: tests/integration/test_pools.py).

The same commands run against a real Airflow 3.3 in tests/system/test_pools_real_run.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import cli, cluster_policies, config, pools
from barecount_provider.policy import parse_policy

from ..conftest import PolicyFile

POLICY = """
version: 1
defaults:
  allowed_runner_classes: [serverless, container, local]
  limits: {max_parallel_tasks: 4}
tenants:
  acme:
    limits: {max_parallel_tasks: 3}
  etl_team:
    allowed_runner_classes: [managed_etl, dedicated, local]
"""


@pytest.fixture
def pools_policy(policy_file: PolicyFile) -> Path:
    return policy_file(POLICY)


# ------------------------------------------------------------------------------------------- naming, plan


@pytest.mark.parametrize(
    "tenant, runner_class",
    [("acme", "container"), ("etl_team", "managed_etl"), ("a-b_c", "serverless"), ("x", "dedicated")],
)
def test_pool_names_round_trip(tenant, runner_class):
    name = pools.pool_name(tenant, runner_class)
    assert name == f"barecount_{tenant}_{runner_class}"
    assert pools.parse_pool_name(name) == (tenant, runner_class)


def test_parse_pool_name_rejects_other_pools():
    assert pools.parse_pool_name("default_pool") is None
    assert pools.parse_pool_name("barecount_acme_local") is None
    assert pools.parse_pool_name("barecount__container") is None


def test_desired_pools_cover_declared_tenants_and_the_default_tenant_without_local():
    policy = parse_policy(POLICY, source="policy.yaml")
    desired = {pool.name: (pool.slots, pool.include_deferred) for pool in pools.desired_pools(policy, "default")}
    assert desired == {
        "barecount_acme_container": (3, True),
        "barecount_acme_serverless": (3, True),
        "barecount_default_container": (4, True),
        "barecount_default_serverless": (4, True),
        "barecount_etl_team_dedicated": (4, True),
        "barecount_etl_team_managed_etl": (4, True),
    }
    # a default tenant the policy declares is not listed twice
    assert len(pools.desired_pools(policy, "acme")) == 4


def _existing(name: str, slots: int, *, managed: bool = True, include_deferred: bool = True) -> pools.ExistingPool:
    tenant, runner_class = pools.parse_pool_name(name) or ("?", "?")
    description = pools.pool_description(tenant, runner_class) if managed else "made by hand"
    return pools.ExistingPool(name, slots, description, include_deferred)


def test_plan_creates_updates_keeps_and_never_touches_other_pools():
    policy = parse_policy(POLICY, source="policy.yaml")
    existing = [
        pools.ExistingPool("default_pool", 128, "Default pool", False),
        pools.ExistingPool("reporting", 2, None, False),
        _existing("barecount_acme_container", 3),
        _existing("barecount_acme_serverless", 10),
        _existing("barecount_default_container", 4, include_deferred=False),
        _existing("barecount_default_serverless", 4, managed=False),
        _existing("barecount_gone_container", 5),
        _existing("barecount_handmade_container", 5, managed=False),
    ]
    actions = {a.name: a for a in pools.plan(pools.desired_pools(policy, "default"), existing)}
    assert "default_pool" not in actions and "reporting" not in actions
    assert {name: a.kind for name, a in actions.items()} == {
        "barecount_acme_container": "keep",
        "barecount_acme_serverless": "update",
        "barecount_default_container": "update",
        "barecount_default_serverless": "update",
        "barecount_etl_team_dedicated": "create",
        "barecount_etl_team_managed_etl": "create",
        "barecount_gone_container": "leave",
        "barecount_handmade_container": "leave",
    }
    assert actions["barecount_acme_serverless"].changes == ("slots 10 -> 3",)
    assert actions["barecount_default_container"].changes == ("include_deferred False -> True",)
    assert "adopts a pool BareCount did not create" in actions["barecount_default_serverless"].changes[0]
    assert "--prune deletes it" in actions["barecount_gone_container"].reason

    pruned = {a.name: a.kind for a in pools.plan(pools.desired_pools(policy, "default"), existing, prune=True)}
    assert pruned["barecount_gone_container"] == "delete"
    assert pruned["barecount_handmade_container"] == "leave"  # not created by BareCount: never deleted


# ------------------------------------------------------------------------------ the cluster policy, for real


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    """Sets the registry the way Airflow reads Variables everywhere first: AIRFLOW_VAR_<KEY>."""

    def set_registry(*names: str) -> None:
        value = json.dumps({"version": 1, "pools": dict.fromkeys(names, 4)})
        monkeypatch.setenv("AIRFLOW_VAR_BARECOUNT_POOLS", value)
        pools.registry_cache_clear()

    pools.registry_cache_clear()
    yield set_registry
    pools.registry_cache_clear()


def _dag(**kwargs: Any):
    from airflow.sdk import DAG

    return DAG(dag_id=kwargs.pop("dag_id", "pools_unit"), schedule=None, start_date=datetime(2026, 1, 1), **kwargs)


def test_runner_tasks_plain_and_mapped_get_their_tenant_pool(registry):
    from airflow.providers.standard.operators.python import PythonOperator

    from barecount_provider.operators.glue import GlueRunnerOperator
    from barecount_provider.operators.kubernetes import KubernetesRunnerOperator
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry("barecount_acme_serverless", "barecount_acme_container", "barecount_globex_managed_etl")
    with _dag(tags=["tenant:acme"]):
        ingest = LambdaRunnerOperator(task_id="ingest", function_name="f")
        fan_out = KubernetesRunnerOperator.partial(task_id="fan_out", name="p", image="busybox").expand(
            arguments=[["1"], ["2"]]
        )
        glue = GlueRunnerOperator(task_id="glue", job_name="j", tenant="globex")
        pinned = LambdaRunnerOperator(task_id="pinned", function_name="f", pool="reserved")
        local = PythonOperator(task_id="local", python_callable=lambda: None)
    for task in (ingest, fan_out, glue, pinned, local):
        cluster_policies.task_policy(task)
    assert ingest.pool == "barecount_acme_serverless"
    assert fan_out.pool == "barecount_acme_container"  # a mapped task's partial kwargs
    assert glue.pool == "barecount_globex_managed_etl"  # the operator's own tenant wins over the tag
    assert pinned.pool == "reserved"  # an explicit pool is left alone
    assert local.pool == "default_pool"  # not a runner task


def test_the_tenant_comes_from_the_dag_declaration_then_the_default_tenant(registry, monkeypatch):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry("barecount_initech_serverless", "barecount_house_serverless", "barecount_umbrella_serverless")
    with _dag(dag_id="by_params", params={"tenant": "initech"}, tags=["tenant:acme"]):
        by_params = LambdaRunnerOperator(task_id="t", function_name="f")
    with _dag(dag_id="by_default_args", default_args={"tenant": "umbrella"}):
        by_default_args = LambdaRunnerOperator(task_id="t", function_name="f")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__DEFAULT_TENANT", "house")
    config.cache_clear()
    with _dag(dag_id="undeclared"):
        undeclared = LambdaRunnerOperator(task_id="t", function_name="f")
    for task in (by_params, by_default_args, undeclared):
        cluster_policies.task_policy(task)
    assert (by_params.pool, by_default_args.pool, undeclared.pool) == (
        "barecount_initech_serverless",
        "barecount_umbrella_serverless",
        "barecount_house_serverless",
    )


def test_without_a_registry_pools_are_off(registry):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    with _dag(tags=["tenant:acme"]):
        task = LambdaRunnerOperator(task_id="t", function_name="f")
    cluster_policies.task_policy(task)
    assert task.pool == "default_pool"


def test_a_missing_pool_fails_the_import_in_the_dag_processor_only(registry, monkeypatch, caplog, pools_policy):
    from airflow.exceptions import AirflowClusterPolicyViolation

    from barecount_provider.operators.ec2 import DedicatedComputeOperator
    from barecount_provider.operators.glue import GlueRunnerOperator
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry("barecount_acme_serverless")
    with _dag(tags=["tenant:acme"]):
        undeclared = LambdaRunnerOperator(task_id="undeclared", function_name="f", tenant="nobody")
        not_allowed = DedicatedComputeOperator(task_id="not_allowed", image_id="ami-1", commands=["true"])
        not_synced = GlueRunnerOperator(task_id="not_synced", job_name="j", tenant="etl_team")

    # a task process, dag.test(), the CLI: a warning; the task keeps default_pool
    cluster_policies.task_policy(undeclared)
    assert undeclared.pool == "default_pool"
    assert "pool 'barecount_nobody_serverless'" in caplog.text

    monkeypatch.setattr(pools, "in_dag_processor", lambda: True)
    with pytest.raises(AirflowClusterPolicyViolation, match="tenant 'nobody' is not declared in the policy"):
        cluster_policies.task_policy(undeclared)
    with pytest.raises(AirflowClusterPolicyViolation, match="tenant 'acme' may not use runner class 'dedicated'"):
        cluster_policies.task_policy(not_allowed)
    # declared, allowed, but the registry does not list it: the policy changed since the last sync
    with pytest.raises(AirflowClusterPolicyViolation, match="run `barecount pools sync` to create it"):
        cluster_policies.task_policy(not_synced)


def test_a_dagbag_reports_the_missing_pool_as_an_import_error(registry, monkeypatch, tmp_path):
    """The entry point is installed: Airflow's own DagBag calls task_policy and records the violation."""
    from airflow.dag_processing.dagbag import DagBag

    registry("barecount_acme_serverless")
    monkeypatch.setattr(pools, "in_dag_processor", lambda: True)
    (tmp_path / "beta_dag.py").write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from barecount_provider.operators.lambda_function import LambdaRunnerOperator\n"
        "with DAG('beta_dag', schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:beta']):\n"
        "    LambdaRunnerOperator(task_id='ingest', function_name='f')\n"
        "with DAG('acme_dag', schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:acme']):\n"
        "    LambdaRunnerOperator(task_id='ingest', function_name='f')\n"
    )
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert error.startswith("AirflowClusterPolicyViolation: BareCount: task 'ingest': pool 'barecount_beta_serverless'")
    assert bag.dags["acme_dag"].get_task("ingest").pool == "barecount_acme_serverless"


def test_in_dag_processor_is_false_here():
    assert pools.in_dag_processor() is False


class _Weird:
    task_id = "weird"
    runner_class = "container"

    @property
    def pool(self) -> str:
        raise RuntimeError("no pool for you")


def test_the_policy_never_crashes_on_unexpected_objects(registry, caplog):
    registry("barecount_default_container")
    for thing in (None, object(), "a string", _Weird()):
        cluster_policies.task_policy(thing)

    class Impostor:
        pool = "default_pool"
        runner_class = "container"  # a class attribute, but no dag, no task_id

    impostor = Impostor()
    cluster_policies.task_policy(impostor)  # resolves to the default tenant's pool
    assert impostor.pool == "barecount_default_container"


def test_a_corrupt_registry_turns_pools_off_with_a_warning(monkeypatch, caplog):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    monkeypatch.setenv("AIRFLOW_VAR_BARECOUNT_POOLS", "not json")
    pools.registry_cache_clear()
    with _dag(tags=["tenant:acme"]):
        task = LambdaRunnerOperator(task_id="t", function_name="f")
    cluster_policies.task_policy(task)
    assert task.pool == "default_pool"
    assert "is not a pool registry written by `barecount pools sync`" in caplog.text
    pools.registry_cache_clear()


def test_the_master_switch_turns_pools_off(registry, monkeypatch):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry()  # an empty registry: every runner pool is missing
    monkeypatch.setenv("AIRFLOW__BARECOUNT__ENABLED", "False")
    config.cache_clear()
    monkeypatch.setattr(pools, "in_dag_processor", lambda: True)
    with _dag(tags=["tenant:acme"]):
        task = LambdaRunnerOperator(task_id="t", function_name="f")
    cluster_policies.task_policy(task)
    assert task.pool == "default_pool"


def test_the_registry_is_read_once_per_ttl(registry, monkeypatch):
    registry("barecount_acme_serverless")
    assert pools.known_pools() == {"barecount_acme_serverless"}
    monkeypatch.setenv("AIRFLOW_VAR_BARECOUNT_POOLS", json.dumps({"version": 1, "pools": {}}))
    assert pools.known_pools() == {"barecount_acme_serverless"}  # cached
    pools.registry_cache_clear()
    assert pools.known_pools() == frozenset()


@pytest.mark.parametrize("argv", [["pools", "--help"], ["pools", "sync", "--help"], ["pools", "check", "--help"]])
def test_pools_subcommands_have_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    assert "usage: barecount pools" in capsys.readouterr().out
