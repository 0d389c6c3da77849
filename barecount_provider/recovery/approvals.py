"""Replay approvals on record: what ``ReplayApprovalSensor`` decided, read by ``ReplayOperator`` before it delivers.

One table of its own, ``barecount_replay_approvals``, next to the replay ledger in the evidence index's
database (``[barecount] evidence_index_url``), which both the sensor's and the operator's task processes reach
(a task process cannot use Airflow's ORM). One row per decision on one plan:

* ``plan_id``: the plan's identity (:func:`plan_id_for`: a hash of the replay scope id, the queue, the target,
  the scope, the record count and when it was planned, within one DAG run);
* ``tenant``, ``scope_id``, ``scope`` (JSON), ``records``, ``estimated_cost_usd``: what was approved;
* ``decision`` (``approved``, ``rejected``, ``timed out: approved`` ...), ``approver``, ``decided_at``;
* ``dag_id``, ``run_id``, ``task_id``: the task that decided.

:meth:`ApprovalStore.approval_for` answers the operator's question: is there an approval of this very plan
(same plan id, tenant, scope id and scope) for at least the records about to be delivered?
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from barecount_provider import db
from barecount_provider.db.schema import approvals_table

APPROVED = "approved"


def canonical_scope(scope: object) -> str:
    """The scope as compared: JSON with sorted keys."""
    return json.dumps(scope, sort_keys=True, separators=(",", ":"), default=str)


def plan_id_for(plan: Mapping[str, Any], dag_id: str, run_id: str) -> str:
    """The identity of one plan of one DAG run: any change of what it covers gives another id."""
    parts = [dag_id, run_id]
    parts += [str(plan.get(key)) for key in ("scope_id", "dlq", "target", "records", "planned_at")]
    parts.append(canonical_scope(plan.get("scope")))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class ApprovalStore:
    """The approvals table at ``url`` (an SQLAlchemy URL: the evidence index's by default)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = db.create_engine(url, immediate=True, busy_timeout_s=60)
        db.ensure_schema(self.engine)

    def record(
        self,
        *,
        plan_id: str,
        tenant: str,
        scope_id: str,
        scope: object,
        records: int,
        estimated_cost_usd: float,
        decision: str,
        approver: str | None,
        decided_at: str,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(approvals_table).values(
                    plan_id=plan_id,
                    tenant=tenant,
                    scope_id=scope_id,
                    scope=canonical_scope(scope),
                    records=int(records),
                    estimated_cost_usd=float(estimated_cost_usd),
                    decision=decision,
                    approver=approver,
                    decided_at=decided_at,
                    dag_id=dag_id,
                    run_id=run_id,
                    task_id=task_id,
                    recorded_at=time.time(),
                )
            )

    def decisions(self, plan_id: str) -> list[dict[str, Any]]:
        """Every decision recorded on ``plan_id``, oldest first."""
        c = approvals_table.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(approvals_table).where(c.plan_id == plan_id).order_by(c.id)
            ).mappings().all()
        return [dict(row) for row in rows]

    def approval_for(
        self, *, plan_id: str, tenant: str, scope_id: str, scope: object, records: int
    ) -> dict[str, Any] | None:
        """The latest decision on ``plan_id`` when it approves this tenant's scope for at least ``records``
        records; None otherwise (no decision, a rejection, another tenant, scope or a smaller count)."""
        decisions = self.decisions(plan_id)
        if not decisions:
            return None
        latest = decisions[-1]
        if not str(latest["decision"]).endswith(APPROVED):
            return None
        if latest["tenant"] != tenant or latest["scope_id"] != scope_id:
            return None
        if latest["scope"] != canonical_scope(scope) or int(latest["records"]) < records:
            return None
        return latest


_LOCK = threading.Lock()


@functools.cache
def _cached(url: str, pid: int) -> ApprovalStore:
    return ApprovalStore(url)


def open_approvals(url: str | None = None) -> ApprovalStore:
    """The approvals at ``url``, or in the evidence index's database (``[barecount] evidence_index_url``)."""
    if url is None:
        from barecount_provider import config

        url = config.evidence_index_url()
    with _LOCK:
        return _cached(url, os.getpid())
