"""Cluster policies (entry point ``airflow.policy``), applied by Airflow when a DAG file is parsed.

``dag_policy`` snapshots each DAG's declared identity params (tenant, pipeline, size, network profile,
opt-out) before any run's conf can be merged into them, so a user who triggers a run with
``{"tenant": "other"}`` cannot charge or read as another tenant.

``task_policy`` puts each BareCount runner task left in Airflow's ``default_pool`` into its tenant's pool,
``barecount_<tenant>_<runner_class>``, and fails the DAG file's import (``AirflowClusterPolicyViolation``, shown
as an import error) in the DAG processor when that pool does not exist (see
:mod:`barecount_provider.pools` and docs/pools.md). It then gives every task of a DAG that has not opted out
its tenant's retries, backoff and BareCount's retry policy (:func:`barecount_provider.recovery.retry.attach`,
docs/recovery.md): the policy object is never serialized, so this runs again in the task process, where the
DAG file is parsed once more and the retry policy is evaluated.
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
        if not config.enabled():
            return
    except Exception:
        log.warning("BareCount could not read its configuration", exc_info=True)
        return
    try:
        in_default_pool = getattr(task, "pool", None) == pools.DEFAULT_POOL  # cheap test first: runs for every task
    except Exception:
        log.warning("BareCount could not read the pool of %s", getattr(task, "task_id", task), exc_info=True)
        in_default_pool = False
    if in_default_pool:
        _assign_pool(task)
    try:
        # Imported here: it imports Airflow's task SDK, which loads the policy plugins, this module included.
        from barecount_provider.recovery import retry

        retry.attach(task)
    except Exception:  # a policy that raises fails the DAG's import: only a missing pool may do that
        log.warning("BareCount could not attach its retry policy to %s", getattr(task, "task_id", task), exc_info=True)


def _assign_pool(task: Any) -> None:
    try:
        pools.apply_to_task(task)
    except pools.MissingPool as err:
        if pools.in_dag_processor():
            from airflow.exceptions import AirflowClusterPolicyViolation

            raise AirflowClusterPolicyViolation(f"BareCount: {err}") from None
        # A task process, `dag.test()`, the CLI: the DAG processor reports it; the task keeps its pool here.
        log.warning("BareCount: %s", err)
    except Exception:  # a policy that raises fails the DAG's import: only a missing pool may do that
        log.warning("BareCount could not assign a pool to %s", getattr(task, "task_id", task), exc_info=True)
