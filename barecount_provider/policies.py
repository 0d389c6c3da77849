"""Cluster policies (entry point ``airflow.policy``), applied by Airflow when a DAG file is parsed.

``dag_policy`` snapshots each DAG's declared identity params (tenant, pipeline, size, network profile,
opt-out) before any run's conf can be merged into them, so a user who triggers a run with
``{"tenant": "other"}`` cannot charge or read as another tenant.

``task_policy`` puts each BareCount runner task left in Airflow's ``default_pool`` into its tenant's pool,
``barecount_<tenant>_<runner_class>``, and fails the DAG file's import (``AirflowClusterPolicyViolation``, shown
as an import error) in the DAG processor when that pool does not exist (see
:mod:`barecount_provider.pools` and docs/pools.md). Later issues add retry policies through it.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

from barecount_provider import config, context, pools

log = logging.getLogger(__name__)

hookimpl = pluggy.HookimplMarker("airflow.policy")


@hookimpl
def dag_policy(dag: Any) -> None:
    try:
        if config.enabled():
            context.snapshot_declared(dag)
    except Exception:  # a policy that raises fails the DAG's import; telemetry must never do that
        log.warning("BareCount could not snapshot the declared params of %s", getattr(dag, "dag_id", dag), exc_info=True)


@hookimpl
def task_policy(task: Any) -> None:
    try:
        # Cheap exit first: this runs for every task of every DAG file parsed.
        if getattr(task, "pool", None) != pools.DEFAULT_POOL or not config.enabled():
            return
        pools.apply_to_task(task)
    except pools.MissingPool as err:
        if pools.in_dag_processor():
            from airflow.exceptions import AirflowClusterPolicyViolation

            raise AirflowClusterPolicyViolation(f"BareCount: {err}") from None
        # A task process, `dag.test()`, the CLI: the DAG processor reports it; the task keeps its pool here.
        log.warning("BareCount: %s", err)
    except Exception:  # a policy that raises fails the DAG's import: only a missing pool may do that
        log.warning("BareCount could not assign a pool to %s", getattr(task, "task_id", task), exc_info=True)
