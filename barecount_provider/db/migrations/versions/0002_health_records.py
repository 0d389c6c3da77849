"""The health records: agents' heartbeats (one row per agent) and each dependency's last health result (one row
per tenant, network profile, kind and id), for health/records.py.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "barecount_agent_heartbeats",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("tenants", sa.Text, nullable=False),
        sa.Column("version", sa.String(64)),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("reported_by", sa.String(255)),
        sa.Column("seen_epoch", sa.Float, nullable=False),
        sa.Column("beats", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "barecount_health_results",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("network_profile", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("dependency_id", sa.String(1024), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32)),
        sa.Column("checked_epoch", sa.Float, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("barecount_health_results")
    op.drop_table("barecount_agent_heartbeats")
