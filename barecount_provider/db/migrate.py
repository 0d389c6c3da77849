"""Alembic over BareCount's schema: the database's revision, and the upgrade to the head that
``barecount db migrate`` (and the first use of an empty database) runs.

The migrations are in ``barecount_provider/db/migrations/`` (``env.py``, ``versions/``), with their own
version table (:data:`~barecount_provider.db.schema.VERSION_TABLE`). An upgrade runs in one transaction
that first takes a lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level advisory lock), so two
processes upgrading at once queue and the second finds the work done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from barecount_provider import db
from barecount_provider.db import schema

if TYPE_CHECKING:
    from alembic.config import Config

SCRIPT_LOCATION = "barecount_provider.db:migrations"
ADVISORY_LOCK_KEY = 0x6261726563  # "barec": PostgreSQL's lock of BareCount's migrations


def only_barecount_tables(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's ``include_name``: BareCount's tables only (the database may be Airflow's own)."""
    return type_ != "table" or name in schema.metadata.tables


def schema_state(connection: sa.Connection) -> tuple[str | None, list[str]]:
    """The database's revision (None: no version table) and the BareCount tables it has."""
    names = set(sa.inspect(connection).get_table_names())
    tables = sorted(names & set(schema.metadata.tables))
    if schema.VERSION_TABLE not in names:
        return None, tables
    revision = connection.execute(sa.text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).scalar()
    return (str(revision) if revision is not None else None), tables


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration of BareCount's migrations (no alembic.ini: everything is here)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def upgrade(url: str) -> tuple[str | None, str | None]:
    """Upgrade BareCount's schema at ``url`` to the head; returns the revisions before and after.

    Idempotent: a database at the head is left as it is. Tables an earlier BareCount created without
    migrations are kept with their rows (revision 0001 creates only the missing ones)."""
    from alembic import command

    engine = db.create_engine(url, immediate=True)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
            before, _ = schema_state(connection)
            command.upgrade(alembic_config(connection), "head")
            after, _ = schema_state(connection)
        return before, after
    finally:
        engine.dispose()


def status(url: str) -> tuple[str | None, list[str]]:
    """:func:`schema_state` of the database at ``url`` (nothing is created or changed)."""
    engine = db.create_engine(url)
    try:
        with engine.connect() as connection:
            return schema_state(connection)
    finally:
        engine.dispose()
