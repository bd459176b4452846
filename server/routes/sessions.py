"""Therapist session management: create, list, invite links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from media import SnapshotPayload, TimelineSecond

from ..alliance_hub import unpack_timeline
from ..audit import record
from ..auth import DbSession, SettingsDep, Therapist
from ..cluster.reads import live_signals
from ..models import AppSetting, Participant, SessionStatus, TherapySession, User
from ..security import new_session_id, token_hash
from ..settings import Settings

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


# A planned session lasts from 5 minutes to 8 hours; longer is a typing slip, not a session.
PLANNED_MINUTES_MIN = 5
PLANNED_MINUTES_MAX = 8 * 60


class CreateSession(BaseModel):
    model_config = {"extra": "forbid"}
    client_label: str = Field(default="", max_length=120)
    invite_ttl_hours: float | None = Field(default=None, gt=0, le=24 * 30)
    # With a time zone (the browser sends UTC): a bare local time would be read in the
    # server's zone and the client would be told the wrong hour.
    planned_start: AwareDatetime | None = None
    planned_minutes: int | None = Field(
        default=None, ge=PLANNED_MINUTES_MIN, le=PLANNED_MINUTES_MAX
    )


class SessionOut(BaseModel):
    id: str
    client_label: str
    status: str
    created_at: datetime
    invite_expires_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    room_url: str
    planned_start: datetime | None = None
    planned_minutes: int | None = None
    # The client link no longer opens the waiting room (the list says "Link expired").
    invite_expired: bool = False
    # Whether GET .../invite can show the link again (links made before re-derivable links
    # existed cannot; the therapist makes a new one).
    invite_available: bool = False


class CreatedSession(SessionOut):
    invite_url: str


class SessionList(BaseModel):
    sessions: list[SessionOut]


class InviteOut(BaseModel):
    invite_url: str
    invite_expires_at: datetime
    invite_expired: bool = False
    # Sockets that came in on the old link and were closed by this renewal.
    closed_connections: int = 0


class RenewInvite(BaseModel):
    """A renewal usually means "the link leaked": whoever came in on it is shown out, except
    (by default) the client the therapist already admitted, who saw them on camera."""

    model_config = {"extra": "forbid"}
    keep_participants: bool = True


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes for the UTC values we stored."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def invite_expired(session: TherapySession) -> bool:
    return _aware(session.invite_expires_at) < datetime.now(UTC)


def session_out(session: TherapySession, settings: Settings) -> SessionOut:
    return SessionOut(
        id=session.id,
        client_label=session.client_label,
        status=str(session.status),
        # SQLite hands back naive datetimes: send them with their zone, or the browser reads
        # them as local time (the room's clock would be off by the therapist's UTC offset).
        created_at=_aware(session.created_at),
        invite_expires_at=_aware(session.invite_expires_at),
        started_at=_aware(session.started_at) if session.started_at else None,
        ended_at=_aware(session.ended_at) if session.ended_at else None,
        room_url=settings.public(f"/sessions/{session.id}"),
        # Always with its zone: a bare time would be read as local time by the browser.
        planned_start=_aware(session.planned_start) if session.planned_start else None,
        planned_minutes=session.planned_minutes,
        invite_expired=session.status != SessionStatus.ENDED and invite_expired(session),
        invite_available=session.invite_salt is not None,
    )


async def own_session(db: DbSession, user: User, session_id: str) -> TherapySession:
    """The therapist's own session, or 404 (not 403: other people's ids are not confirmed)."""
    session = await db.get(TherapySession, session_id[:64])
    if session is None or session.therapist_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such session.")
    return session


# Replaced links an admitted client's page may still hold (renewals kept them); older ones go.
MAX_KEPT_INVITES = 10


# The key client links are derived with (server-wide, shared by every node through the
# database, made on first use like the sign-in signing key in server/totp.py).
INVITE_KEY_SETTING = "invite_link_key"


async def _invite_key(db: AsyncSession) -> bytes:
    row = await db.get(AppSetting, INVITE_KEY_SETTING)
    if row is not None and isinstance(row.value, str):
        return base64.urlsafe_b64decode(row.value)
    key = secrets.token_bytes(32)
    # A separate transaction: the caller's own changes must not ride on this commit.
    bind = db.bind
    async with AsyncSession(bind) as own:
        own.add(AppSetting(key=INVITE_KEY_SETTING, value=base64.urlsafe_b64encode(key).decode()))
        try:
            await own.commit()
        except IntegrityError:  # another request or node made it first: use theirs
            await own.rollback()
            stored = await own.get(AppSetting, INVITE_KEY_SETTING)
            assert stored is not None and isinstance(stored.value, str)
            return base64.urlsafe_b64decode(stored.value)
    return key


def _derive_token(key: bytes, session_id: str, salt: str) -> str:
    """The link's token: 256 bits, unguessable without the key, the same every time it is
    derived, so a reload or another tab can show the link the client already has."""
    digest = hmac.new(key, f"invite:{session_id}:{salt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def _new_invite(
    db: AsyncSession, session: TherapySession, settings: Settings, ttl_hours: float | None
) -> str:
    session.invite_salt = secrets.token_hex(16)
    token = _derive_token(await _invite_key(db), session.id, session.invite_salt)
    session.invite_token_hash = token_hash(token)
    hours = ttl_hours if ttl_hours is not None else settings.invite_ttl_hours
    if ttl_hours is None and session.planned_start is not None:
        # A link made days ahead must still work at the planned time (and a while after).
        end = _aware(session.planned_start) + timedelta(minutes=session.planned_minutes or 60)
        hours = max(hours, (end - datetime.now(UTC)).total_seconds() / 3600 + 12)
    session.invite_expires_at = datetime.now(UTC) + timedelta(hours=hours)
    return settings.public(f"/join/{token}")


async def current_invite_url(
    db: AsyncSession, session: TherapySession, settings: Settings
) -> str | None:
    """The link the client already holds, derived again; None for an old underived link."""
    if session.invite_salt is None:
        return None
    token = _derive_token(await _invite_key(db), session.id, session.invite_salt)
    if token_hash(token) != session.invite_token_hash:
        return None  # the hash was replaced by something else: never show a dead link
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
        planned_start=body.planned_start.astimezone(UTC) if body.planned_start else None,
        planned_minutes=body.planned_minutes,
    )
    invite_url = await _new_invite(db, session, settings, body.invite_ttl_hours)
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
    invite_url = await _new_invite(db, session, settings, None)
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
    elif request.app.state.cluster is not None:  # the room may be on another node
        closed = await request.app.state.cluster.remote_invite_renewed(
            session.id, session.invite_token_hash, keep
        )
    return InviteOut(
        invite_url=invite_url,
        invite_expires_at=_aware(session.invite_expires_at),
        invite_expired=False,
        closed_connections=closed,
    )


@router.get("/{session_id}/invite")
async def current_invite(
    session_id: str, user: Therapist, db: DbSession, settings: SettingsDep
) -> InviteOut:
    """The client link again, unchanged (the client's copy keeps working), with its expiry."""
    session = await own_session(db, user, session_id)
    if session.status == SessionStatus.ENDED:
        raise HTTPException(status.HTTP_409_CONFLICT, "This session has ended.")
    url = await current_invite_url(db, session, settings)
    if url is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "This link was made before links could be shown again. Make a new link.",
        )
    return InviteOut(
        invite_url=url,
        invite_expires_at=_aware(session.invite_expires_at),
        invite_expired=invite_expired(session),
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
    # In cluster mode from the node hosting the room, wherever this request landed.
    live, _ = await live_signals(request.app, session.id)
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
    _, live = await live_signals(request.app, session.id)
    if live is None:
        live = unpack_timeline(session.timeline or [])
    return TimelineOut.model_validate({"session_id": session.id, "seconds": live})
