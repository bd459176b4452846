"""Therapist session management: create, list, invite links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from media import SnapshotPayload, TimelineSecond

from ..alliance_hub import SignalsHub, unpack_timeline
from ..audit import record
from ..auth import DbSession, SettingsDep, Therapist
from ..models import Participant, SessionStatus, TherapySession, User
from ..security import new_session_id, new_token, token_hash
from ..settings import Settings

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


class CreateSession(BaseModel):
    client_label: str = Field(default="", max_length=120)
    invite_ttl_hours: float | None = Field(default=None, gt=0, le=24 * 30)


class SessionOut(BaseModel):
    id: str
    client_label: str
    status: str
    created_at: datetime
    invite_expires_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    room_url: str


class CreatedSession(SessionOut):
    invite_url: str


class SessionList(BaseModel):
    sessions: list[SessionOut]


class InviteOut(BaseModel):
    invite_url: str
    invite_expires_at: datetime
    # Sockets that came in on the old link and were closed by this renewal.
    closed_connections: int = 0


class RenewInvite(BaseModel):
    """A renewal usually means "the link leaked": whoever came in on it is shown out, except
    (by default) the client the therapist already admitted, who saw them on camera."""

    model_config = {"extra": "forbid"}
    keep_participants: bool = True


def session_out(session: TherapySession, settings: Settings) -> SessionOut:
    return SessionOut(
        id=session.id,
        client_label=session.client_label,
        status=str(session.status),
        created_at=session.created_at,
        invite_expires_at=session.invite_expires_at,
        started_at=session.started_at,
        ended_at=session.ended_at,
        room_url=settings.public(f"/sessions/{session.id}"),
    )


async def own_session(db: DbSession, user: User, session_id: str) -> TherapySession:
    """The therapist's own session, or 404 (not 403: other people's ids are not confirmed)."""
    session = await db.get(TherapySession, session_id[:64])
    if session is None or session.therapist_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such session.")
    return session


# Replaced links an admitted client's page may still hold (renewals kept them); older ones go.
MAX_KEPT_INVITES = 10


def _new_invite(session: TherapySession, settings: Settings, ttl_hours: float | None) -> str:
    token = new_token()
    session.invite_token_hash = token_hash(token)
    hours = ttl_hours if ttl_hours is not None else settings.invite_ttl_hours
    session.invite_expires_at = datetime.now(UTC) + timedelta(hours=hours)
    return settings.public(f"/join/{token}")


# Seconds a refused caller should wait: a restart takes seconds, and behind a load balancer
# the retry lands on another node.
DRAINING_RETRY_AFTER_S = 30


@router.post("", status_code=201)
async def create_session(
    body: CreateSession, request: Request, user: Therapist, db: DbSession, settings: SettingsDep
) -> CreatedSession:
    if request.app.state.draining:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The server is restarting for maintenance (draining) and is not starting new "
            "sessions right now. Please try again in a minute.",
            headers={"Retry-After": str(DRAINING_RETRY_AFTER_S)},
        )
    session = TherapySession(
        id=new_session_id(),
        therapist_id=user.id,
        client_label=body.client_label.strip(),
        status=SessionStatus.SCHEDULED,
    )
    invite_url = _new_invite(session, settings, body.invite_ttl_hours)
    db.add(session)
    record(db, "session_created", f"user:{user.id}", session.id)
    await db.commit()
    return CreatedSession(**session_out(session, settings).model_dump(), invite_url=invite_url)


@router.get("")
async def list_sessions(user: Therapist, db: DbSession, settings: SettingsDep) -> SessionList:
    rows = await db.scalars(
        select(TherapySession)
        .where(TherapySession.therapist_id == user.id)
        .order_by(TherapySession.created_at.desc())
        .limit(200)
    )
    return SessionList(sessions=[session_out(s, settings) for s in rows])


@router.get("/{session_id}")
async def get_session(
    session_id: str, user: Therapist, db: DbSession, settings: SettingsDep
) -> SessionOut:
    return session_out(await own_session(db, user, session_id), settings)


@router.post("/{session_id}/invite")
async def renew_invite(
    session_id: str,
    request: Request,
    user: Therapist,
    db: DbSession,
    settings: SettingsDep,
    body: RenewInvite | None = None,
) -> InviteOut:
    keep = body.keep_participants if body is not None else True
    session = await own_session(db, user, session_id)
    if session.status == SessionStatus.ENDED:
        raise HTTPException(status.HTTP_409_CONFLICT, "This session has ended.")
    if keep:
        kept = [*(session.kept_invite_hashes or []), session.invite_token_hash]
        session.kept_invite_hashes = kept[-MAX_KEPT_INVITES:]
    else:
        session.kept_invite_hashes = None
    invite_url = _new_invite(session, settings, None)
    if not keep:
        # Nobody is re-admitted silently on the new link: the therapist sees everyone again.
        await db.execute(
            update(Participant)
            .where(Participant.session_id == session.id, Participant.admitted.is_(True))
            .values(admitted=False)
        )
    record(
        db,
        "invite_renewed",
        f"user:{user.id}",
        session.id,
        "kept participants" if keep else "removed participants",
    )
    await db.commit()
    closed = 0
    room = request.app.state.rooms.get(session.id)
    if room is not None:
        closed = await room.invite_renewed(session.invite_token_hash, keep_admitted=keep)
    return InviteOut(
        invite_url=invite_url,
        invite_expires_at=session.invite_expires_at,
        closed_connections=closed,
    )


class TimelineOut(BaseModel):
    session_id: str
    seconds: list[TimelineSecond]


@router.get("/{session_id}/metrics")
async def session_metrics(
    session_id: str, request: Request, user: Therapist, db: DbSession
) -> SnapshotPayload:
    """The latest alliance-signal snapshot: live while the session runs, stored afterwards.

    Stored rows go through the same model as live snapshots, so the panel gets one shape.
    """
    session = await own_session(db, user, session_id)
    hub: SignalsHub = request.app.state.signals
    live = hub.latest(session.id)
    if live is not None:
        return SnapshotPayload.model_validate(live)
    if session.metrics is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No signals yet for this session.")
    return SnapshotPayload.model_validate(session.metrics)


@router.get("/{session_id}/timeline")
async def session_timeline(
    session_id: str, request: Request, user: Therapist, db: DbSession
) -> TimelineOut:
    """Who spoke each second of the session."""
    session = await own_session(db, user, session_id)
    hub: SignalsHub = request.app.state.signals
    live = hub.timeline(session.id)
    if live is None:
        live = unpack_timeline(session.timeline or [])
    return TimelineOut.model_validate({"session_id": session.id, "seconds": live})
