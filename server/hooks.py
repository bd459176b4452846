"""The database side of the signalling rooms: audit rows and session/participant state."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from .alliance_hub import SignalsHub
from .audit import record
from .db import Database
from .models import Participant, SessionStatus, TherapySession

log = logging.getLogger("rapport.server")


class DatabaseRoomHooks:
    def __init__(self, database: Database, signals: SignalsHub | None = None) -> None:
        self.database = database
        self.signals = signals

    async def audit(self, session_id: str, action: str, actor: str, detail: str = "") -> None:
        async with self.database.session() as db:
            record(db, action, actor, session_id, detail)
            await db.commit()

    async def participant_decided(self, participant_id: int, admitted: bool) -> None:
        async with self.database.session() as db:
            participant = await db.get(Participant, participant_id)
            if participant is not None:
                participant.admitted = admitted
                participant.denied = not admitted
                await db.commit()

    async def session_live(self, session_id: str) -> None:
        async with self.database.session() as db:
            session = await db.get(TherapySession, session_id)
            if session is not None and session.status == SessionStatus.SCHEDULED:
                session.status = SessionStatus.LIVE
                session.started_at = datetime.now(UTC)
                await db.commit()

    async def session_ended(self, session_id: str) -> None:
        """The status row first: a failed write raises and the room stays live (it can be
        ended again); the signals are finished only once the session is ended for good."""
        async with self.database.session() as db:
            session = await db.get(TherapySession, session_id)
            if session is not None and session.status != SessionStatus.ENDED:
                session.status = SessionStatus.ENDED
                session.ended_at = datetime.now(UTC)
                await db.commit()
        if self.signals is not None:
            try:
                await self.signals.finish(session_id)
            except Exception:
                log.exception(
                    "session %s ended, but saving its signals failed",
                    session_id,
                    extra={"session_id": session_id},
                )

    async def load_agenda(self, session_id: str) -> dict[str, Any] | None:
        async with self.database.session() as db:
            session = await db.get(TherapySession, session_id)
            return None if session is None else session.agenda

    async def save_agenda(self, session_id: str, agenda: dict[str, Any]) -> None:
        async with self.database.session() as db:
            session = await db.get(TherapySession, session_id)
            if session is not None:
                session.agenda = agenda
                await db.commit()
