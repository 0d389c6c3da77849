"""Alembic's environment of BareCount's schema: run on the connection barecount_provider.db.migrate opens
(already in a locked transaction), with BareCount's version table and only BareCount's tables compared
(the database may be Airflow's own)."""

from __future__ import annotations

from alembic import context

from barecount_provider.db.migrate import only_barecount_tables
from barecount_provider.db.schema import VERSION_TABLE, metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None or context.is_offline_mode():
        raise RuntimeError("BareCount's migrations run through `barecount db migrate` (barecount_provider.db.migrate)")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=only_barecount_tables,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
