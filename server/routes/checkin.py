"""The client's end-of-session check-in, reached through the invite link and identity cookie."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from ..audit import record
from ..auth import CLIENT_COOKIE, DbSession
from ..checkins import QUESTIONS
from ..invites import check_invite
from ..models import Checkin, Participant, SessionStatus, TherapySession, User
from ..security import token_hash

router = APIRouter(prefix="/api/join", tags=["checkin"])
CHECKIN_WINDOW = timedelta(hours=48)


class CheckinBody(BaseModel):
    skipped: bool = False
    bond: int | None = Field(default=None, ge=0, le=10)
    goals: int | None = Field(default=None, ge=0, le=10)
    tasks: int | None = Field(default=None, ge=0, le=10)
    overall: int | None = Field(default=None, ge=0, le=10)
    comment: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _complete(self) -> CheckinBody:
        if not self.skipped and None in (self.bond, self.goals, self.tasks, self.overall):
            raise ValueError("answer all four questions, or skip the check-in")
        return self


class CheckinStatus(BaseModel):
    open: bool
    submitted: bool
    questions: dict[str, str]
    # The homework the therapist set, so it stays in front of the client after the call.
    homework: str = ""


async def _participant(
    db: DbSession, request: Request, token: str
) -> tuple[TherapySession, Participant]:
    session = await db.scalar(
        select(TherapySession).where(TherapySession.invite_token_hash == token_hash(token[:200]))
    )
    identity = request.cookies.get(CLIENT_COOKIE)
    if session is None or not identity:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This link is not valid.")
    participant = await db.scalar(
        select(Participant).where(
            Participant.session_id == session.id, Participant.identity_hash == token_hash(identity)
        )
    )
    if participant is None or not participant.admitted:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "Only the person who took part in the session can answer."
        )
    return session, participant


def _open(session: TherapySession) -> bool:
    if session.status != SessionStatus.ENDED or session.ended_at is None:
        return False
    return datetime.now(UTC) - session.ended_at < CHECKIN_WINDOW


@router.get("/{token}/checkin")
async def checkin_status(token: str, request: Request, db: DbSession) -> CheckinStatus:
    session, _ = await _participant(db, request, token)
    done = await db.scalar(select(Checkin.id).where(Checkin.session_id == session.id))
    homework = (session.agenda or {}).get("homework", "")
    return CheckinStatus(
        open=_open(session) and done is None,
        submitted=done is not None,
        questions=QUESTIONS,
        homework=homework if isinstance(homework, str) else "",
    )


class CheckinSaved(BaseModel):
    ok: bool


@router.post("/{token}/checkin", status_code=201)
async def submit_checkin(
    token: str, body: CheckinBody, request: Request, db: DbSession
) -> CheckinSaved:
    session, participant = await _participant(db, request, token)
    if not _open(session):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "The check-in opens when the session ends and closes after two days.",
        )
    if await db.scalar(select(Checkin.id).where(Checkin.session_id == session.id)):
        raise HTTPException(status.HTTP_409_CONFLICT, "Thank you — your answers are already in.")
    db.add(
        Checkin(
            session_id=session.id,
            participant_id=participant.id,
            skipped=body.skipped,
            bond=body.bond,
            goals=body.goals,
            tasks=body.tasks,
            overall=body.overall,
            comment=body.comment.strip(),
        )
    )
    record(
        db,
        "checkin_skipped" if body.skipped else "checkin_submitted",
        f"client:{participant.id}",
        session.id,
    )
    await db.commit()
    return CheckinSaved(ok=True)


# --- therapist: who the client is meeting, and when (issue 13) ---


class JoinAbout(BaseModel):
    """What the client's waiting room shows: whom they are meeting and when. Only what the
    therapist chose to share (their display name), nothing about other sessions."""

    therapist_name: str
    planned_start: datetime | None
    planned_minutes: int | None


@router.get("/{token}/about")
async def join_about(token: str, db: DbSession) -> JoinAbout:
    check = await check_invite(db, token)
    if check.session is None or check.problem is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, check.message or "This link is not valid.")
    session = check.session
    therapist = await db.get(User, session.therapist_id)
    return JoinAbout(
        therapist_name=(therapist.display_name if therapist else "").strip(),
        planned_start=(
            session.planned_start.replace(tzinfo=session.planned_start.tzinfo or UTC)
            if session.planned_start
            else None
        ),
        planned_minutes=session.planned_minutes,
    )
