"""WebSocket endpoints: authenticate the socket, then hand it to the session's room."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from sqlalchemy import select

from media import Role
from signaling.limits import ConnectLimiter
from signaling.messages import ErrorCode, ErrorMessage
from signaling.room import Member
from signaling.rooms import RoomRegistry

from ..auth import CLIENT_COOKIE, ENROLMENT_MESSAGE, LOGIN_COOKIE, user_from_token
from ..cluster import Cluster
from ..db import Database
from ..invites import InviteCheck, InviteProblem, check_invite, kept_participant
from ..logs import bind_session
from ..models import Participant, SessionStatus, TherapySession, UserRole, utcnow
from ..security import token_hash
from ..settings import Settings
from ..totp import enrolment_required

router = APIRouter()


async def _refuse(ws: WebSocket, code: ErrorCode, message: str, close_code: int) -> None:
    """Accept only to say why, so the page can show a precise reason."""
    await ws.accept()
    with contextlib.suppress(Exception):
        await ws.send_text(ErrorMessage(code=code, message=message, fatal=True).model_dump_json())
        await ws.close(close_code)


DRAINING_MESSAGE = (
    "The server is restarting for maintenance and is not taking new calls right now. "
    "Please try again in a minute."
)


async def serve_here(app: Any, session_id: str, status: str, member: Member) -> None:
    """Serve an accepted socket (local, or relayed from another node) in this node's room."""
    # Accept before loading the signals: from `prepare` returning to the room holding them
    # nothing awaits, so an emptied room's signals cannot be unloaded in between.
    await app.state.signals.prepare(session_id)
    room = app.state.rooms.get_or_create(session_id, status)
    await room.serve(member)


async def serve_socket(ws: WebSocket, session_id: str, status: str, member: Member) -> None:
    """In cluster mode the room may live on another node: relay the socket there."""
    cluster: Cluster | None = getattr(ws.app.state, "cluster", None)
    if cluster is not None:
        host = await cluster.place(session_id)
        if host is None:
            await _refuse(ws, ErrorCode.DRAINING, DRAINING_MESSAGE, 1013)
            return
        if host != cluster.node_id:
            await ws.accept()
            await cluster.relay(ws, host, session_id, status, member)
            return
    await ws.accept()
    await serve_here(ws.app, session_id, status, member)


def _live_room(rooms: RoomRegistry, session_id: str) -> bool:
    room = rooms.get(session_id)
    return room is not None and bool(room.members)


async def _too_many_connects(ws: WebSocket, identity: str) -> bool:
    """Socket opens per identity and session are limited (``ConnectLimiter``): a page
    retrying in a tight loop is told so and closed with 4429, and retries later."""
    limiter: ConnectLimiter = ws.app.state.connect_limiter
    if limiter.take(token_hash(identity)):
        return False
    await _refuse(
        ws,
        ErrorCode.RATE_LIMITED,
        "Too many connection attempts; wait a few seconds and try again.",
        4429,
    )
    return True


def _origin_ok(ws: WebSocket, settings: Settings) -> bool:
    """Browsers always send Origin; refuse cross-site sockets riding on our cookies."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    allowed = urlsplit(settings.public_url)
    seen = urlsplit(origin)
    host = ws.headers.get("host", "")
    return (seen.scheme, seen.netloc) == (allowed.scheme, allowed.netloc) or seen.netloc == host


@router.websocket("/ws/sessions/{session_id}")
async def therapist_socket(ws: WebSocket, session_id: str) -> None:
    settings: Settings = ws.app.state.settings
    database: Database = ws.app.state.database
    rooms: RoomRegistry = ws.app.state.rooms
    bind_session(session_id[:64], Role.THERAPIST)
    if not _origin_ok(ws, settings):
        await _refuse(ws, ErrorCode.FORBIDDEN, "Cross-site connection refused.", 4403)
        return
    if await _too_many_connects(ws, f"{session_id}:{ws.cookies.get(LOGIN_COOKIE, '')}"):
        return
    async with database.session() as db:
        user = await user_from_token(db, settings, ws.cookies.get(LOGIN_COOKIE))
        if user is None:
            await _refuse(ws, ErrorCode.UNAUTHORIZED, "Sign in again to open this session.", 4401)
            return
        if await enrolment_required(db, user):
            await _refuse(ws, ErrorCode.FORBIDDEN, ENROLMENT_MESSAGE, 4403)
            return
        session = await db.get(TherapySession, session_id[:64])
        if session is None or session.therapist_id != user.id or user.role != UserRole.THERAPIST:
            await _refuse(ws, ErrorCode.NOT_FOUND, "No such session.", 4404)
            return
        status = str(session.status)
        actor = f"user:{user.id}"
        user_id = user.id
        # Shown to the client beside the therapist's chat messages.
        therapist_name = user.display_name
    if status == SessionStatus.ENDED:
        await _refuse(ws, ErrorCode.SESSION_ENDED, "This session has ended.", 4410)
        return
    # While draining, only a call already running here may be rejoined.
    if ws.app.state.draining and not _live_room(rooms, session_id):
        await _refuse(ws, ErrorCode.DRAINING, DRAINING_MESSAGE, 1013)
        return
    await serve_socket(
        ws,
        session_id,
        status,
        Member(
            role=Role.THERAPIST,
            channel=ws,
            actor=actor,
            login_hash=token_hash(ws.cookies.get(LOGIN_COOKIE, "")),
            user_id=user_id,
            display_name=therapist_name,
        ),
    )


@router.websocket("/ws/join/{token}")
async def client_socket(ws: WebSocket, token: str) -> None:
    settings: Settings = ws.app.state.settings
    database: Database = ws.app.state.database
    rooms: RoomRegistry = ws.app.state.rooms
    if not _origin_ok(ws, settings):
        await _refuse(ws, ErrorCode.FORBIDDEN, "Cross-site connection refused.", 4403)
        return
    identity = ws.cookies.get(CLIENT_COOKIE)
    if not identity:
        await _refuse(
            ws,
            ErrorCode.COOKIES_REQUIRED,
            "Please allow cookies for this site and reload the page.",
            4400,
        )
        return
    if await _too_many_connects(ws, f"{token}:{identity}"):
        return
    async with database.session() as db:
        check = await check_invite(db, token)
        session = check.session
        identity_hash = token_hash(identity)
        kept = None
        participant: Participant | None
        if session is None:
            # An admitted client's page reconnects on the link it was opened with, which the
            # therapist may have replaced while keeping them in the session.
            kept = await kept_participant(db, token, identity_hash)
        if kept is not None:
            session, participant = kept
            check = InviteCheck(session, None)
        else:
            if session is None or check.problem == InviteProblem.ENDED:
                code = ErrorCode.INVITE_ENDED if session is not None else ErrorCode.UNKNOWN_INVITE
                await _refuse(ws, code, check.message, 4404)
                return
            participant = await db.scalar(
                select(Participant).where(
                    Participant.session_id == session.id,
                    Participant.identity_hash == identity_hash,
                )
            )
        if participant is not None and participant.denied:
            await _refuse(
                ws,
                ErrorCode.DENIED,
                "Your therapist could not admit you to this session.",
                4003,
            )
            return
        returning = participant is not None and participant.admitted
        if check.problem == InviteProblem.EXPIRED and not returning:
            await _refuse(ws, ErrorCode.EXPIRED, check.message, 4410)
            return
        # While draining, only someone already in a call running here may come back.
        if ws.app.state.draining and not (returning and _live_room(rooms, session.id)):
            await _refuse(ws, ErrorCode.DRAINING, DRAINING_MESSAGE, 1013)
            return
        if participant is None:
            participant = Participant(
                session_id=session.id, role=Role.CLIENT, identity_hash=identity_hash
            )
            db.add(participant)
        participant.last_seen_at = utcnow()
        await db.commit()
        session_id, status, participant_id = session.id, str(session.status), participant.id
        bind_session(session_id, Role.CLIENT)
        invite_hash = session.invite_token_hash
        invite_expires_at = session.invite_expires_at.timestamp()
    await serve_socket(
        ws,
        session_id,
        status,
        Member(
            role=Role.CLIENT,
            channel=ws,
            actor=f"client:{participant_id}",
            participant_id=participant_id,
            previously_admitted=returning,
            invite_hash=invite_hash,
            invite_expires_at=invite_expires_at,
            identity_hash=identity_hash,
            address=ws.client.host if ws.client else "unknown",
        ),
    )
