"""Admin views: audit log. Never clinical content."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from media import ROLES, Label, LoopLagSampler, MediaWorkerPool
from signaling.messages import QualityLevel
from signaling.rooms import RoomRegistry

from .. import totp
from ..audit import record
from ..auth import Admin, DbSession
from ..db import Database
from ..models import AuditEvent, TherapySession, User
from ..models import Incident as IncidentRow
from ..ops import CpuMeter
from ..quality_hub import Incident, QualityHub, QualityPoint

router = APIRouter(prefix="/api/admin", tags=["admin"])


class AuditOut(BaseModel):
    at: datetime
    session_id: str | None
    actor: str
    # Who, in words: a staff member's name; never a client's label or name ("Client").
    actor_name: str
    action: str
    detail: str


class AuditList(BaseModel):
    events: list[AuditOut]


class LiveCall(BaseModel):
    """A live call as the admin sees it: quality and load, never who the client is."""

    session_id: str
    therapist: str
    status: str
    started_at: datetime
    duration_s: int
    participants: int  # in the call now; a held seat counts under ``reconnecting``
    waiting: int
    # Seats held for someone whose socket dropped (RAPPORT_RECONNECT_GRACE_S): not present.
    reconnecting: int = 0
    worst_quality: QualityLevel | None
    relay_mode: dict[str, str] | str  # per direction, e.g. {"therapist->client": "forward"}
    media_worker: int | None  # which media worker process carries the call (None: in-process)


class LiveCalls(BaseModel):
    calls: list[LiveCall]


class ParticipantQualityOut(BaseModel):
    score: float | None
    label: str | None
    history: list[QualityPoint]


class CallDetail(BaseModel):
    session_id: str
    participants: dict[str, ParticipantQualityOut]


class IncidentList(BaseModel):
    incidents: list[Incident]


class WorkerStatus(BaseModel):
    """One media worker process; the load figures are missing when it did not answer."""

    index: int
    pid: int | None
    alive: bool
    calls: int | None = None
    peers: int | None = None
    cpu_seconds: float | None = None
    cpu_fraction: float | None = None
    loop_lag_p99_ms: float | None = None
    audio_dropped: int | None = None
    tasks: int | None = None


class Health(BaseModel):
    cpu_fraction: float
    event_loop_lag_p99_ms: float
    event_loop_lag_max_ms: float
    rooms: int
    peer_connections: int
    database: bool
    media_workers: list[WorkerStatus]
    media_worker_restarts: int


class SecuritySettings(BaseModel):
    """Sign-in policy for all staff, stored in the database and changed here at run time."""

    require_two_factor: bool


@router.get("/settings")
async def security_settings(_admin: Admin, db: DbSession) -> SecuritySettings:
    return SecuritySettings(require_two_factor=await totp.two_factor_required(db))


@router.put("/settings")
async def update_security_settings(
    body: SecuritySettings, admin: Admin, db: DbSession
) -> SecuritySettings:
    before = await totp.two_factor_required(db)
    if body.require_two_factor and not totp.is_enrolled(admin):
        # Otherwise the admin turning it on is the first person locked out of this page.
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "Set up two-factor sign-in on your own account before requiring it of everyone.",
        )
    if body.require_two_factor != before:
        await totp.set_setting(db, totp.REQUIRE_TWO_FACTOR, body.require_two_factor)
        record(
            db,
            "setting_changed",
            f"user:{admin.id}",
            detail=f"require_two_factor {'on' if body.require_two_factor else 'off'}",
        )
        await db.commit()
    return SecuritySettings(require_two_factor=body.require_two_factor)


@router.get("/audit")
async def audit_log(
    _admin: Admin,
    db: DbSession,
    session_id: str | None = Query(default=None, max_length=64),
    action: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=200, ge=1, le=1000),
) -> AuditList:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if session_id:
        query = query.where(AuditEvent.session_id == session_id)
    if action:
        query = query.where(AuditEvent.action == action)
    events = list(await db.scalars(query))
    names = await _actor_names(db, {e.actor for e in events})
    return AuditList(
        events=[
            AuditOut(
                at=e.at,
                session_id=e.session_id,
                actor=e.actor,
                actor_name=names.get(e.actor, e.actor),
                action=e.action,
                detail=e.detail,
            )
            for e in events
        ]
    )


async def _actor_names(db: DbSession, actors: set[str]) -> dict[str, str]:
    """Audit actors ("user:3", "client:7", "system") as the admin reads them: staff by their
    name (their email when they have none), clients only as "Client" (the therapist's label
    for a client is clinical context an admin has no need of), the server as "System"."""
    ids = {
        int(actor.split(":", 1)[1])
        for actor in actors
        if actor.startswith("user:") and actor.split(":", 1)[1].isdigit()
    }
    users = {}
    if ids:
        for user in await db.scalars(select(User).where(User.id.in_(ids))):
            users[f"user:{user.id}"] = user.display_name.strip() or user.email
    names: dict[str, str] = {}
    for actor in actors:
        if actor in users:
            names[actor] = users[actor]
        elif actor.startswith("user:"):
            names[actor] = "A removed account"
        elif actor.startswith("client"):
            names[actor] = "Client"
        elif actor == "system":
            names[actor] = "System"
    return names


def _quality(request: Request) -> QualityHub:
    hub: QualityHub = request.app.state.quality
    return hub


def call_quality_here(hub: QualityHub, session_id: str) -> CallDetail | None:
    """A call's quality on the node hosting it (the cluster asks the host for it)."""
    call = hub.calls.get(session_id[:64])
    if call is None:
        return None
    return CallDetail(
        session_id=call.session_id,
        participants={
            role: ParticipantQualityOut(score=pq.score, label=pq.label, history=list(pq.history))
            for role, pq in call.roles.items()
        },
    )


async def live_calls_here(rooms: RoomRegistry, hub: QualityHub, db: AsyncSession) -> list[LiveCall]:
    """The calls hosted by this node (the cluster asks every node for its own)."""
    calls = []
    for session_id, room in list(rooms.rooms.items()):
        session = await db.get(TherapySession, session_id)
        if session is None:
            continue
        started = session.started_at or session.created_at
        seated = [r for r in ROLES if room.member(r) is not None]
        held = [r for r in seated if room.reconnecting(r)]
        present = [r for r in seated if r not in held]
        calls.append(
            LiveCall(
                session_id=session_id,
                therapist=session.therapist.display_name or f"user {session.therapist_id}",
                status=str(session.status),
                started_at=started,
                duration_s=round((datetime.now(UTC) - started).total_seconds()),
                participants=len(present),
                waiting=len(room.waiting),
                reconnecting=len(held),
                worst_quality=hub.worst(session_id),
                relay_mode=getattr(room.call, "relay_mode", "transcode"),
                media_worker=getattr(room.call, "worker_index", None),
            )
        )
    return calls


@router.get("/calls")
async def live_calls(_admin: Admin, request: Request, db: DbSession) -> LiveCalls:
    """Live calls with their worst current quality. No client labels, no clinical data.

    In cluster mode every node's calls, each asked of the node hosting it."""
    calls = await live_calls_here(request.app.state.rooms, _quality(request), db)
    cluster = request.app.state.cluster
    if cluster is not None:
        calls += await cluster.remote_calls()
    return LiveCalls(calls=calls)


@router.get("/calls/{session_id}")
async def call_detail(session_id: str, _admin: Admin, request: Request) -> CallDetail:
    detail = call_quality_here(_quality(request), session_id)
    cluster = request.app.state.cluster
    if detail is None and cluster is not None:
        detail = await cluster.remote_call_quality(session_id[:64])
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No live call with that id.")
    return detail


@router.get("/incidents")
async def incidents(
    _admin: Admin, db: DbSession, limit: int = Query(default=100, ge=1, le=500)
) -> IncidentList:
    """Newest first, from the database: the list outlives a restart of the server."""
    rows = await db.scalars(
        select(IncidentRow).order_by(IncidentRow.at.desc(), IncidentRow.id.desc()).limit(limit)
    )
    listed = []
    for row in rows:
        at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)
        listed.append(
            Incident(
                at=at.timestamp(),
                session_id=row.session_id,
                role=row.role,
                from_label=cast(Label | None, row.from_label),
                to=cast(Label, row.to_label),
                score=row.score,
                kind=row.kind,
                detail=row.detail,
            )
        )
    return IncidentList(incidents=listed)


@router.get("/health")
async def health(_admin: Admin, request: Request) -> Health:
    lag: LoopLagSampler = request.app.state.loop_lag
    cpu: CpuMeter = request.app.state.cpu
    rooms: RoomRegistry = request.app.state.rooms
    database: Database = request.app.state.database
    pool: MediaWorkerPool | None = request.app.state.media_pool
    workers = await pool.health() if pool is not None else []
    return Health(
        cpu_fraction=cpu.read(),
        event_loop_lag_p99_ms=lag.p99_ms(),
        event_loop_lag_max_ms=lag.max_ms(),
        rooms=len(rooms.rooms),
        peer_connections=sum(r.call.peer_count for r in rooms.rooms.values()),
        database=await database.ping(),
        media_workers=[WorkerStatus.model_validate(w) for w in workers],
        media_worker_restarts=pool.restarts if pool is not None else 0,
    )
