"""Health records in BareCount's database: on-premise agents' last heartbeats and each dependency's last result.

Two tables of :mod:`barecount_provider.db.schema` (Alembic revision 0002), in the database of ``[barecount]
evidence_index_url`` (SQLite by default, PostgreSQL in production), which the API server, the task processes,
the triggerer and the ``barecount`` command all reach:

* ``barecount_agent_heartbeats``: one row per agent (:func:`record_heartbeat` replaces it), so a flood of
  heartbeats stays one row; ``beats`` counts them. An agent's health is the age of ``seen_epoch``: the row never
  expires by itself, its age makes it stale (``max_heartbeat_age_seconds`` of the profile).
* ``barecount_health_results``: one row per (tenant, network profile, kind, id) with the last result
  (:func:`save_results`); an older result never replaces a newer one.

Every function takes an optional ``url`` (default: ``[barecount] evidence_index_url``); one engine per URL and
process. No Airflow import here: the domain stands on the foundation only.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from barecount_provider import db, selfmetrics
from barecount_provider.db.schema import MAX_AGENT_NAME, agent_heartbeats_table, health_results_table
from barecount_provider.health.result import HealthResult

log = logging.getLogger(__name__)

# Bounds of what one heartbeat carries (the REST endpoint states the same in its OpenAPI document).
MAX_VERSION = 64
MAX_CAPABILITIES = 32
MAX_CAPABILITY = 64
MAX_TENANTS = 256
MAX_REPORTED_BY = 255
MAX_DEPENDENCY_ID = 1024
NO_NAME = ""  # the stored tenant / network profile of a result that has none


def _text(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise ValueError(f"{what} {value!r} is not a text of 1 to {limit} characters (without NUL)")
    return value


def _epoch(at: datetime | None) -> float:
    if at is None:
        return time.time()
    if at.tzinfo is None:
        raise ValueError(f"heartbeat time {at!r} must be timezone-aware")
    return at.timestamp()


def _instant(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class HealthRecords:
    """The health tables at ``url`` (an SQLAlchemy URL: the evidence index's by default)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = db.create_engine(url, immediate=True)
        db.ensure_schema(self.engine)

    def _upsert(self, table: sa.Table, keys: Sequence[str], row: Mapping[str, Any], update: Mapping[str, Any], where: Any = None) -> Any:
        """An insert that updates the row of the same key: ``update`` gives the new values (``excluded`` is the
        row that was refused); ``where`` (given ``excluded``) limits when it does."""
        dialect = self.engine.dialect.name
        insert: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            insert = postgresql.insert(table).values(**row)
        elif dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            insert = sqlite.insert(table).values(**row)
        else:
            raise ValueError(f"health records: no upsert for the {dialect} dialect (SQLite or PostgreSQL)")
        excluded = insert.excluded
        return insert.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: value(excluded) for name, value in update.items()},
            where=where(excluded) if where is not None else None,
        )

    # -------------------------------------------------------------------------------------- heartbeats

    def record_heartbeat(
        self,
        name: str,
        *,
        tenants: Sequence[str],
        version: str | None,
        capabilities: Sequence[str],
        reported_by: str | None,
        at: datetime | None = None,
    ) -> None:
        _text(name, "agent name", MAX_AGENT_NAME)
        if version is not None:
            _text(version, "version", MAX_VERSION)
        if isinstance(capabilities, str) or len(capabilities) > MAX_CAPABILITIES:
            raise ValueError(f"capabilities: a list of at most {MAX_CAPABILITIES} texts expected")
        if isinstance(tenants, str) or len(tenants) > MAX_TENANTS:
            raise ValueError(f"tenants: a list of at most {MAX_TENANTS} tenant names expected")
        for capability in capabilities:
            _text(capability, "capability", MAX_CAPABILITY)
        for tenant in tenants:
            _text(tenant, "tenant", 128)
        if reported_by is not None:
            reported_by = reported_by[:MAX_REPORTED_BY]
        c = agent_heartbeats_table.c
        row = {
            "name": name,
            "tenants": json.dumps(sorted(set(tenants))),
            "version": version,
            "capabilities": json.dumps(list(dict.fromkeys(capabilities))),
            "reported_by": reported_by,
            "seen_epoch": _epoch(at),
            "beats": 1,
        }
        update = {
            "tenants": lambda x: x.tenants,
            "version": lambda x: x.version,
            "capabilities": lambda x: x.capabilities,
            "reported_by": lambda x: x.reported_by,
            # a heartbeat that arrives late (an older time) never moves the last one back
            "seen_epoch": lambda x: sa.case((c.seen_epoch > x.seen_epoch, c.seen_epoch), else_=x.seen_epoch),
            "beats": lambda _x: c.beats + 1,
        }
        with self.engine.begin() as connection:
            connection.execute(self._upsert(agent_heartbeats_table, ["name"], row, update))

    def heartbeats(self, names: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Every agent's last heartbeat (or those of ``names``), by name: name, tenants, version, capabilities,
        reported_by, seen_at (ISO 8601, UTC), age_seconds, beats."""
        c = agent_heartbeats_table.c
        query = sa.select(agent_heartbeats_table).order_by(c.name)
        if names is not None:
            if not names:
                return []
            query = query.where(c.name.in_(sorted(set(names))))
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        now = time.time()
        return [
            {
                "name": row["name"],
                "tenants": json.loads(row["tenants"]),
                "version": row["version"],
                "capabilities": json.loads(row["capabilities"]),
                "reported_by": row["reported_by"],
                "seen_at": _instant(row["seen_epoch"]).isoformat(),
                "age_seconds": max(0.0, round(now - row["seen_epoch"], 3)),
                "beats": int(row["beats"]),
            }
            for row in rows
        ]

    def last_heartbeats(self, names: Sequence[str]) -> dict[str, datetime]:
        c = agent_heartbeats_table.c
        if not names:
            return {}
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(c.name, c.seen_epoch).where(c.name.in_(sorted(set(names))))).all()
        return {str(name): _instant(epoch) for name, epoch in rows}

    # ----------------------------------------------------------------------------------------- results

    def save_results(self, results: Sequence[HealthResult]) -> None:
        c = health_results_table.c
        rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for result in results:
            dependency = result.dependency
            if len(dependency.id) > MAX_DEPENDENCY_ID or len(dependency.kind) > 64:
                log.warning(
                    "BareCount health records: the result of %s %r is not kept: its kind or id is longer than the "
                    "table's column (%d characters)", dependency.kind, dependency.id[:80], MAX_DEPENDENCY_ID,
                )
                selfmetrics.failure("health_records", "too_long")
                continue
            key = (dependency.tenant or NO_NAME, dependency.network_profile or NO_NAME, dependency.kind, dependency.id)
            row = {
                "tenant": key[0],
                "network_profile": key[1],
                "kind": key[2],
                "dependency_id": key[3],
                "status": result.status,
                "error_code": result.error_code,
                "checked_epoch": result.checked_at.timestamp(),
                "result": json.dumps(result.as_dict(), sort_keys=True, default=str),
            }
            previous = rows.get(key)
            if previous is None or previous["checked_epoch"] <= row["checked_epoch"]:
                rows[key] = row
        if not rows:
            return
        values = ("status", "error_code", "checked_epoch", "result")
        keys = ["tenant", "network_profile", "kind", "dependency_id"]
        with self.engine.begin() as connection:
            for row in rows.values():
                statement = self._upsert(
                    health_results_table,
                    keys,
                    row,
                    {name: (lambda x, name=name: x[name]) for name in values},
                    where=lambda x: x.checked_epoch >= c.checked_epoch,  # an older result never replaces a newer one
                )
                connection.execute(statement)

    def latest_results(self, tenants: Collection[str] | None = None) -> list[dict[str, Any]]:
        c = health_results_table.c
        query = sa.select(c.result).order_by(c.tenant, c.network_profile, c.kind, c.dependency_id)
        if tenants is not None:
            if not tenants:
                return []
            query = query.where(c.tenant.in_(sorted(set(tenants))))
        with self.engine.connect() as connection:
            texts = connection.execute(query).scalars().all()
        return [json.loads(text) for text in texts]


_LOCK = threading.Lock()


@functools.cache
def _cached(url: str, pid: int) -> HealthRecords:
    return HealthRecords(url)


def open_records(url: str | None = None) -> HealthRecords:
    """The health records at ``url``, or in the evidence index's database (``[barecount] evidence_index_url``);
    one per URL and process."""
    if url is None:
        from barecount_provider import config

        url = config.evidence_index_url()
    with _LOCK:
        return _cached(url, os.getpid())


def clear_caches() -> None:
    """Forget the open records (tests that change the configured URL)."""
    with _LOCK:
        _cached.cache_clear()


def record_heartbeat(
    name: str,
    *,
    tenants: Sequence[str],
    version: str | None,
    capabilities: Sequence[str],
    reported_by: str | None,
    at: datetime | None = None,
    url: str | None = None,
) -> None:
    """Record agent ``name``'s heartbeat (``at``: now by default, timezone-aware): one row per agent, the previous
    heartbeat replaced (a heartbeat older than the stored one keeps the stored time). ``tenants`` are the tenants
    whose policy names the agent (the caller's business: never what the agent says). ``ValueError`` naming the
    field for a name, version or capability that is empty, too long (:data:`MAX_VERSION`, ...) or holds NUL."""
    open_records(url).record_heartbeat(
        name, tenants=tenants, version=version, capabilities=capabilities, reported_by=reported_by, at=at
    )


def last_heartbeats(names: Sequence[str], *, url: str | None = None) -> dict[str, datetime]:
    """When each of ``names`` last sent a heartbeat (timezone-aware UTC); an agent never seen is absent."""
    return open_records(url).last_heartbeats(names)


def heartbeats(names: Collection[str] | None = None, *, url: str | None = None) -> list[dict[str, Any]]:
    """The agents' last heartbeats in full (see :meth:`HealthRecords.heartbeats`), by name."""
    return open_records(url).heartbeats(names)


def save_results(results: Sequence[HealthResult], *, url: str | None = None) -> None:
    """Keep each result as its dependency's last one: one row per (tenant, network profile, kind, id); a result
    older (``checked_at``) than the stored one is dropped. A result whose kind or id is too long for the table is
    skipped, logged and counted (``barecount.emit.failed{sink=health_records,stage=too_long}``)."""
    open_records(url).save_results(results)


def latest_results(tenants: Collection[str] | None = None, *, url: str | None = None) -> list[dict[str, Any]]:
    """The last result of every dependency (``HealthResult.as_dict()`` shapes), by tenant, network profile, kind
    and id; with ``tenants``, only theirs (a result of no tenant is then left out)."""
    return open_records(url).latest_results(tenants)
