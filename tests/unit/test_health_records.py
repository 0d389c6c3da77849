"""Health records (barecount_provider/health/records.py) on a real SQLite database migrated by Alembic: agents'
heartbeats (one row per agent, whatever the flood) and each dependency's last result (an older one never
replaces a newer one). PostgreSQL: tests/integration/test_db_migrations_postgres.py runs the same upserts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from barecount_provider.db.schema import agent_heartbeats_table, health_results_table
from barecount_provider.health import records
from barecount_provider.health.result import Dependency, HealthResult

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    records.clear_caches()
    yield f"sqlite:///{tmp_path / 'index.db'}"
    records.clear_caches()


def _count(url: str, table: sa.Table) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return int(count)


def _result(status: str, tenant: str | None = "acme", *, id: str = "vpn-1", at: datetime = T0, **kwargs: object) -> HealthResult:
    dependency = Dependency(kind="vpn_connection", id=id, tenant=tenant, network_profile="onprem" if tenant else None)
    error = None if status == "healthy" else "tunnel_down"
    return HealthResult(status=status, dependency=dependency, latency_ms=12.5, detail=f"{status} at {at}", error_code=error, checked_at=at, **kwargs)  # type: ignore[arg-type]


def test_a_heartbeat_is_stored_and_read_back_timezone_aware(url: str) -> None:
    records.record_heartbeat(
        "dc1-agent", tenants=["acme", "beta", "acme"], version="1.4.2", capabilities=["jdbc", "sftp"], reported_by="svc", at=T0, url=url
    )
    assert records.last_heartbeats(["dc1-agent", "never-seen"], url=url) == {"dc1-agent": T0}
    (row,) = records.heartbeats(url=url)
    assert row["tenants"] == ["acme", "beta"] and row["capabilities"] == ["jdbc", "sftp"]
    assert row["version"] == "1.4.2" and row["reported_by"] == "svc" and row["beats"] == 1
    assert row["seen_at"] == T0.isoformat() and row["age_seconds"] > 0
    assert records.last_heartbeats([], url=url) == {}


def test_a_flood_of_heartbeats_is_one_row_per_agent(url: str) -> None:
    for n in range(200):
        records.record_heartbeat(
            f"agent-{n % 3}", tenants=["acme"], version=f"v{n}", capabilities=[], reported_by="svc", at=T0 + timedelta(seconds=n), url=url
        )
    assert _count(url, agent_heartbeats_table) == 3
    last = records.last_heartbeats(["agent-0", "agent-1", "agent-2"], url=url)
    assert last == {"agent-0": T0 + timedelta(seconds=198), "agent-1": T0 + timedelta(seconds=199), "agent-2": T0 + timedelta(seconds=197)}
    beats = {row["name"]: (row["beats"], row["version"]) for row in records.heartbeats(url=url)}
    assert beats == {"agent-0": (67, "v198"), "agent-1": (67, "v199"), "agent-2": (66, "v197")}


def test_a_late_heartbeat_never_moves_the_last_one_back(url: str) -> None:
    records.record_heartbeat("a", tenants=[], version=None, capabilities=[], reported_by=None, at=T0, url=url)
    records.record_heartbeat("a", tenants=[], version=None, capabilities=[], reported_by=None, at=T0 - timedelta(minutes=5), url=url)
    assert records.last_heartbeats(["a"], url=url) == {"a": T0}


def test_a_heartbeat_without_a_time_is_now(url: str) -> None:
    before = datetime.now(UTC)
    records.record_heartbeat("a", tenants=["acme"], version=None, capabilities=[], reported_by=None, url=url)
    seen = records.last_heartbeats(["a"], url=url)["a"]
    assert seen.tzinfo is not None and before - timedelta(seconds=1) <= seen <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x" * 64}, "agent name"),
        ({"name": ""}, "agent name"),
        ({"version": "v" * 65}, "version"),
        ({"capabilities": ["ok", "bad\x00"]}, "capability"),
        ({"capabilities": [f"c{n}" for n in range(33)]}, "capabilities"),
        ({"capabilities": "jdbc"}, "capabilities"),
        ({"at": datetime(2026, 12, 8)}, "timezone-aware"),
    ],
)
def test_bad_heartbeats_are_refused_naming_the_field(url: str, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"name": "a", "tenants": ["acme"], "version": None, "capabilities": [], "reported_by": None, "url": url}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        records.record_heartbeat(**arguments)  # type: ignore[arg-type]
    assert _count(url, agent_heartbeats_table) == 0


def test_results_keep_the_last_one_per_dependency_and_never_an_older_one(url: str) -> None:
    records.save_results([_result("healthy", at=T0), _result("unhealthy", id="vpn-2", at=T0)], url=url)
    records.save_results([_result("unhealthy", at=T0 + timedelta(minutes=5))], url=url)
    records.save_results([_result("healthy", at=T0 - timedelta(minutes=5))], url=url)  # late: dropped
    assert _count(url, health_results_table) == 2
    latest = records.latest_results(url=url)
    assert [(r["dependency"]["id"], r["status"], r["checked_at"]) for r in latest] == [
        ("vpn-1", "unhealthy", (T0 + timedelta(minutes=5)).isoformat()),
        ("vpn-2", "unhealthy", T0.isoformat()),
    ]
    assert latest[0] == _result("unhealthy", at=T0 + timedelta(minutes=5)).as_dict()


def test_results_of_one_batch_keep_the_newest_of_a_dependency(url: str) -> None:
    records.save_results([_result("healthy", at=T0 + timedelta(seconds=1)), _result("unhealthy", at=T0)], url=url)
    assert [r["status"] for r in records.latest_results(url=url)] == ["healthy"]


def test_latest_results_filtered_by_tenant(url: str) -> None:
    records.save_results([_result("healthy", "acme"), _result("healthy", "beta"), _result("healthy", None)], url=url)
    assert [r["dependency"]["tenant"] for r in records.latest_results(url=url)] == [None, "acme", "beta"]
    assert [r["dependency"]["tenant"] for r in records.latest_results(["beta"], url=url)] == ["beta"]
    assert records.latest_results([], url=url) == []
    (none,) = records.latest_results(url=url)[:1]
    assert none["dependency"]["network_profile"] is None  # '' in the table, None again when read


def test_a_result_whose_id_is_too_long_is_skipped_and_counted(url: str) -> None:
    from barecount_provider import selfmetrics

    before = selfmetrics.EMIT_FAILURES.counts[("health_records", "too_long")]
    records.save_results([_result("healthy", id="x" * 1025), _result("healthy")], url=url)
    assert [r["dependency"]["id"] for r in records.latest_results(url=url)] == ["vpn-1"]
    assert selfmetrics.EMIT_FAILURES.counts[("health_records", "too_long")] == before + 1


def test_the_configured_database_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from barecount_provider import config

    configured = f"sqlite:///{tmp_path / 'configured.db'}"
    monkeypatch.setattr(config, "evidence_index_url", lambda: configured)
    records.clear_caches()
    try:
        records.record_heartbeat("a", tenants=["acme"], version=None, capabilities=[], reported_by=None, at=T0)
        assert records.last_heartbeats(["a"]) == {"a": T0}
        assert _count(configured, agent_heartbeats_table) == 1
    finally:
        records.clear_caches()
