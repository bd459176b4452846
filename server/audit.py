"""Append-only audit log writes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from .db import Database
from .models import AuditEvent


def record(
    db: AsyncSession, action: str, actor: str, session_id: str | None = None, detail: str = ""
) -> None:
    """Stage an audit row in the caller's transaction."""
    db.add(AuditEvent(action=action, actor=actor, session_id=session_id, detail=detail[:500]))


async def record_now(
    database: Database, action: str, actor: str, session_id: str | None = None, detail: str = ""
) -> None:
    async with database.session() as db:
        record(db, action, actor, session_id, detail)
        await db.commit()
