"""Database tables.

Times are stored as timezone-aware UTC. The audit log is append-only: nothing in the code base
updates or deletes its rows (retention and erasure delete sessions and their derived rows, and
leave the audit entries about them, which carry no clinical content).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that reads back aware UTC on every engine.

    PostgreSQL keeps the offset (timestamptz); SQLite has no time type and hands back naive
    values. Normalising here, once, means no caller compares a naive time with an aware one
    and every JSON answer carries an explicit ``+00:00`` whichever engine is behind it. A
    naive value written from Python is taken to be UTC already (``utcnow`` never makes one).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class UserRole(enum.StrEnum):
    THERAPIST = "therapist"
    ADMIN = "admin"


class SessionStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[UserRole] = mapped_column(Enum(UserRole, native_enum=False, length=20))
    password_hash: Mapped[str] = mapped_column(String(200))
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Two-factor sign-in (server/totp.py). All nullable: NULL reads as "not enrolled".
    # The base32 TOTP secret once confirmed; a code must be computed from it, so it cannot be
    # stored as a hash.
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A secret shown for enrolment but not yet confirmed with a code; it signs nobody in.
    totp_pending_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The 30 s time step of the last code accepted: a code is good once, and never an older one.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Bumped whenever a two-step sign-in completes (and on disable or reset): a pending-login
    # token carries the value it was issued under, so it works once and dies with the change.
    login_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)


class LoginSession(Base):
    """A signed-in browser. Only a SHA-256 of the cookie token is stored."""

    __tablename__ = "login_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class RecoveryCode(Base):
    """A one-time two-factor recovery code. Only a SHA-256 is stored: the codes are random
    (50 bits each) and sign-in attempts are throttled, so a slow hash would add nothing."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AppSetting(Base):
    """Server-wide settings an admin changes at run time (not environment configuration),
    and server-generated secrets every node must share."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SetupToken(Base):
    """One-time link that creates the first account when the database has no users."""

    __tablename__ = "setup_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TherapySession(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    therapist_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    client_label: Mapped[str] = mapped_column(String(120), default="")
    status: Mapped[SessionStatus] = mapped_column(
        Enum(SessionStatus, native_enum=False, length=20), default=SessionStatus.SCHEDULED
    )
    invite_token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    invite_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Hashes of links replaced with keep_participants: they still let an admitted client's
    # own browser back in (its page holds the old link), and nobody else (server/invites.py).
    kept_invite_hashes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    timeline: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    agenda: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Run-length encoded per-tick speech states: replayed to resume after a server restart.
    signal_input: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # --- therapist: planned time and re-derivable client links (issue 13) ---
    # When the therapist means to meet, and for how long: the room's clock counts against it
    # and the client's waiting room shows it. Both optional (an ad-hoc session has neither).
    planned_start: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    planned_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Random per-link salt: the link's token is HMAC(server invite key, id + salt), so the
    # therapist can copy the same working link again (another tab, after a reload) while only
    # its hash is stored. NULL for links made before this existed (they can only be renewed).
    invite_salt: Mapped[str | None] = mapped_column(String(64), nullable=True)

    therapist: Mapped[User] = relationship(lazy="joined")


class Participant(Base):
    """A browser identity that used a session's invite (clients) or the therapist."""

    __tablename__ = "participants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))
    # SHA-256 of the client's browser identity cookie; NULL for the therapist.
    identity_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    admitted: Mapped[bool] = mapped_column(default=False)
    denied: Mapped[bool] = mapped_column(default=False)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """Append-only record of who did what and when; never clinical content.

    Each entry is chained to the one before it (``server/audit.py``): ``hash`` covers the
    entry's fields and ``prev_hash``, so changing, inserting or removing an entry breaks the
    chain at that point. ``prev_hash`` is unique: two writers that both read the same last
    entry cannot both append after it, whatever process they run in.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_prev_hash", "prev_hash", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    session_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(64))  # "user:3", "client:7", "system"
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    # NULL only on entries an older version wrote and the upgrade has not sealed yet.
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Checkin(Base):
    """The client's end-of-session check-in (0–10 each), or a record that it was skipped."""

    __tablename__ = "checkins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), unique=True, index=True
    )
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    skipped: Mapped[bool] = mapped_column(default=False)
    bond: Mapped[int | None] = mapped_column(Integer, nullable=True)
    goals: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    overall: Mapped[int | None] = mapped_column(Integer, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- admin: quality incidents kept across restarts (client helper, issue 13) ---
class Incident(Base):
    """A move into or out of poor/lost quality, or a media restart the server ordered, kept
    for the admin's incident list across restarts. Quality figures only: no client label, no
    name, no clinical content; ``role`` is "therapist", "client" or "both"."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    session_id: Mapped[str] = mapped_column(String(32), index=True)
    role: Mapped[str] = mapped_column(String(20))
    from_label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_label: Mapped[str] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    kind: Mapped[str] = mapped_column(String(32), default="quality")
    detail: Mapped[str] = mapped_column(Text, default="")
