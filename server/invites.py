"""Resolving a client's invite token to its session."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Participant, SessionStatus, TherapySession
from .security import token_hash


class InviteProblem(enum.StrEnum):
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    ENDED = "ended"


@dataclass(frozen=True)
class InviteCheck:
    session: TherapySession | None
    problem: InviteProblem | None

    @property
    def message(self) -> str:
        return {
            InviteProblem.UNKNOWN: (
                "This link is not valid. Please check it, or ask your therapist for a new one."
            ),
            InviteProblem.EXPIRED: (
                "This link has expired. Please ask your therapist for a new one."
            ),
            InviteProblem.ENDED: "This session has ended. Thank you for joining.",
            None: "",
        }[self.problem]


async def check_invite(db: AsyncSession, token: str) -> InviteCheck:
    if not token or len(token) > 200:
        return InviteCheck(None, InviteProblem.UNKNOWN)
    session = await db.scalar(
        select(TherapySession).where(TherapySession.invite_token_hash == token_hash(token))
    )
    if session is None:
        return InviteCheck(None, InviteProblem.UNKNOWN)
    if session.status == SessionStatus.ENDED:
        return InviteCheck(session, InviteProblem.ENDED)
    if session.invite_expires_at < datetime.now(UTC):
        return InviteCheck(session, InviteProblem.EXPIRED)
    return InviteCheck(session, None)


async def kept_participant(
    db: AsyncSession, token: str, identity_hash: str
) -> tuple[TherapySession, Participant] | None:
    """The session and admitted client whose own browser (``identity_hash``) comes back on a
    link the therapist replaced while keeping participants: their page still holds that link
    and reconnects on it. Anyone else on the old link stays refused, and a renewal that did
    not keep participants forgets the old links (and un-admits everyone)."""
    if not token or len(token) > 200:
        return None
    old_hash = token_hash(token)
    rows = await db.execute(
        select(TherapySession, Participant)
        .join(Participant, Participant.session_id == TherapySession.id)
        .where(
            Participant.identity_hash == identity_hash,
            Participant.admitted.is_(True),
            Participant.denied.is_(False),
            TherapySession.status != SessionStatus.ENDED,
            TherapySession.kept_invite_hashes.is_not(None),
        )
    )
    for session, participant in rows:
        if old_hash in (session.kept_invite_hashes or []):
            return session, participant
    return None
