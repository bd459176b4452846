"""Baseline: the schema of main 1f34663, the last version that added columns on start.

Written out by hand and frozen: later model changes get their own revisions, never edits here.
``baseline_metadata`` is also what ``server.migrations`` repairs an unversioned database
against before stamping it with this revision, so the two can never drift apart.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision: str | None = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False, index: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, index=index)


def baseline_metadata() -> sa.MetaData:
    """The baseline tables; ``BACKFILL`` says what a NULL in a NOT NULL column becomes."""
    md = sa.MetaData()
    sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True, index=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("preferences", sa.JSON, nullable=True),
        _ts("created_at"),
        sa.Column("totp_secret", sa.String(64), nullable=True),
        sa.Column("totp_pending_secret", sa.String(64), nullable=True),
        _ts("totp_enabled_at", nullable=True),
        sa.Column("totp_last_step", sa.BigInteger, nullable=True),
        sa.Column("login_epoch", sa.Integer, nullable=True),
    )
    sa.Table(
        "login_sessions",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        _ts("created_at"),
        _ts("last_seen_at"),
    )
    sa.Table(
        "recovery_codes",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("code_hash", sa.String(64), nullable=False, index=True),
        _ts("used_at", nullable=True),
    )
    sa.Table(
        "app_settings",
        md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        _ts("updated_at"),
    )
    sa.Table(
        "setup_tokens",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
    )
    sa.Table(
        "sessions",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "therapist_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True
        ),
        sa.Column("client_label", sa.String(120), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("invite_token_hash", sa.String(64), nullable=False, unique=True, index=True),
        _ts("invite_expires_at"),
        sa.Column("kept_invite_hashes", sa.JSON, nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("ended_at", nullable=True),
        sa.Column("metrics", sa.JSON, nullable=True),
        sa.Column("timeline", sa.JSON, nullable=True),
        sa.Column("agenda", sa.JSON, nullable=True),
        sa.Column("signal_input", sa.JSON, nullable=True),
    )
    sa.Table(
        "participants",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "session_id",
            sa.String(32),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("identity_hash", sa.String(64), nullable=True, index=True),
        sa.Column("admitted", sa.Boolean, nullable=False),
        sa.Column("denied", sa.Boolean, nullable=False),
        _ts("first_seen_at"),
        _ts("last_seen_at"),
    )
    sa.Table(
        "audit_log",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        _ts("at", index=True),
        sa.Column("session_id", sa.String(32), nullable=True, index=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("hash", sa.String(64), nullable=True),
        sa.Index("ix_audit_log_prev_hash", "prev_hash", unique=True),
    )
    sa.Table(
        "checkins",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "session_id",
            sa.String(32),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
            index=True,
        ),
        sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("skipped", sa.Boolean, nullable=False),
        sa.Column("bond", sa.Integer, nullable=True),
        sa.Column("goals", sa.Integer, nullable=True),
        sa.Column("tasks", sa.Integer, nullable=True),
        sa.Column("overall", sa.Integer, nullable=True),
        sa.Column("comment", sa.Text, nullable=False),
        _ts("created_at"),
    )
    return md


# What a NULL in a NOT NULL column of an unversioned database becomes when it is repaired: the
# value the ORM would have written (the model's Python-side default), or the time of the repair
# for timestamps. Only columns with such a default are listed; a NULL anywhere else cannot be
# invented and stops the repair with a precise message.
BACKFILL: dict[tuple[str, str], object] = {
    ("users", "display_name"): "",
    ("sessions", "client_label"): "",
    ("sessions", "status"): "SCHEDULED",  # SQLAlchemy stores enum names
    ("participants", "admitted"): False,
    ("participants", "denied"): False,
    ("audit_log", "detail"): "",
    ("checkins", "skipped"): False,
    ("checkins", "comment"): "",
}
NOW_BACKFILL = {
    ("users", "created_at"),
    ("login_sessions", "created_at"),
    ("login_sessions", "last_seen_at"),
    ("app_settings", "updated_at"),
    ("sessions", "created_at"),
    ("participants", "first_seen_at"),
    ("participants", "last_seen_at"),
    ("audit_log", "at"),
    ("checkins", "created_at"),
}


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind())


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind())
