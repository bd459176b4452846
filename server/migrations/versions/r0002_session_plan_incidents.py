"""Planned time and re-derivable links on sessions; incidents kept in the database (issue 13).

- ``sessions.planned_start`` / ``planned_minutes``: when the therapist means to meet and for
  how long (the room's clock and the client's waiting room show them); optional.
- ``sessions.invite_salt``: the per-link salt from which the therapist's page re-derives the
  same working client link (only its hash is stored); NULL for links made before.
- ``incidents``: quality incidents for the admin's list, kept across restarts (quality
  figures only: no names, labels or clinical content).

Revision ID: 0002_session_plan_incidents
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_session_plan_incidents"
down_revision: str | None = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("planned_start", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("planned_minutes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("invite_salt", sa.String(64), nullable=True))
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("from_label", sa.String(20), nullable=True),
        sa.Column("to_label", sa.String(20), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_incidents_at", "incidents", ["at"])
    op.create_index("ix_incidents_session_id", "incidents", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_incidents_session_id", table_name="incidents")
    op.drop_index("ix_incidents_at", table_name="incidents")
    op.drop_table("incidents")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("invite_salt")
        batch.drop_column("planned_minutes")
        batch.drop_column("planned_start")
