"""BareCount's own tables, in one MetaData: the evidence index, the retry budgets, the replay ledger, the
replay approvals, and the health records (agents' heartbeats, the dependencies' last results). They live in one database (``[barecount] evidence_index_url``: SQLite by default,
PostgreSQL in production), created and upgraded by Alembic migrations (``barecount db migrate``,
barecount_provider/db/migrations/); the domain modules import their tables from here.

A change of a table here comes with a new revision in db/migrations/versions/ and a new :data:`HEAD_REVISION`
(tests/unit/test_db_migrations.py checks that the migrations make exactly these tables).
"""

from __future__ import annotations

import sqlalchemy as sa

HEAD_REVISION = "0002"
"""The revision this code needs (the migrations' head), compared with the database's at first use."""

VERSION_TABLE = "barecount_alembic_version"
"""Alembic's version table of BareCount's schema: its own name, never Airflow's ``alembic_version``, so the
tables can live in Airflow's database."""

MAX_REPLAY_KEY = 255

metadata = sa.MetaData()

# ------------------------------------------------------------------ evidence index (evidence/store.py)

records_table = sa.Table(
    "barecount_evidence_records",
    metadata,
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
)
sa.Index("ix_barecount_evidence_tenant_time", records_table.c.tenant, records_table.c.ended_epoch)
sa.Index("ix_barecount_evidence_dag_time", records_table.c.dag_id, records_table.c.ended_epoch)
sa.Index("ix_barecount_evidence_pipeline_time", records_table.c.pipeline, records_table.c.ended_epoch)
sa.Index("ix_barecount_evidence_time", records_table.c.ended_epoch)

cost_lines_table = sa.Table(
    "barecount_evidence_cost_lines",
    metadata,
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
)
sa.Index("ix_barecount_cost_day_tenant", cost_lines_table.c.day, cost_lines_table.c.tenant)
sa.Index("ix_barecount_cost_record", cost_lines_table.c.record_id)

digests_table = sa.Table(
    "barecount_evidence_digests",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(512), primary_key=True),
    sa.Column("first_seen", sa.String(40), nullable=False),
    sa.Column("first_record_id", sa.String(64), nullable=False),
)

# Runs waiting to be sealed, kept where a restarted scheduler finds them (evidence/assemble.py).
pending_table = sa.Table(
    "barecount_evidence_pending",
    metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("added_epoch", sa.Float, nullable=False),
)

# Runs of the local store whose tries ran on another machine than the scheduler's, or on several: kept for
# `barecount doctor` (see evidence/assemble.py local_store_exception).
hosts_table = sa.Table(
    "barecount_evidence_hosts",
    metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("hosts", sa.Text, nullable=False),  # the hosts named by the run's tries, comma-separated
    sa.Column("scheduler_host", sa.String(250)),
    sa.Column("seen_epoch", sa.Float, nullable=False),
)

# ------------------------------------------------------------------ retry budgets (recovery/budgets.py)

retry_ledger_table = sa.Table(
    "barecount_retry_ledger",
    metadata,
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
)
sa.Index("ix_barecount_retry_tenant_time", retry_ledger_table.c.tenant, retry_ledger_table.c.outcome, retry_ledger_table.c.decided_epoch)
sa.Index(
    "ix_barecount_retry_pipeline_time",
    retry_ledger_table.c.tenant,
    retry_ledger_table.c.pipeline,
    retry_ledger_table.c.outcome,
    retry_ledger_table.c.decided_epoch,
)
sa.Index("ix_barecount_retry_run", retry_ledger_table.c.dag_id, retry_ledger_table.c.run_id)

retry_locks_table = sa.Table(
    "barecount_retry_locks",
    metadata,
    sa.Column("lock_key", sa.String(64), primary_key=True),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("touched_epoch", sa.Float, nullable=False),
)

# ------------------------------------------------------------------ replay ledger (recovery/ledger.py)

replay_ledger_table = sa.Table(
    "barecount_replay_ledger",
    metadata,
    sa.Column("scope_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(MAX_REPLAY_KEY), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("claims", sa.Integer, nullable=False),
    sa.Column("redeliveries", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float),
    sa.Column("error", sa.Text),
)
sa.Index("ix_barecount_replay_ledger_state", replay_ledger_table.c.scope_id, replay_ledger_table.c.state)

replay_runs_table = sa.Table(
    "barecount_replay_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("scope_id", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
)
sa.Index("ix_barecount_replay_runs_scope", replay_runs_table.c.scope_id, replay_runs_table.c.started_at)

# ------------------------------------------------------------------ replay approvals (recovery/approvals.py)

approvals_table = sa.Table(
    "barecount_replay_approvals",
    metadata,
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
)
sa.Index("ix_barecount_replay_approvals_plan", approvals_table.c.plan_id)

# ------------------------------------------------------------------ health records (health/records.py)

MAX_AGENT_NAME = 63  # policy.TENANT_NAME: an agent's name follows the tenants' pattern

# One row per agent (a heartbeat replaces the previous one: a flood of heartbeats stays one row).
agent_heartbeats_table = sa.Table(
    "barecount_agent_heartbeats",
    metadata,
    sa.Column("name", sa.String(MAX_AGENT_NAME), primary_key=True),
    sa.Column("tenants", sa.Text, nullable=False),  # JSON list: the tenants whose profiles name the agent
    sa.Column("version", sa.String(64)),
    sa.Column("capabilities", sa.Text, nullable=False),  # JSON list
    sa.Column("reported_by", sa.String(255)),  # the user whose token sent it
    sa.Column("seen_epoch", sa.Float, nullable=False),
    sa.Column("beats", sa.BigInteger, nullable=False),  # heartbeats received since the row was made
)

# The last result of each dependency of each (tenant, network profile): one row per (tenant, profile, kind, id);
# '' stands for no tenant or no profile (a primary key column cannot be NULL).
health_results_table = sa.Table(
    "barecount_health_results",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("network_profile", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("dependency_id", sa.String(1024), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(32)),
    sa.Column("checked_epoch", sa.Float, nullable=False),
    sa.Column("result", sa.Text, nullable=False),  # HealthResult.as_dict() as JSON
)
