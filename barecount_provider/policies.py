"""Cluster policies (entry point ``airflow.policy``), applied by Airflow when a DAG file is parsed.

``dag_policy`` snapshots each DAG's declared identity params (tenant, pipeline, size, network profile,
opt-out) before any run's conf can be merged into them, so a user who triggers a run with
``{"tenant": "other"}`` cannot charge or read as another tenant. Later issues add retry policies and pools
through ``task_policy``.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

from barecount_provider import config, context

log = logging.getLogger(__name__)

hookimpl = pluggy.HookimplMarker("airflow.policy")


@hookimpl
def dag_policy(dag: Any) -> None:
    try:
        if config.enabled():
            context.snapshot_declared(dag)
    except Exception:  # a policy that raises fails the DAG's import; telemetry must never do that
        log.warning("BareCount could not snapshot the declared params of %s", getattr(dag, "dag_id", dag), exc_info=True)
