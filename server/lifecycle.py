"""Session lifecycle around the process: graceful drain on shutdown, and ending abandoned
sessions.

A deploy sends SIGTERM. Cutting a live therapy hour for it is not acceptable, so the first
signal only *drains*: the node reports not-ready (the load balancer stops sending new people),
new sessions and joins are refused with ``draining``, and the calls already running continue
until they end or the drain deadline passes. Only then is everything flushed and the process
exits; the sessions stay ``live`` so the pages reconnect to the next process and resume.

A crash (or a deploy that hit its deadline) can leave sessions ``live`` that nobody returns
to. The reaper ends those after an idle time, with an audit entry, so they stop looking live
and their summary is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import func, select

from signaling.rooms import RoomRegistry

from .alliance_hub import SignalsHub
from .audit import record
from .db import Database
from .hooks import DatabaseRoomHooks
from .models import AuditEvent, Participant, SessionStatus, TherapySession

log = logging.getLogger("rapport.lifecycle")

# WebSocket close code for "service restart": the page reconnects (to the next process).
CLOSE_RESTART = 1012
# How often a drain reports the calls still running.
DRAIN_REPORT_EVERY_S = 60.0


def live_calls(rooms: RoomRegistry) -> int:
    """Rooms with someone connected: what a drain waits for."""
    return sum(1 for room in rooms.rooms.values() if room.members)


class Drain:
    """One process's drain: started by the first SIGTERM, hurried by the second."""

    def __init__(
        self,
        rooms: RoomRegistry,
        signals: SignalsHub,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rooms = rooms
        self.signals = signals
        self.timeout_s = timeout_s
        self._clock = clock
        self.started_at: float | None = None
        self._hurry = asyncio.Event()
        # Run between the flush and the closing of the sockets (cluster mode: give the room
        # leases up, so the reconnecting pages are placed on a live node at once).
        self.before_close: Callable[[], Awaitable[None]] | None = None

    @property
    def active(self) -> bool:
        return self.started_at is not None

    @property
    def deadline(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.timeout_s

    def hurry(self) -> None:
        """Second signal: stop waiting for calls (what can be flushed quickly still is)."""
        self._hurry.set()

    async def run(self) -> None:
        """Wait for the live calls to end (or the deadline), then flush and close the rooms."""
        self.started_at = self._clock()
        calls = live_calls(self.rooms)
        log.warning(
            "drain started: %d live call(s); waiting up to %.0f s for them to end",
            calls,
            self.timeout_s,
            extra={"event": "drain_started", "live_calls": calls},
        )
        reported = calls
        next_report = self.started_at + DRAIN_REPORT_EVERY_S
        while calls and not self._hurry.is_set():
            now = self._clock()
            if now >= self.started_at + self.timeout_s:
                log.warning("drain deadline reached with %d live call(s); closing them", calls)
                break
            if calls != reported or now >= next_report:
                log.warning("draining: %d live call(s) left", calls)
                reported, next_report = calls, now + DRAIN_REPORT_EVERY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), timeout=0.25)
            calls = live_calls(self.rooms)
        if self._hurry.is_set() and calls:
            log.warning("second signal: closing %d live call(s) now", calls)
        await self.close_rooms()
        log.warning("drain finished: exiting", extra={"event": "drain_finished"})

    async def close_rooms(self) -> None:
        """Flush signals, then close every room with 1012 (the sessions stay resumable)."""
        try:
            await asyncio.wait_for(self.signals.flush(), timeout=5.0)
        except Exception:
            log.exception("flushing signals before exit failed")
        if self.before_close is not None:
            try:
                await self.before_close()
            except Exception:
                log.exception("handing the rooms over before exit failed")
        for session_id, room in list(self.rooms.rooms.items()):
            if room.members:
                log.warning(
                    "session drained: its call is closed for the restart (resumable)",
                    extra={"event": "session_drained", "session_id": session_id},
                )
        await self.rooms.close_all(code=CLOSE_RESTART)


class Reaper:
    """Ends ``live`` sessions that nobody has been in for ``idle_s`` seconds.

    Idle is counted from the session's last sign of life: its start, a participant's last
    connection, its last audit entry (every join, leave and disconnect writes one), the last
    time this process saw someone in its room, and never from before this process started
    (a crash leaves no "disconnected" entry, so people get the whole idle time to come back).
    """

    def __init__(
        self,
        database: Database,
        rooms: RoomRegistry,
        signals: SignalsHub,
        hooks: DatabaseRoomHooks,
        idle_s: float,
    ) -> None:
        self.database = database
        self.rooms = rooms
        self.signals = signals
        self.hooks = hooks
        self.idle_s = idle_s
        self.started_at = datetime.now(UTC)
        self._occupied_at: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def interval_s(self) -> float:
        return min(60.0, max(0.1, self.idle_s / 4))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reap()
            except Exception:
                log.exception("ending idle sessions failed")

    def _occupied(self, session_id: str) -> bool:
        room = self.rooms.get(session_id)
        return room is not None and bool(room.members)

    async def reap(self) -> list[str]:
        """One pass; returns the ids of the sessions it ended."""
        now = datetime.now(UTC)
        for session_id, room in self.rooms.rooms.items():
            if room.members:
                self._occupied_at[session_id] = now
        last_audit = (
            select(AuditEvent.session_id, func.max(AuditEvent.at).label("at"))
            .group_by(AuditEvent.session_id)
            .subquery()
        )
        last_seen = (
            select(Participant.session_id, func.max(Participant.last_seen_at).label("at"))
            .group_by(Participant.session_id)
            .subquery()
        )
        query = (
            select(TherapySession.id, TherapySession.started_at, last_audit.c.at, last_seen.c.at)
            .outerjoin(last_audit, last_audit.c.session_id == TherapySession.id)
            .outerjoin(last_seen, last_seen.c.session_id == TherapySession.id)
            .where(TherapySession.status == SessionStatus.LIVE)
        )
        async with self.database.session() as db:
            rows = (await db.execute(query)).all()
        ended = []
        for session_id, *times in rows:
            if self._occupied(session_id):
                continue
            signs: list[datetime | None] = [
                *times,
                self.started_at,
                self._occupied_at.get(session_id),
            ]
            last = max(t for t in signs if t is not None)
            idle = (now - last).total_seconds()
            if idle < self.idle_s:
                continue
            await self.signals.prepare(session_id)
            if self._occupied(session_id):
                continue  # someone came back while the signals were loading
            await self.hooks.session_ended(session_id)
            async with self.database.session() as db:
                record(db, "session_auto_ended", "system", session_id, f"idle {idle / 60:.0f} min")
                await db.commit()
            self._occupied_at.pop(session_id, None)
            log.info(
                "ended session %s: nobody in it for %.0f s",
                session_id,
                idle,
                extra={"session_id": session_id},
            )
            ended.append(session_id)
        return ended
