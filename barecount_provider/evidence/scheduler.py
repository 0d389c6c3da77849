"""The scheduler side's part of the evidence: one Assembler per process, fed when a DAG run finishes and
ticked by the scheduler side's background thread until every waiting run is sealed."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from typing import Any

from barecount_provider import config
from barecount_provider.evidence.assemble import Assembler, PendingRun
from barecount_provider.evidence.store import EvidenceStore, open_store

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
    from barecount_provider.telemetry.scheduler_side import get_scheduler_side

    side = get_scheduler_side()
    return Assembler(_store, side._load_tries, config.evidence_grace_seconds, on_error=_error)


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


def tick() -> list[dict[str, Any]]:
    """Retry the waiting runs (sealed ones are returned)."""
    if not config.evidence_on():
        return []
    assembler = get_assembler()
    return assembler.tick() if assembler.pending else []


def clear_caches() -> None:
    _store.cache_clear()
    get_assembler.cache_clear()


def seal_run(dag_id: str, run_id: str, *, grace_seconds: int | None = None) -> dict[str, Any] | None:
    """Assemble one finished DAG run now, from Airflow's database (``barecount evidence seal``, and after
    ``dag.test()``, which has no scheduler). ``grace_seconds`` 0 seals even with entries missing."""
    from datetime import timedelta

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from barecount_provider.evidence.assemble import assemble, expected_tries
    from barecount_provider.telemetry.filesink import state_name
    from barecount_provider.telemetry.scheduler_side import _run_type, get_scheduler_side

    with create_session() as session:
        dag_run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
        if dag_run is None:
            raise LookupError(f"no DAG run {run_id!r} of DAG {dag_id!r}")
        state, start, end = state_name(dag_run.state), dag_run.start_date, dag_run.end_date
        run_type = _run_type(dag_run)
    if state not in ("success", "failed"):
        raise ValueError(f"DAG run {run_id!r} of {dag_id!r} is {state}: only a finished run is sealed")
    side = get_scheduler_side()
    tenant, pipeline = side.tenant_of(dag_id, force=True)
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
        expected_tries(side._load_tries(dag_id, run_id)),
        now=datetime.now(UTC),
        grace=timedelta(seconds=grace),
        trace_id=f"{context.trace_id_for(dag_id, run_id):032x}",
    )
