"""Erasing a client's data at the therapist's request. Therapist only, own sessions only."""

from __future__ import annotations

from collections import deque

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from ..auth import DbSession, Therapist
from ..models import SessionStatus
from ..retention import client_sessions, erase_client

router = APIRouter(prefix="/api", tags=["clients"])


class DeleteClient(BaseModel):
    label: str = Field(min_length=1, max_length=120)


class Deleted(BaseModel):
    sessions: int
    participants: int
    checkins: int


@router.post("/clients/delete")
async def delete_client(
    body: DeleteClient, user: Therapist, db: DbSession, request: Request
) -> Deleted:
    """Every session of this therapist with this label, and all that derives from them.

    A session somebody is in (a live call, or a client in the waiting room) is refused rather
    than cut off: the therapist ends it first, then erases.
    """
    sessions = await client_sessions(db, user.id, body.label)
    if not sessions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No sessions with that client label.")
    rooms = request.app.state.rooms
    busy = any(s.status == SessionStatus.LIVE or rooms.get(s.id) is not None for s in sessions)
    cluster = request.app.state.cluster
    if not busy and cluster is not None:  # a waiting room may be open on another node
        for s in sessions:
            if s.status != SessionStatus.ENDED and await cluster.remote_host(s.id) is not None:
                busy = True
                break
    if busy:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "One of this client's sessions is in progress: end it, then delete the data.",
        )
    ids = {s.id for s in sessions}
    counts = await erase_client(db, user.id, body.label)
    quality = getattr(request.app.state, "quality", None)
    if quality is not None:  # in-memory incidents name the session (no clinical content)
        quality.incidents = deque(
            (i for i in quality.incidents if i.session_id not in ids),
            maxlen=quality.incidents.maxlen,
        )
    return Deleted(
        sessions=counts.sessions, participants=counts.participants, checkins=counts.checkins
    )
