"""BareCount's tables under Alembic on a real PostgreSQL (tests/pg_server.py): a database made by the code
before migrations, with a row in every table, upgraded by `barecount db migrate` with every row intact;
twice is the same as once; Airflow's own ``alembic_version`` in the same database is left alone; two
processes migrating an empty database at once queue on the advisory lock. SQLite:
tests/unit/test_db_migrations.py."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from barecount_provider import cli
from barecount_provider.db import SchemaOutOfDate, migrate, schema
from barecount_provider.recovery.budgets import RetryLedger
from tests import pg_server
from tests import schema_before_migrations as before

pytestmark = pytest.mark.integration


NEW_IN_0002 = {"barecount_agent_heartbeats", "barecount_health_results"}  # the health records


def _read(url: str, tables: set[str] | None = None) -> tuple[dict[str, list[dict[str, Any]]], list[Any], str | None]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return before.rows(connection, tables), before.schema_differences(connection), migrate.schema_state(connection)[0]
    finally:
        engine.dispose()


def test_a_postgresql_database_from_before_migrations_upgrades_with_every_row_intact(
    postgres: pg_server.PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.create_database("legacy_index")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        before.create(connection)
        # the index may share Airflow's database: Airflow's own version table must stay as it is
        connection.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.exec_driver_sql("INSERT INTO alembic_version VALUES ('airflow_head')")
    engine.dispose()
    rows_before, _, revision = _read(url, set(before.ROWS))
    assert revision is None and all(len(rows_before[name]) == 1 for name in before.ROWS)
    rows_before.update({name: [] for name in NEW_IN_0002})  # the health records' tables come empty
    with pytest.raises(SchemaOutOfDate, match="run `barecount db migrate`"):
        RetryLedger(url)

    assert cli.main(["db", "migrate", "--url", url]) == 0
    assert f"upgraded from no revision to revision {schema.HEAD_REVISION}" in capsys.readouterr().out
    assert _read(url) == (rows_before, [], schema.HEAD_REVISION)
    assert cli.main(["db", "migrate", "--url", url]) == 0
    assert f"already at revision {schema.HEAD_REVISION}" in capsys.readouterr().out
    assert _read(url) == (rows_before, [], schema.HEAD_REVISION)

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["airflow_head"]
    engine.dispose()
    RetryLedger(url)  # current now


def test_processes_migrating_an_empty_postgresql_database_at_once_both_succeed(postgres: pg_server.PostgresServer) -> None:
    url = postgres.create_database("race_index")
    command = [sys.executable, "-m", "barecount_provider.cli", "db", "migrate", "--url", url]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    assert sorted("upgraded" in out for out, _ in outputs) == [False, False, False, True], outputs
    assert _read(url)[1:] == ([], schema.HEAD_REVISION)


def test_health_records_upsert_on_postgresql(postgres: pg_server.PostgresServer) -> None:
    """The heartbeats' and results' upserts (health/records.py) on PostgreSQL: a flood is one row per agent, a
    late heartbeat or an older result never replaces the newer one."""
    from datetime import UTC, datetime, timedelta

    from barecount_provider.health import records
    from barecount_provider.health.result import Dependency, HealthResult

    url = postgres.create_database("health_records")
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    store = records.HealthRecords(url)
    try:
        for n in range(50):
            store.record_heartbeat(f"agent-{n % 2}", tenants=["acme"], version=f"v{n}", capabilities=["jdbc"], reported_by="svc", at=t0 + timedelta(seconds=n))
        store.record_heartbeat("agent-0", tenants=["acme"], version="late", capabilities=[], reported_by="svc", at=t0)
        assert store.last_heartbeats(["agent-0", "agent-1"]) == {"agent-0": t0 + timedelta(seconds=48), "agent-1": t0 + timedelta(seconds=49)}
        assert [(row["name"], row["beats"]) for row in store.heartbeats()] == [("agent-0", 26), ("agent-1", 25)]

        dependency = Dependency(kind="agent", id="agent-0", tenant="acme", network_profile="onprem")
        newer = HealthResult(status="healthy", dependency=dependency, latency_ms=1.0, detail="fresh", checked_at=t0 + timedelta(minutes=1))
        older = HealthResult(status="unhealthy", dependency=dependency, latency_ms=1.0, detail="stale", error_code="heartbeat_stale", checked_at=t0)
        store.save_results([newer])
        store.save_results([older])
        assert store.latest_results(["acme"]) == [newer.as_dict()]
        assert store.latest_results(["other"]) == []
    finally:
        store.engine.dispose()
