"""What Airflow's metadata database says about DAGs and their runs, as the scheduler side and the sealing of
evidence records read it: the tenant of a DAG, the tries of a run (with their hosts), a run's type."""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace
from typing import Any

from barecount_provider import config, context
from barecount_provider.telemetry.filesink import state_name
from barecount_provider.telemetry.metrics import EMIT_FAILURES


def run_type_of(dag_run: Any) -> str | None:
    """A DAG run's type as Airflow names it (``manual``, ``scheduled``, ``backfill``, ``asset_triggered``...)."""
    value = getattr(dag_run, "run_type", None)
    value = getattr(value, "value", value)  # DagRunType is a str enum
    return str(value) if value else None


def load_tries(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every try of the run: the latest from task_instance, earlier ones from task_instance_history, each
    with the host that ran it (``hostname``: Airflow's, "" until a worker took the try)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    rows: list[dict[str, Any]] = []
    with create_session() as session:
        for model, latest in ((TaskInstance, True), (TaskInstanceHistory, False)):
            query = select(
                model.task_id, model.map_index, model.try_number, model.state,
                model.queued_dttm, model.start_date, model.end_date, model.pid, model.hostname,
            ).where(model.dag_id == dag_id, model.run_id == run_id)
            for r in session.execute(query):
                rows.append(
                    {
                        "dag_id": dag_id, "run_id": run_id, "task_id": r.task_id, "map_index": r.map_index,
                        "try_number": r.try_number, "state": state_name(r.state), "queued_dttm": r.queued_dttm,
                        "start_date": r.start_date, "end_date": r.end_date, "pid": r.pid, "latest": latest,
                        "hostname": r.hostname or None,
                    }
                )
    return rows


class DagTenants:
    """The (tenant, pipeline) of each DAG and whether it opted out, as the scheduler side records them: from the
    DAG object when at hand, else from its tags in Airflow's database; cached, read again when stale."""

    TTL_SECONDS = 60.0

    def __init__(self) -> None:
        self._pairs: dict[str, tuple[str, str]] = {}
        self._read_at: dict[str, float] = {}
        self._opted_out: dict[str, bool] = {}

    def tenant_of(
        self, dag_id: str, dag: Any = None, conf_keys: frozenset[str] = frozenset(), force: bool = False
    ) -> tuple[str, str]:
        """(tenant, pipeline) of a DAG, from the DAG object when at hand, else its tags in the database.

        ``conf_keys``: the run's conf keys, whose live param values are not trusted (a run's conf must never
        choose the tenant)."""
        if dag is not None and conf_keys & set(context.IDENTITY_KEYS):
            # The run's conf names an identity key: read the declared params from a fresh copy of the
            # serialized DAG, which no run's conf has touched.
            try:
                from airflow.models.serialized_dag import SerializedDagModel

                fresh = SerializedDagModel.get_dag(dag_id)
                if fresh is not None:
                    dag, conf_keys = fresh, frozenset()
            except Exception:
                EMIT_FAILURES.record("scheduler_side", "serialized_dag")
        if dag is not None:
            self._opted_out[dag_id] = context.is_opted_out(dag, conf_keys)
            tenant = context.declared(None, dag, "tenant", conf_keys) or config.default_tenant()
            pipeline = context.declared(None, dag, "pipeline", conf_keys) or dag_id
            self._pairs[dag_id] = (tenant, pipeline)
            self._refuse_unbound_tenant(dag_id, tenant)
            return tenant, pipeline
        cached = self._pairs.get(dag_id)
        if cached and not force:
            return cached
        tags: set[str] = set()
        try:
            from airflow.models.dag import DagTag
            from airflow.utils.session import create_session
            from sqlalchemy import select

            with create_session() as session:
                tags = set(session.scalars(select(DagTag.name).where(DagTag.dag_id == dag_id)))
        except Exception:
            EMIT_FAILURES.record("scheduler_side", "tags")
        holder = SimpleNamespace(tags=tags)  # a DAG as far as context.declared() looks
        self._opted_out[dag_id] = context.is_opted_out(holder)
        tenant = context.declared(None, holder, "tenant") or config.default_tenant()
        pipeline = context.declared(None, holder, "pipeline") or dag_id
        self._pairs[dag_id] = (tenant, pipeline)
        self._read_at[dag_id] = time.monotonic()
        self._refuse_unbound_tenant(dag_id, tenant)
        return tenant, pipeline

    def _refuse_unbound_tenant(self, dag_id: str, tenant: str) -> None:
        """A DAG whose bundle may not declare its tenant (policy ``declared_by``) is recorded nowhere: never in
        that tenant's chain (:func:`barecount_provider.tenancy.tenant_refused_at_run_time`)."""
        from barecount_provider.tenancy import tenant_refused_at_run_time

        refusal = tenant_refused_at_run_time(dag_id, tenant)
        if refusal is not None:
            self._opted_out[dag_id] = True

    def opted_out(self, dag_id: str) -> bool:
        """Whether the DAG opted out (tag or declared param); resolves the DAG first when needed."""
        if dag_id not in self._opted_out:
            self.tenant_of(dag_id)
        return self._opted_out.get(dag_id, False)

    def cached(self, dag_id: str) -> tuple[str, str] | None:
        return self._pairs.get(dag_id)

    def stale(self, dag_id: str) -> bool:
        """Whether the DAG's tenant was read from its tags longer than :data:`TTL_SECONDS` ago (or never)."""
        return time.monotonic() - self._read_at.get(dag_id, 0.0) > self.TTL_SECONDS


@functools.cache
def get_dag_tenants() -> DagTenants:
    """The process's tenants of DAGs (shared by the scheduler side and the sealing of runs)."""
    return DagTenants()
