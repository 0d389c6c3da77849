"""A database as BareCount made it before Alembic migrations: today's ``create_all`` DDL, copied into
tests/fixtures/schema_before_migrations/<dialect>.sql, with a row in every table. Used by the upgrade tests
on SQLite (tests/unit/test_db_migrations.py) and PostgreSQL (tests/integration/test_db_migrations_postgres.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from barecount_provider.db import schema

FIXTURES = Path(__file__).parent / "fixtures" / "schema_before_migrations"

ROWS: dict[str, dict[str, Any]] = {
    "barecount_evidence_records": {
        "record_id": "r1", "tenant": "acme", "sequence": 1, "previous_hash": "0" * 64, "hash": "a" * 64,
        "pipeline": "orders", "dag_id": "orders_daily", "run_id": "manual__1", "state": "success", "complete": True,
        "started_at": "2026-12-01T00:00:00+00:00", "ended_at": "2026-12-01T00:05:00+00:00",
        "ended_epoch": 1764547500.25, "total_cost_usd": 0.125, "cost_complete": False, "location": "records/acme/r1.json",
    },
    "barecount_evidence_cost_lines": {
        "record_id": "r1", "day": "2026-12-01", "tenant": "acme", "pipeline": "orders", "runner_class": "serverless",
        "size": "s", "dag_id": "orders_daily", "runtime_hours": 0.5, "compute_usd": 0.1, "storage_usd": 0.02,
        "transfer_usd": 0.005, "total_usd": 0.125,
    },
    "barecount_evidence_digests": {
        "tenant": "acme", "kind": "image", "value": "sha256:" + "b" * 64, "first_seen": "2026-12-01T00:05:00+00:00",
        "first_record_id": "r1",
    },
    "barecount_evidence_pending": {"dag_id": "orders_daily", "run_id": "manual__2", "added_epoch": 1764547600.5},
    "barecount_evidence_hosts": {
        "dag_id": "orders_daily", "run_id": "manual__1", "hosts": "worker-1,worker-2", "scheduler_host": "sched",
        "seen_epoch": 1764547500.75,
    },
    "barecount_retry_ledger": {
        "id": 1, "tenant": "acme", "pipeline": "orders", "runner_class": "serverless", "dag_id": "orders_daily",
        "run_id": "manual__1", "task_id": "load", "map_index": -1, "try_number": 1, "outcome": "granted",
        "budget": None, "failure": "transient: throttled", "decided_epoch": 1764547400.5,
    },
    "barecount_retry_locks": {"lock_key": "c" * 64, "scope": "run", "touched_epoch": 1764547400.5},
    "barecount_replay_ledger": {
        "scope_id": "s" * 32, "key": "order-17", "state": "delivered", "owner": "run-1", "lease_until": 1764547700.0,
        "claims": 1, "redeliveries": 0, "updated_at": 1764547650.0, "delivered_at": 1764547650.0, "error": None,
    },
    "barecount_replay_runs": {
        "run_id": "run-1", "scope_id": "s" * 32, "host": "worker-1", "pid": 4242, "state": "finished",
        "dry_run": False, "started_at": 1764547600.0, "updated_at": 1764547650.0, "summary": '{"delivered": 1}',
    },
    "barecount_replay_approvals": {
        "id": 1, "plan_id": "p" * 32, "tenant": "acme", "scope_id": "s" * 32, "scope": '{"pipeline":"orders"}',
        "records": 1, "estimated_cost_usd": 0.01, "decision": "approved", "approver": "alice",
        "decided_at": "2026-12-01T00:06:00+00:00", "dag_id": "replay_orders", "run_id": "manual__3",
        "task_id": "approve", "recorded_at": 1764547560.0,
    },
}  # fmt: skip


def create(connection: sa.Connection, tables: set[str] | None = None) -> None:
    """Today's DDL for the connection's dialect (only ``tables`` and their indexes, when given), and the rows
    of :data:`ROWS` in those tables."""
    lines = (FIXTURES / f"{connection.dialect.name}.sql").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("--"))
    for statement in (part.strip() for part in text.split(";") if part.strip()):
        table = statement.split(" ON ")[1].split()[0] if statement.startswith("CREATE INDEX") else statement.split()[2]
        if tables is None or table in tables:
            connection.exec_driver_sql(statement)
    for name, row in ROWS.items():
        if tables is None or name in tables:
            connection.execute(sa.insert(schema.metadata.tables[name]), row)


def rows(connection: sa.Connection, tables: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every row of BareCount's tables (or of ``tables``), as dicts."""
    return {
        name: [dict(row._mapping) for row in connection.execute(sa.select(table))]
        for name, table in schema.metadata.tables.items()
        if tables is None or name in tables
    }


def schema_differences(connection: sa.Connection) -> list[Any]:
    """What Alembic's autogenerate finds different between the database and BareCount's MetaData."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from barecount_provider.db.migrate import only_barecount_tables

    context = MigrationContext.configure(connection, opts={"include_name": only_barecount_tables})
    return list(compare_metadata(context, schema.metadata))
