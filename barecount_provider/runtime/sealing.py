"""The scheduler side's part of the evidence: one Assembler per process, fed when a DAG run finishes and
ticked by the scheduler side's background thread until every waiting run is sealed."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from barecount_provider import config
from barecount_provider.evidence.assemble import REASON_EVENTS, AirflowEvent, Assembler, PendingRun
from barecount_provider.evidence.store import EvidenceStore, open_store
from barecount_provider.runtime.dag_runs import get_dag_tenants, load_tries, run_type_of

log = logging.getLogger(__name__)

TICK_SECONDS = 5.0


def prepare() -> None:
    """On the scheduler's main thread, before any BareCount thread exists: import and first-use what the
    assembler needs (SQLAlchemy's dialect, sqlite3, boto3 for the s3 store), so a background thread of this
    forking process never imports (see scheduler_side.SchedulerSide.prepare)."""
    if not config.evidence_on():
        return
    import barecount_provider.cost  # noqa: F401
    from barecount_provider.evidence import record, spool  # noqa: F401

    record.this_host()  # Airflow's hostname_callable, imported and asked here, once
    store = _store()
    with store.index.engine.connect():
        pass


@functools.cache
def _store() -> EvidenceStore:
    return open_store()


def _error(what: str) -> None:
    from barecount_provider.telemetry.metrics import EMIT_FAILURES

    EMIT_FAILURES.record("evidence", what)


@functools.cache
def get_assembler() -> Assembler:
    return Assembler(
        _store, load_tries, config.evidence_grace_seconds, on_error=_error, load_events=load_try_events,
    )  # fmt: skip


def load_try_events(dag_id: str, run_id: str) -> dict[tuple[str, int, int], list[AirflowEvent]]:
    """(task_id, map_index, try_number) -> what Airflow's audit log (its ``log`` table) says ended each try of
    the run without its task process: the events of :data:`~barecount_provider.evidence.assemble.REASON_EVENTS`
    (a heartbeat timeout, an executor's report of a try Airflow still had running), oldest first."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (
        select(Log.task_id, Log.map_index, Log.try_number, Log.event, Log.dttm, Log.extra)
        .where(Log.dag_id == dag_id, Log.run_id == run_id, Log.event.in_(tuple(REASON_EVENTS)))
        .order_by(Log.dttm, Log.id)
    )
    events: dict[tuple[str, int, int], list[AirflowEvent]] = {}
    with create_session() as session:
        for row in session.execute(query):
            if row.task_id is None or row.try_number is None:
                continue
            key = (str(row.task_id), -1 if row.map_index is None else int(row.map_index), int(row.try_number))
            events.setdefault(key, []).append(AirflowEvent(str(row.event), row.dttm, row.extra))
    return events


def other_hosts(seen: set[str], own: str | None) -> list[str]:
    """The hosts of ``seen`` other than ``own`` (this machine); without a name for this machine, all of
    them when there are several."""
    if own:
        return sorted(seen - {own})
    return sorted(seen) if len(seen) > 1 else []


def warn_hosts_at_start(*, now: datetime | None = None) -> list[str]:
    """With the ``local`` store: the hosts other than this scheduler's that ran tries in the last
    :data:`RECOVER_DAYS` days (Airflow's task instances), said in the component log when the scheduler
    starts. Their entries are written to their own disks, which this store never reads. Raises on a
    database error (the caller counts it)."""
    if not config.evidence_on() or config.evidence_store() != "local":
        return []
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from barecount_provider.evidence.assemble import LOCAL_STORE_FIX
    from barecount_provider.evidence.record import this_host

    since = (now or datetime.now(UTC)) - timedelta(days=RECOVER_DAYS)
    with create_session() as session:
        seen = {
            str(host)
            for host in session.scalars(
                select(TaskInstance.hostname).where(TaskInstance.end_date >= since, TaskInstance.hostname != "").distinct()
            )
            if host
        }
    own = this_host()
    others = other_hosts(seen, own)
    if others:
        log.warning(
            "BareCount's evidence store is local (on %s) but tries ran on %s in the last %d days: their entries "
            "stay on those machines and their runs are sealed incomplete; fix: %s",
            own or "this machine", ", ".join(others), RECOVER_DAYS, LOCAL_STORE_FIX,
        )  # fmt: skip
    return others


def run_finished(
    *,
    dag_id: str,
    run_id: str,
    state: str,
    started_at: datetime | None,
    ended_at: datetime | None,
    tenant: str,
    pipeline: str,
    rows: list[dict[str, Any]],
    run_type: str | None = None,
) -> dict[str, Any] | None:
    """Queue the run for sealing and try at once (the scheduler side's thread calls it)."""
    if not config.evidence_on():
        return None
    run = PendingRun(
        dag_id=dag_id,
        run_id=run_id,
        tenant=tenant,
        pipeline=pipeline,
        state=state,
        started_at=started_at,
        ended_at=ended_at or datetime.now(UTC),
        run_type=run_type,
    )
    return get_assembler().run_finished(run, rows)


def tick(now: datetime | None = None) -> list[dict[str, Any]]:
    """Retry the waiting runs (sealed ones are returned), after looking again at the runs :func:`recover`
    left to be looked at again whose time has come."""
    if not config.evidence_on():
        return []
    now = now or datetime.now(UTC)
    due = [key for key, at in _LOOK_AGAIN.items() if at <= now]
    if due:
        recover(now=now, only=due)  # raises like recover: the caller counts it, the runs stay due
        for key in due:
            _LOOK_AGAIN.pop(key, None)
    assembler = get_assembler()
    return assembler.tick(now) if assembler.pending else []


RECOVER_DAYS = 7
"""How far back a starting scheduler looks for finished runs with entries but no record."""

_LOOK_AGAIN: dict[tuple[str, str], datetime] = {}
"""Runs :func:`recover` found with no entry yet that ended less than a grace period before: (dag_id, run_id)
-> when :func:`tick` looks at them again (their end + the grace period)."""


def recover(*, now: datetime | None = None, only: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Queue for sealing every finished run a scheduler left unsealed (stopped, crashed or killed before the
    grace period ended, or before its background thread took the run's end); the scheduler side's thread
    calls it when the scheduler starts. Such a run is found two ways, both from what is stored:

    * in the pending table (:func:`~barecount_provider.evidence.assemble.remember_pending`): every run not
      sealed at once is written there and removed when sealed;
    * from Airflow's records: a DAG run that finished (success or failed) in the last :data:`RECOVER_DAYS`
      days, has entries in the store and no record in the index. A run that ended less than a grace period
      ago may have entries still on their way (spooled by a task whose forwarder was killed with the
      scheduler, forwarded by the next one): with none yet, it is looked at again when its grace period
      ends (:func:`tick`), and left alone if it has none then either.

    ``only``: look at these runs alone (the ones due again). Each is sealed with what is stored now (its tries
    from Airflow's database, its entries from the store), at once when its grace period is over, else at a
    later tick. Returns the runs queued. Raises on a database error (the caller counts it and tries again)."""
    if not config.evidence_on():
        return []
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from barecount_provider.evidence import assemble as assemble_module
    from barecount_provider.evidence.record import record_id_for
    from barecount_provider.evidence.store import records_table
    from barecount_provider.telemetry.filesink import state_name

    now = now or datetime.now(UTC)
    if only is None:  # the start's look, not a run looked at again
        try:
            warn_hosts_at_start(now=now)
        except Exception:  # a warning only: recovery goes on
            log.debug("BareCount could not read the hosts of the recent tries", exc_info=True)
            _error("hosts")
    store = _store()
    remembered = set(assemble_module.stored_pending(store)) if only is None else set()
    since = _seen_since(store) if only is None else None
    columns = (DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date, DagRun.run_type)
    runs: dict[tuple[str, str], Any] = {}
    with create_session() as session:
        if since is not None:  # nothing in the index yet: no run to derive (before BareCount's first record)
            cutoff = max(now - timedelta(days=RECOVER_DAYS), since)
            recent = session.execute(
                select(*columns).where(DagRun.state.in_(("success", "failed")), DagRun.end_date >= cutoff)
            ).all()
            runs.update({(row.dag_id, row.run_id): row for row in recent})
        missing = [key for key in (remembered if only is None else only) if key not in runs]
        for dag_id, run_id in missing:
            row = session.execute(select(*columns).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
            if row is not None:
                runs[(dag_id, run_id)] = row
    ids = {record_id_for(*key): key for key in runs}
    sealed: set[str] = set()
    id_list = sorted(ids)
    with store.index.engine.connect() as connection:
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            sealed.update(connection.scalars(select(records_table.c.record_id).where(records_table.c.record_id.in_(chunk))))
    tenants_of_dags = get_dag_tenants()
    assembler = get_assembler()
    grace = timedelta(seconds=config.evidence_grace_seconds())
    tenants: dict[str, tuple[str, str]] = {}
    queued: list[tuple[str, str]] = []
    for record_id, key in sorted(ids.items(), key=lambda item: item[1]):
        dag_id, run_id = key
        row = runs[key]
        state = state_name(row.state)
        if record_id in sealed or state not in ("success", "failed"):
            if key in remembered:  # sealed meanwhile, or the run was cleared: its next end brings it back
                assemble_module.forget_pending(store, dag_id, run_id)
            continue
        if key in assembler.pending:
            continue
        if dag_id not in tenants:
            tenants[dag_id] = tenants_of_dags.tenant_of(dag_id, force=True)  # once per DAG: its tags, read now
        tenant, pipeline = tenants[dag_id]
        if tenants_of_dags.opted_out(dag_id):
            if key in remembered:
                assemble_module.forget_pending(store, dag_id, run_id)
            continue
        if key not in remembered and not store.entries_for_run(dag_id, run_id):
            ended = row.end_date or now
            if only is None and now < ended + grace:
                _LOOK_AGAIN[key] = ended + grace  # its entries may be on their way
            continue  # no entry, never pending: a run BareCount did not see (evidence off at the time)
        run = PendingRun(
            dag_id=dag_id, run_id=run_id, tenant=tenant, pipeline=pipeline, state=state, started_at=row.start_date,
            ended_at=row.end_date or now, run_type=run_type_of(row), remembered=key in remembered,
        )
        log.info("BareCount seals the evidence of %s %s, left unsealed by a scheduler that stopped", dag_id, run_id)
        assembler.run_finished(run)
        queued.append(key)
    return queued


def _seen_since(store: EvidenceStore) -> datetime | None:
    """Since when BareCount has been sealing runs here: a day before the earliest run end of the index's
    records or the pending table's rows (a margin for runs sealed out of order); None when both are empty."""
    import sqlalchemy as sa

    from barecount_provider.evidence.store import pending_table, records_table

    with store.index.engine.connect() as connection:
        ended = connection.scalar(sa.select(sa.func.min(records_table.c.ended_epoch)))
        added = connection.scalar(sa.select(sa.func.min(pending_table.c.added_epoch)))
    epochs = [float(value) for value in (ended, added) if value]
    if not epochs:
        return None
    return datetime.fromtimestamp(min(epochs), UTC) - timedelta(days=1)


def clear_caches() -> None:
    _store.cache_clear()
    get_assembler.cache_clear()
    _LOOK_AGAIN.clear()


def seal_run(dag_id: str, run_id: str, *, grace_seconds: int | None = None) -> dict[str, Any] | None:
    """Assemble one finished DAG run now, from Airflow's database (``barecount evidence seal``, and after
    ``dag.test()``, which has no scheduler). ``grace_seconds`` 0 seals even with entries missing."""
    from datetime import timedelta

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from barecount_provider.evidence.assemble import assemble, expected_tries
    from barecount_provider.telemetry.filesink import state_name

    with create_session() as session:
        dag_run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
        if dag_run is None:
            raise LookupError(f"no DAG run {run_id!r} of DAG {dag_id!r}")
        state, start, end = state_name(dag_run.state), dag_run.start_date, dag_run.end_date
        run_type = run_type_of(dag_run)
    if state not in ("success", "failed"):
        raise ValueError(f"DAG run {run_id!r} of {dag_id!r} is {state}: only a finished run is sealed")
    tenants_of_dags = get_dag_tenants()
    tenant, pipeline = tenants_of_dags.tenant_of(dag_id, force=True)
    from barecount_provider.tenancy import tenant_refused_at_run_time

    refusal = tenant_refused_at_run_time(dag_id, tenant)
    if refusal is not None:  # never into the chain of a tenant the DAG may not declare (policy declared_by)
        raise ValueError(f"DAG run {run_id!r} of {dag_id!r} is not sealed: {refusal}")
    run = PendingRun(
        dag_id=dag_id,
        run_id=run_id,
        tenant=tenant,
        pipeline=pipeline,
        state=state,
        started_at=start,
        ended_at=end or datetime.now(UTC),
        run_type=run_type,
    )
    grace = config.evidence_grace_seconds() if grace_seconds is None else grace_seconds
    from barecount_provider import context

    return assemble(
        _store(),
        run,
        expected_tries(load_tries(dag_id, run_id)),
        now=datetime.now(UTC),
        grace=timedelta(seconds=grace),
        trace_id=f"{context.trace_id_for(dag_id, run_id):032x}",
        load_events=lambda: load_try_events(dag_id, run_id),
    )
