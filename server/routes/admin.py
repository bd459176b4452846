"""Admin views: audit log. Never clinical content."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from ..auth import Admin, DbSession
from ..models import AuditEvent

router = APIRouter(prefix="/api/admin", tags=["admin"])


class AuditOut(BaseModel):
    at: datetime
    session_id: str | None
    actor: str
    action: str
    detail: str


class AuditList(BaseModel):
    events: list[AuditOut]


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
    rows = await db.scalars(query)
    return AuditList(
        events=[
            AuditOut(
                at=e.at, session_id=e.session_id, actor=e.actor, action=e.action, detail=e.detail
            )
            for e in rows
        ]
    )
