"""BareCount's tables as they were before migrations: the evidence index, the retry budgets, the replay
ledger and the replay approvals, exactly as ``create_all`` made them.

A database an earlier BareCount created has some or all of these tables already (each component created
its own when first used), identical to these: they are kept, with their rows, and only the missing ones
are created; then the database is at revision 0001. An empty database gets them all.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "barecount_evidence_cost_lines",
    "barecount_evidence_digests",
    "barecount_evidence_hosts",
    "barecount_evidence_pending",
    "barecount_evidence_records",
    "barecount_replay_approvals",
    "barecount_replay_ledger",
    "barecount_replay_runs",
    "barecount_retry_ledger",
    "barecount_retry_locks",
)


def _create(existing: set[str], name: str, *elements: Any, indexes: dict[str, list[str]] | None = None) -> None:
    """Create table ``name`` and its indexes unless an earlier BareCount created it already."""
    if name in existing:
        return
    op.create_table(name, *elements)
    for index, columns in (indexes or {}).items():
        op.create_index(index, name, columns)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    _create(
        existing,
        "barecount_evidence_cost_lines",
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("pipeline", sa.String(250), nullable=False),
        sa.Column("runner_class", sa.String(32), nullable=False),
        sa.Column("size", sa.String(8), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("runtime_hours", sa.Float, nullable=False),
        sa.Column("compute_usd", sa.Float, nullable=False),
        sa.Column("storage_usd", sa.Float, nullable=False),
        sa.Column("transfer_usd", sa.Float, nullable=False),
        sa.Column("total_usd", sa.Float, nullable=False),
        indexes={"ix_barecount_cost_day_tenant": ["day", "tenant"], "ix_barecount_cost_record": ["record_id"]},
    )
    _create(
        existing,
        "barecount_evidence_digests",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(128), primary_key=True),
        sa.Column("value", sa.String(512), primary_key=True),
        sa.Column("first_seen", sa.String(40), nullable=False),
        sa.Column("first_record_id", sa.String(64), nullable=False),
    )
    _create(
        existing,
        "barecount_evidence_hosts",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("hosts", sa.Text, nullable=False),  # the hosts named by the run's tries, comma-separated
        sa.Column("scheduler_host", sa.String(250)),
        sa.Column("seen_epoch", sa.Float, nullable=False),
    )
    _create(
        existing,
        "barecount_evidence_pending",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("added_epoch", sa.Float, nullable=False),
    )
    _create(
        existing,
        "barecount_evidence_records",
        sa.Column("record_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("previous_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("pipeline", sa.String(250), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.String(40)),
        sa.Column("ended_at", sa.String(40)),
        sa.Column("ended_epoch", sa.Float, nullable=False),  # for ranges and ordering (SQLite has no timestamptz)
        sa.Column("total_cost_usd", sa.Float),
        sa.Column("cost_complete", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("location", sa.Text, nullable=False),
        sa.UniqueConstraint("tenant", "sequence", name="uq_barecount_evidence_chain"),
        indexes={"ix_barecount_evidence_dag_time": ["dag_id", "ended_epoch"], "ix_barecount_evidence_pipeline_time": ["pipeline", "ended_epoch"], "ix_barecount_evidence_tenant_time": ["tenant", "ended_epoch"], "ix_barecount_evidence_time": ["ended_epoch"]},
    )
    _create(
        existing,
        "barecount_replay_approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("plan_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("estimated_cost_usd", sa.Float, nullable=False),
        sa.Column("decision", sa.String(64), nullable=False),
        sa.Column("approver", sa.String(255)),
        sa.Column("decided_at", sa.String(64), nullable=False),
        sa.Column("dag_id", sa.String(255)),
        sa.Column("run_id", sa.String(255)),
        sa.Column("task_id", sa.String(255)),
        sa.Column("recorded_at", sa.Float, nullable=False),
        indexes={"ix_barecount_replay_approvals_plan": ["plan_id"]},
    )
    _create(
        existing,
        "barecount_replay_ledger",
        sa.Column("scope_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("redeliveries", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float),
        sa.Column("error", sa.Text),
        indexes={"ix_barecount_replay_ledger_state": ["scope_id", "state"]},
    )
    _create(
        existing,
        "barecount_replay_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        indexes={"ix_barecount_replay_runs_scope": ["scope_id", "started_at"]},
    )
    _create(
        existing,
        "barecount_retry_ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("pipeline", sa.String(250), nullable=False),
        sa.Column("runner_class", sa.String(32), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("task_id", sa.String(250), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),  # granted | refused
        sa.Column("budget", sa.String(32)),  # refused: the budget that was spent
        sa.Column("failure", sa.Text),  # the classification that asked for the retry
        sa.Column("decided_epoch", sa.Float, nullable=False),
        sa.UniqueConstraint("dag_id", "run_id", "task_id", "map_index", "try_number", name="uq_barecount_retry_try"),
        indexes={"ix_barecount_retry_pipeline_time": ["tenant", "pipeline", "outcome", "decided_epoch"], "ix_barecount_retry_run": ["dag_id", "run_id"], "ix_barecount_retry_tenant_time": ["tenant", "outcome", "decided_epoch"]},
    )
    _create(
        existing,
        "barecount_retry_locks",
        sa.Column("lock_key", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("touched_epoch", sa.Float, nullable=False),
    )

def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
