"""BareCount's tables under Alembic (barecount_provider/db): `barecount db migrate` upgrades a database made
by the code before migrations with its rows intact, twice is the same as once, an empty database is set up at
first use, and an out-of-date one is refused (the scheduler side does not start) with the command to run.
SQLite here; PostgreSQL in tests/integration/test_db_migrations_postgres.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from barecount_provider import cli, db
from barecount_provider.db import SchemaOutOfDate, migrate, schema
from barecount_provider.recovery.budgets import RetryLedger
from tests import schema_before_migrations as before

NEW_IN_0002 = {"barecount_agent_heartbeats", "barecount_health_results"}  # the health records


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'index.db'}"


def _legacy(url: str, tables: set[str] | None = None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        before.create(connection, tables)
    engine.dispose()


def _read(url: str, tables: set[str] | None = None) -> tuple[dict[str, list[dict[str, object]]], list[object], str | None]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        result = before.rows(connection, tables), before.schema_differences(connection), migrate.schema_state(connection)[0]
    engine.dispose()
    return result


def test_head_revision_in_code_is_the_migrations_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(migrate.alembic_config()).get_heads() == [schema.HEAD_REVISION]


def test_the_migrations_make_exactly_the_tables_of_the_schema(url: str) -> None:
    assert migrate.upgrade(url) == (None, schema.HEAD_REVISION)
    rows, differences, revision = _read(url)
    assert revision == schema.HEAD_REVISION and differences == []
    assert set(rows) == set(schema.metadata.tables) and not any(rows.values())
    assert set(before.ROWS) | NEW_IN_0002 == set(rows)


def test_a_database_from_before_migrations_upgrades_with_every_row_intact(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _legacy(url)
    rows_before, _, revision = _read(url, set(before.ROWS))
    assert revision is None and all(len(rows_before[name]) == 1 for name in before.ROWS)
    rows_before.update({name: [] for name in NEW_IN_0002})  # the health records' tables come empty

    assert cli.main(["db", "migrate", "--url", url]) == 0
    assert f"upgraded from no revision to revision {schema.HEAD_REVISION}" in capsys.readouterr().out
    rows_after, differences, revision = _read(url)
    assert rows_after == rows_before and revision == schema.HEAD_REVISION and differences == []

    assert cli.main(["db", "migrate", "--url", url]) == 0  # idempotent
    assert f"already at revision {schema.HEAD_REVISION}" in capsys.readouterr().out
    assert _read(url) == (rows_before, [], schema.HEAD_REVISION)
    assert cli.main(["db", "check", "--url", url]) == 0


def test_a_database_at_revision_0001_upgrades_to_the_health_records_with_every_row_intact(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A database `barecount db migrate` set up before the health records (revision 0001, a row in every
    table) is refused at first use, and then upgraded: revision 0002 adds the two health tables, nothing else."""
    from alembic import command

    _legacy(url)
    engine = db.create_engine(url, immediate=True)
    with engine.begin() as connection:
        command.upgrade(migrate.alembic_config(connection), "0001")
    engine.dispose()
    rows_before, _, revision = _read(url, set(before.ROWS))
    assert revision == "0001" and all(len(rows_before[name]) == 1 for name in before.ROWS)
    with pytest.raises(SchemaOutOfDate, match="at schema revision 0001; this BareCount needs revision 0002"):
        db.ensure_schema(db.create_engine(url))

    assert cli.main(["db", "migrate", "--url", url]) == 0
    assert "upgraded from 0001 to revision 0002" in capsys.readouterr().out
    rows_after, differences, revision = _read(url)
    assert revision == "0002" and differences == []
    assert {name: rows_after[name] for name in before.ROWS} == rows_before
    assert {name for name, rows in rows_after.items() if not rows} == NEW_IN_0002


def test_a_database_with_only_some_tables_from_before_gets_the_others(url: str) -> None:
    evidence = {name for name in before.ROWS if name.startswith("barecount_evidence_")}
    _legacy(url, evidence)
    rows_before, _, _ = _read(url, evidence)
    assert migrate.upgrade(url) == (None, schema.HEAD_REVISION)
    rows_after, differences, _ = _read(url)
    assert differences == [] and {name: rows_after[name] for name in evidence} == rows_before
    assert not any(rows_after[name] for name in set(before.ROWS) - evidence)


def test_an_empty_database_is_set_up_at_first_use(url: str) -> None:
    RetryLedger(url)
    assert _read(url)[1:] == ([], schema.HEAD_REVISION)


def test_a_database_from_before_migrations_is_refused_at_first_use_with_the_command(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _legacy(url)
    with pytest.raises(SchemaOutOfDate, match=r"created before schema migrations .* run `barecount db migrate`"):
        RetryLedger(url)
    assert cli.main(["db", "check", "--url", url]) == 1
    assert "run `barecount db migrate`" in capsys.readouterr().out
    assert cli.main(["replay", "status", "--ledger-url", url]) == 1  # a command reading the tables: one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("barecount: BareCount's database") and err.endswith("(see docs/database.md)") and "\n" not in err
    assert cli.main(["db", "migrate", "--url", url]) == 0
    RetryLedger(url)  # now current


def test_an_unknown_revision_is_refused(url: str) -> None:
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate, match=f"at schema revision 9999; this BareCount needs revision {schema.HEAD_REVISION}"):
        db.ensure_schema(db.create_engine(url))


def test_db_migrate_with_a_bad_url_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "migrate", "--url", "not a url"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "barecount: db migrate: --url 'not a url' is not an SQLAlchemy database URL (e.g. sqlite:///index.db)"


def test_db_migrate_defaults_to_the_configured_index_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from barecount_provider import config

    monkeypatch.setattr(config, "evidence_index_url", lambda: url)
    assert cli.main(["db", "migrate"]) == 0
    assert _read(url)[2] == schema.HEAD_REVISION


def test_the_scheduler_side_refuses_to_start_on_an_out_of_date_schema(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from barecount_provider import config
    from barecount_provider.listeners import lifecycle
    from barecount_provider.runtime import sealing as evidence
    from barecount_provider.runtime.scheduler_side import SchedulerSide

    _legacy(url)
    monkeypatch.setattr(config, "evidence_on", lambda: True)
    monkeypatch.setattr(config, "evidence_index_url", lambda: url)
    evidence._store.cache_clear()
    side = SchedulerSide()
    monkeypatch.setattr("barecount_provider.runtime.scheduler_side.get_scheduler_side", lambda: side)
    started = []
    monkeypatch.setattr(lifecycle.threading, "Thread", lambda *a, **k: started.append(k) or pytest.fail("started"))
    try:
        with caplog.at_level(logging.ERROR):
            lifecycle.on_starting(object())
        assert side.refused and "run `barecount db migrate`" in side.refused
        assert "BareCount's scheduler side is not started" in caplog.text and "barecount db migrate" in caplog.text
        side.submit(lambda: None)  # a DAG run's event: dropped, no worker thread
        assert side._thread is None and not started
    finally:
        evidence._store.cache_clear()


@pytest.mark.parametrize("out_of_date", [False, True])
def test_doctor_says_whether_the_schema_is_current(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out_of_date: bool
) -> None:
    import json

    from barecount_provider import config
    from barecount_provider.evidence import store

    for variable, value in (("EVIDENCE_DIR", tmp_path / "evidence"), ("TELEMETRY_DIR", tmp_path / "telemetry"), ("EVIDENCE_INDEX_URL", url)):
        monkeypatch.setenv(f"AIRFLOW__BARECOUNT__{variable}", str(value))
    config.cache_clear()
    store.clear_caches()
    if out_of_date:
        _legacy(url)
    try:
        assert cli.main(["doctor", "--json"]) == (1 if out_of_date else 0)
        evidence = json.loads(capsys.readouterr().out)["evidence"]
    finally:
        config.cache_clear()
        store.clear_caches()
    if out_of_date:
        assert evidence["problem"].startswith("schema: BareCount's database") and "run `barecount db migrate`" in evidence["problem"]
    else:
        assert evidence["schema"] == f"current (revision {schema.HEAD_REVISION}; docs/database.md)" and evidence["problem"] is None
