"""Tenants bound to DAG bundles (policy ``declared_by``), as the scheduler side checks them at run time: the
bundle of a DAG in Airflow's database, the team of a bundle, and whether a DAG's runs may be recorded under a
tenant. The cluster policies (:mod:`barecount_provider.cluster_policies`) check the same at parse time."""

from __future__ import annotations

import functools
import logging
import time

log = logging.getLogger(__name__)


@functools.cache
def bundle_teams() -> dict[str, str | None]:
    """DAG bundle name -> the team that owns it (None: no team), from ``[dag_processor]
    dag_bundle_config_list`` (``team_name``, with ``[core] multi_team``)."""
    from airflow.configuration import conf

    try:
        bundles = conf.getjson("dag_processor", "dag_bundle_config_list", fallback=None) or []
    except Exception:
        log.warning("BareCount could not read [dag_processor] dag_bundle_config_list", exc_info=True)
        return {}
    teams: dict[str, str | None] = {}
    for bundle in bundles if isinstance(bundles, list) else []:
        if isinstance(bundle, dict) and isinstance(bundle.get("name"), str):
            team = bundle.get("team_name")
            teams[bundle["name"]] = team if isinstance(team, str) and team else None
    return teams


_BUNDLE_OF_DAG: dict[str, tuple[float, str | None]] = {}
BUNDLE_TTL_SECONDS = 60.0
_REFUSALS_LOGGED: set[tuple[str, str]] = set()


def bundle_of_dag(dag_id: str) -> str | None:
    """The DAG bundle of ``dag_id`` in Airflow's database (the scheduler side); cached for a minute."""
    now = time.monotonic()
    cached = _BUNDLE_OF_DAG.get(dag_id)
    if cached is not None and now - cached[0] < BUNDLE_TTL_SECONDS:
        return cached[1]
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        bundle = session.scalar(select(DagModel.bundle_name).where(DagModel.dag_id == dag_id))
    _BUNDLE_OF_DAG[dag_id] = (now, bundle)
    return bundle


def tenant_refused_at_run_time(dag_id: str, tenant: str) -> str | None:
    """Why the runs of ``dag_id`` may not be recorded under ``tenant`` (policy ``declared_by``, the DAG's
    bundle and its team); None when they may. The scheduler side's defence in depth: a DAG refused at parse
    time has no runs, but a DAG parsed before the policy bound its tenant may still have some. A refused
    DAG's runs are recorded nowhere; the refusal is logged."""
    try:
        from barecount_provider.policy import PolicyError, get_policy

        try:
            policy = get_policy()
        except PolicyError:
            return None
        if not policy.binds_tenants:
            return None
        bundle = bundle_of_dag(dag_id)
        refusal = policy.declaration_refused(tenant, bundle, bundle_teams().get(bundle) if bundle else None)
    except Exception:
        log.warning("BareCount could not check the tenant of DAG %s", dag_id, exc_info=True)
        return None
    if refusal is not None and (dag_id, refusal) not in _REFUSALS_LOGGED:
        _REFUSALS_LOGGED.add((dag_id, refusal))
        log.error("BareCount records nothing of DAG %s: %s", dag_id, refusal)
    return refusal
