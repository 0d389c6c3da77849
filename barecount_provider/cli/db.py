"""``barecount db migrate|check``: BareCount's own tables (evidence index, retry budgets, replay ledger) and
their Alembic migrations."""

from __future__ import annotations

import argparse

from barecount_provider import config


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount db migrate|check``."""
    database = sub.add_parser(
        "db",
        help="BareCount's own tables (evidence index, retry budgets, replay ledger) and their migrations",
        description="BareCount's tables live in [barecount] evidence_index_url (or --url) under Alembic "
        "migrations, with their own version table (barecount_alembic_version).",
    )
    database_sub = database.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    for name, text, func in (
        ("migrate", "create BareCount's tables or upgrade them to this version's schema (idempotent)", cmd_db_migrate),
        ("check", "exit 0 when the schema is current (or the database empty), 1 when it needs `db migrate`", cmd_db_check),
    ):
        parser = database_sub.add_parser(name, help=text, description=text)
        parser.add_argument("--url", help="SQLAlchemy URL of the database (default [barecount] evidence_index_url)")
        parser.set_defaults(func=func)


def _db_url(args: argparse.Namespace) -> str:
    """``--url``, else ``[barecount] evidence_index_url`` (the local default); exit 2 when not a database URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = args.url or config.evidence_index_url()
    try:
        make_url(url)
    except ArgumentError:
        raise ValueError(f"db {args.db_command}: --url {url!r} is not an SQLAlchemy database URL (e.g. sqlite:///index.db)") from None
    return str(url)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade BareCount's tables to the head revision; idempotent."""
    import logging

    from barecount_provider.db import migrate

    url = _db_url(args)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the one line below says what was done
    before, after = migrate.upgrade(url)
    if before == after:
        print(f"BareCount's database {_shown(url)}: already at revision {after}")
    else:
        print(f"BareCount's database {_shown(url)}: upgraded from {before or 'no revision'} to revision {after}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    """Exit 0 when BareCount's tables are at the head revision, 1 when not (nothing is changed)."""
    from barecount_provider.db import SchemaOutOfDate, migrate, schema

    url = _db_url(args)
    revision, tables = migrate.status(url)
    if revision == schema.HEAD_REVISION:
        print(f"BareCount's database {_shown(url)}: current (revision {revision})")
        return 0
    if revision is None and not tables:
        print(f"BareCount's database {_shown(url)}: empty (created at first use, or by `barecount db migrate`)")
        return 0
    print(str(SchemaOutOfDate(_shown(url), revision)))
    return 1


