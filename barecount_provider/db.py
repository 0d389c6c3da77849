"""The one way BareCount opens its own database (the evidence index, the retry budgets, the replay ledger):
an SQLAlchemy URL, SQLite by default, PostgreSQL in production. Never Airflow's metadata database."""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa


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


def create_tables(metadata: sa.MetaData, engine: sa.Engine, attempts: int = 5) -> None:
    """``metadata.create_all``, retried: another process (or thread) may be creating the same tables."""
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
