"""Retry budgets held where every worker can reach them: the evidence index's database.

Every retry decision of a transient failure goes through :meth:`RetryLedger.spend`, in one transaction:

1. take the locks of the budgets it touches (a row per DAG run and per window key in
   ``barecount_retry_locks``, inserted if missing, then updated: a row lock on PostgreSQL, the database's
   write lock on SQLite), always in the same order, so deciders of the same run or window queue up;
2. count the retries already granted (``barecount_retry_ledger``): of this task in this run, of this run,
   and of the tenant (or pipeline) within the rolling window;
3. write this try's decision: ``granted`` when every count is below its limit, else ``refused`` with the
   first budget that is spent (per task, per run, per window).

A try is decided once: the ledger row is unique per (dag_id, run_id, task_id, map_index, try_number), and a
second call returns the first decision. Refused and granted tries stay in the ledger (the audit trail);
:meth:`RetryLedger.prune` drops rows older than a cut-off.

SQLAlchemy Core, so SQLite (the embedded default) and PostgreSQL (production, many machines) run the same
statements; ``[barecount] evidence_index_url`` names the database.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from barecount_provider import config, db
from barecount_provider.db.schema import retry_ledger_table as ledger_table
from barecount_provider.db.schema import retry_locks_table as locks_table
from barecount_provider.policy import RetryBudget

GRANTED = "granted"
REFUSED = "refused"

PER_TASK = "max_retries_per_task"
PER_RUN = "max_retries_per_run"
PER_WINDOW = "max_retries_per_window"



@dataclass(frozen=True)
class RetryRequest:
    """One failed try that asks for a retry."""

    tenant: str
    pipeline: str
    runner_class: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    failure: str = ""


@dataclass(frozen=True)
class Decision:
    """The ledger's answer. ``spent``: retries granted before this one, per budget (task, run, window)."""

    granted: bool
    budget: str | None  # refused: PER_TASK, PER_RUN or PER_WINDOW
    limit: int | None
    spent: dict[str, int]
    window_seconds: int
    window_key: str
    replayed: bool = False  # this try had been decided before: the first decision, returned again

    def describe(self, budget: RetryBudget) -> str:
        """The refusal's reason: the budget, its limit and its window."""
        if self.granted:
            return "retry granted"
        where = {
            PER_TASK: "of this task in this DAG run",
            PER_RUN: "of this DAG run",
            PER_WINDOW: f"of {self.window_key} in the last {budget.window_seconds} s (rolling window)",
        }[self.budget or PER_WINDOW]
        return f"retry budget exhausted: {self.budget} = {self.limit} retries {where} already spent"


def window_key(budget: RetryBudget, tenant: str, pipeline: str) -> str:
    return f"tenant {tenant!r}" if budget.window_scope == "tenant" else f"pipeline {pipeline!r} of tenant {tenant!r}"


def _lock_key(scope: str, *parts: str) -> str:
    return hashlib.sha256("\x1f".join((scope, *parts)).encode()).hexdigest()


class RetryLedger:
    """The budget counters in one database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = db.create_engine(url, immediate=True)
        db.ensure_schema(self.engine)

    # -------------------------------------------------------------------------------------------- locking

    def _insert_ignore(self, connection: sa.Connection, table: sa.Table, values: dict[str, Any]) -> None:
        dialect = connection.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            connection.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            connection.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())
        else:  # pragma: no cover - other databases: a savepoint around a plain insert
            try:
                with connection.begin_nested():
                    connection.execute(sa.insert(table).values(**values))
            except sa.exc.IntegrityError:
                pass

    def _lock(self, connection: sa.Connection, keys: list[tuple[str, str]], now: float) -> None:
        for lock_key, scope in sorted(keys):
            self._insert_ignore(connection, locks_table, {"lock_key": lock_key, "scope": scope, "touched_epoch": now})
            connection.execute(
                sa.update(locks_table).where(locks_table.c.lock_key == lock_key).values(touched_epoch=now)
            )

    # ------------------------------------------------------------------------------------------- spending

    def _count(self, connection: sa.Connection, *conditions: Any) -> int:
        query = sa.select(sa.func.count()).select_from(ledger_table).where(ledger_table.c.outcome == GRANTED, *conditions)
        return int(connection.execute(query).scalar_one())

    def spend(self, request: RetryRequest, budget: RetryBudget, now: float | None = None) -> Decision:
        """Grant one retry to ``request`` if every budget has room (and record it), else refuse it."""
        now = time.time() if now is None else now
        ledger = ledger_table.c
        by_pipeline = budget.window_scope == "pipeline"
        key = window_key(budget, request.tenant, request.pipeline)
        locks = [
            (_lock_key("run", request.dag_id, request.run_id), "run"),
            (_lock_key("window", request.tenant, request.pipeline if by_pipeline else ""), "window"),
        ]
        try_row = (
            ledger.dag_id == request.dag_id,
            ledger.run_id == request.run_id,
            ledger.task_id == request.task_id,
            ledger.map_index == request.map_index,
        )
        with self.engine.begin() as connection:
            self._lock(connection, locks, now)
            earlier = connection.execute(
                sa.select(ledger.outcome, ledger.budget).where(*try_row, ledger.try_number == request.try_number)
            ).first()
            window = [ledger.tenant == request.tenant, ledger.decided_epoch > now - budget.window_seconds]
            if by_pipeline:
                window.append(ledger.pipeline == request.pipeline)
            spent = {
                PER_TASK: self._count(connection, *try_row),
                PER_RUN: self._count(connection, ledger.dag_id == request.dag_id, ledger.run_id == request.run_id),
                PER_WINDOW: self._count(connection, *window),
            }
            limits = {
                PER_TASK: budget.max_retries_per_task,
                PER_RUN: budget.max_retries_per_run,
                PER_WINDOW: budget.max_retries_per_window,
            }
            if earlier is not None:
                granted = earlier.outcome == GRANTED
                if granted:  # the counts include this try's own grant
                    spent = {name: max(0, value - 1) for name, value in spent.items()}
                return Decision(
                    granted,
                    earlier.budget,
                    limits.get(earlier.budget) if earlier.budget else None,
                    spent,
                    budget.window_seconds,
                    key,
                    replayed=True,
                )
            exhausted = next((name for name in (PER_TASK, PER_RUN, PER_WINDOW) if spent[name] >= limits[name]), None)
            connection.execute(
                sa.insert(ledger_table).values(
                    tenant=request.tenant,
                    pipeline=request.pipeline,
                    runner_class=request.runner_class,
                    dag_id=request.dag_id,
                    run_id=request.run_id,
                    task_id=request.task_id,
                    map_index=request.map_index,
                    try_number=request.try_number,
                    outcome=GRANTED if exhausted is None else REFUSED,
                    budget=exhausted,
                    failure=request.failure[:2000],
                    decided_epoch=now,
                )
            )
        return Decision(
            exhausted is None,
            exhausted,
            limits[exhausted] if exhausted else None,
            spent,
            budget.window_seconds,
            key,
        )

    # ------------------------------------------------------------------------------------------- reading

    def window_spent(self, tenant: str, budget: RetryBudget, pipeline: str | None = None, now: float | None = None) -> int:
        """Retries granted to ``tenant`` (and ``pipeline`` when the window is per pipeline) in the window."""
        now = time.time() if now is None else now
        ledger = ledger_table.c
        conditions = [ledger.tenant == tenant, ledger.decided_epoch > now - budget.window_seconds]
        if budget.window_scope == "pipeline" and pipeline is not None:
            conditions.append(ledger.pipeline == pipeline)
        with self.engine.connect() as connection:
            return self._count(connection, *conditions)

    def rows(self, **filters: Any) -> list[dict[str, Any]]:
        """Ledger rows, oldest first, filtered by column equality (``tenant="acme"``, ``outcome="refused"``)."""
        query = sa.select(ledger_table).order_by(ledger_table.c.decided_epoch, ledger_table.c.id)
        for name, value in filters.items():
            query = query.where(getattr(ledger_table.c, name) == value)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query).all()]

    def prune(self, older_than_epoch: float) -> int:
        """Drop ledger rows decided before ``older_than_epoch`` (keep at least the longest window)."""
        with self.engine.begin() as connection:
            result = connection.execute(sa.delete(ledger_table).where(ledger_table.c.decided_epoch < older_than_epoch))
            return int(result.rowcount or 0)


_LOCK = threading.Lock()


@functools.cache
def _ledger_cached(url: str) -> RetryLedger:
    return RetryLedger(url)


def get_ledger(url: str | None = None) -> RetryLedger:
    """The ledger at ``url`` (default: ``[barecount] evidence_index_url``), one per URL and process."""
    with _LOCK:
        return _ledger_cached(url or config.evidence_index_url())


def clear_caches() -> None:
    _ledger_cached.cache_clear()
