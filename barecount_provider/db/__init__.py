"""The one way BareCount opens its own database (the evidence index, the retry budgets, the replay ledger
and approvals): an SQLAlchemy URL, SQLite by default, PostgreSQL in production; never Airflow's metadata
database's tables (it may share that database). Its tables are in :mod:`barecount_provider.db.schema`,
under Alembic migrations (:mod:`barecount_provider.db.migrate`, ``barecount db migrate``)."""

from __future__ import annotations

import os
import threading
from typing import Any

import sqlalchemy as sa

from barecount_provider.db import schema


def create_engine(url: str, *, immediate: bool = False, busy_timeout_s: float = 30.0) -> sa.Engine:
    """An engine for ``url``.

    SQLite: the file's directory is created, WAL journal, ``synchronous=NORMAL``, a busy timeout; with
    ``immediate`` every transaction is ``BEGIN IMMEDIATE`` (it takes the write lock at once, so two writers
    queue instead of failing when a reader upgrades). Other databases: a connection pool with pre-ping.
    """
    if not url.startswith("sqlite:"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = url.removeprefix("sqlite:///")
    if path and path != url:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})

    @sa.event.listens_for(engine, "connect")
    def _connect(connection: Any, _record: Any) -> None:
        if immediate:
            connection.isolation_level = None  # BEGIN ourselves (below)
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    if immediate:

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SchemaOutOfDate(RuntimeError):
    """BareCount's tables in this database are not at the revision this code needs."""

    def __init__(self, url: str, revision: str | None) -> None:
        found = f"at schema revision {revision}" if revision else "created before schema migrations (no revision)"
        super().__init__(
            f"BareCount's database {url} is {found}; this BareCount needs revision {schema.HEAD_REVISION}: "
            f"run `barecount db migrate` (see docs/database.md)"
        )
        self.url, self.revision = url, revision


_SCHEMA_CURRENT: set[str] = set()  # URLs whose schema this process found at the head revision
_SCHEMA_LOCK = threading.Lock()


def ensure_schema(engine: sa.Engine) -> None:
    """Make sure BareCount's tables at ``engine`` are at :data:`schema.HEAD_REVISION`, once per process and URL.

    A database with none of BareCount's tables (a new SQLite file, an empty PostgreSQL database) is migrated
    to the head at once: the embedded default needs no setup. A database at another revision, or with tables
    an earlier BareCount created without migrations, raises :class:`SchemaOutOfDate` (``barecount db
    migrate`` upgrades it). A process pays the check once (two small queries), never per task try.
    """
    key = engine.url.render_as_string(hide_password=False)
    if key in _SCHEMA_CURRENT:
        return
    with _SCHEMA_LOCK:
        if key in _SCHEMA_CURRENT:
            return
        from barecount_provider.db import migrate

        with engine.connect() as connection:
            revision, tables = migrate.schema_state(connection)
        if revision != schema.HEAD_REVISION:
            if revision is not None or tables:
                raise SchemaOutOfDate(engine.url.render_as_string(hide_password=True), revision)
            migrate.upgrade(key)
        _SCHEMA_CURRENT.add(key)
