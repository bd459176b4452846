"""Retention and erasure: removing sessions and every row derived from them.

A session's clinical data lives in its own row (signals, timeline, agenda and homework, the
replay input, the invite token's hash) and in the rows that point at it (participants and the
client's check-in). Quality points and incidents are kept in memory only (bounded, lost on
restart) and are dropped with the session when the server that holds them does the erasing.
Media is never on disk, so there is nothing else to erase.

Audit entries stay: they say who did what and when, carry no clinical content (ids, actions
and counts; see tests/test_retention.py), and erasing them would break the audit chain. The
erasure itself is audited with counts and, for a client, a hash of the label, never the label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .audit import record
from .models import Checkin, Participant, SessionStatus, TherapySession, utcnow


@dataclass(frozen=True)
class Erased:
    """How many rows of each kind an erasure removes (or, in a dry run, would remove)."""

    sessions: int = 0
    participants: int = 0
    checkins: int = 0

    def describe(self) -> str:
        return (
            f"sessions {self.sessions}, participants {self.participants}, check-ins {self.checkins}"
        )


def label_digest(therapist_id: int, label: str) -> str:
    """A stand-in for a client label in the audit log: the therapist, who knows the label, can
    match an erasure to it; an admin reading the log learns nothing but that it was one client.
    Scoped to the therapist so that the same pseudonym at two therapists hashes differently."""
    text = f"rapport-client-label\0{therapist_id}\0{label}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def count_rows(db: AsyncSession, session_ids: Sequence[str]) -> Erased:
    if not session_ids:
        return Erased()
    ids = list(session_ids)
    participants = await db.scalar(
        select(func.count()).select_from(Participant).where(Participant.session_id.in_(ids))
    )
    checkins = await db.scalar(
        select(func.count()).select_from(Checkin).where(Checkin.session_id.in_(ids))
    )
    return Erased(len(ids), participants or 0, checkins or 0)


async def erase_sessions(db: AsyncSession, session_ids: Sequence[str]) -> Erased:
    """Delete the sessions and their rows in the caller's transaction; children first, so it
    holds without relying on the database enforcing ON DELETE CASCADE."""
    counts = await count_rows(db, session_ids)
    ids = list(session_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        await db.execute(delete(Checkin).where(Checkin.session_id.in_(chunk)))
        await db.execute(delete(Participant).where(Participant.session_id.in_(chunk)))
        await db.execute(delete(TherapySession).where(TherapySession.id.in_(chunk)))
    return counts


def purge_cutoff(retention_days: int, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(days=retention_days)


async def expired_sessions(db: AsyncSession, cutoff: datetime) -> list[str]:
    """Sessions that ended before the cutoff. Live and scheduled sessions are never expired:
    retention runs from the end of a session, not from when it was booked."""
    rows = await db.scalars(
        select(TherapySession.id).where(
            TherapySession.status == SessionStatus.ENDED,
            TherapySession.ended_at.is_not(None),
            TherapySession.ended_at < cutoff,
        )
    )
    return list(rows)


async def purge(db: AsyncSession, retention_days: int, *, dry_run: bool) -> Erased:
    ids = await expired_sessions(db, purge_cutoff(retention_days))
    if dry_run:
        return await count_rows(db, ids)
    counts = await erase_sessions(db, ids)
    record(
        db,
        "sessions_purged",
        "system",
        detail=f"older than {retention_days} days: {counts.describe()}",
    )
    await db.commit()
    return counts


async def client_sessions(db: AsyncSession, therapist_id: int, label: str) -> list[TherapySession]:
    rows = await db.scalars(
        select(TherapySession).where(
            TherapySession.therapist_id == therapist_id, TherapySession.client_label == label
        )
    )
    return list(rows)


async def erase_client(db: AsyncSession, therapist_id: int, label: str) -> Erased:
    """Erase one client's sessions of one therapist and audit it; the caller has checked that
    none of them is in use."""
    sessions = await client_sessions(db, therapist_id, label)
    counts = await erase_sessions(db, [s.id for s in sessions])
    record(
        db,
        "client_data_deleted",
        f"user:{therapist_id}",
        detail=f"label {label_digest(therapist_id, label)}: {counts.describe()}",
    )
    await db.commit()
    return counts
