"""Live alliance signals per session: creation, delivery to the therapist, persistence.

A session's ``LiveSignals`` outlives its room (a room is dropped when everyone disconnects)
so talk time is never lost or counted twice across reconnects. Snapshots and the 1-second
timeline are written to the session row at least every 5 seconds while they change, so a crash
loses at most that much; an idle session is not written at all. When a session's room closes
(everyone gone) its signals are saved and unloaded, so an abandoned session costs no CPU; the
next connection resumes them from the stored input.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from media import (
    LiveSignals,
    SignalConfig,
    SignalsUpdate,
    SignalThread,
    SnapshotPayload,
    VadTuning,
    snapshot_json,
    voice_tuning,
)
from signaling.messages import Signals, Speaking
from signaling.rooms import RoomRegistry

from .db import Database
from .models import SessionStatus, TherapySession

log = logging.getLogger("rapport.signals")
PERSIST_EVERY_S = 5.0

# The timeline is stored compactly, one small int per second.
_BITS = (("therapist", 1), ("client", 2), ("therapist_absent", 4), ("client_absent", 8))


def pack_timeline(seconds: list[dict[str, Any]]) -> list[int]:
    return [sum(bit for key, bit in _BITS if s.get(key)) for s in seconds]


def unpack_timeline(codes: list[int]) -> list[dict[str, Any]]:
    return [
        {"second": i, **{key: bool(code & bit) for key, bit in _BITS}}
        for i, code in enumerate(codes)
    ]


class SignalsHub:
    def __init__(
        self,
        database: Database,
        config: SignalConfig | None = None,
        *,
        silero_assist: bool,
        tick_s: float = 0.1,
    ) -> None:
        self.database = database
        # No default for ``silero_assist``: the setting's (on) and a hub built without it
        # disagreed, so a hub made in a test ran a different voice model than the server.
        # Load Silero's model now, so a server that cannot run it says so at start-up, not
        # when the first session opens.
        self.vad_tuning: VadTuning = voice_tuning(silero_assist)
        self.config = config or SignalConfig()
        self.sessions: dict[str, LiveSignals] = {}
        self.rooms: RoomRegistry | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker = SignalThread(self._from_worker, tick_s=tick_s)
        self._persister: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        # Per session: what the stored row holds, as (input runs, last run's length, ended).
        # The input determines the whole engine state, so an equal key means nothing changed.
        self._saved: dict[str, tuple[int, int, bool]] = {}
        #: Session rows written (read by tests: an idle session must not be rewritten).
        self.writes = 0
        # Per session: the hub's config with the therapist's own thresholds applied.
        self._configs: dict[str, SignalConfig] = {}

    @property
    def thread(self) -> SignalThread:
        """The one thread doing every session's signal work (read by the benchmark)."""
        return self._worker

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._persister = asyncio.ensure_future(self._persist_loop())

    def for_session(self, session_id: str) -> LiveSignals:
        signals = self.sessions.get(session_id)
        if signals is None or signals.ended:
            signals = LiveSignals(
                session_id, self._configs.get(session_id, self.config), vad_tuning=self.vad_tuning
            )
            self.sessions[session_id] = signals
            self._worker.add(signals)
        return signals

    def config_for(self, preferences: dict[str, Any] | None) -> SignalConfig:
        """The engine thresholds for a therapist's sessions.

        ``long_silence_seconds`` is the therapist's own idea of a long silence (the panel's
        "long silences" count and its cue), so it has to reach the engine that counts them.
        """
        value = (preferences or {}).get("long_silence_seconds")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return dataclasses.replace(self.config, long_silence_s=float(value))
        return self.config

    async def prepare(self, session_id: str) -> None:
        """Before a room opens: pick the session's thresholds and resume a live session's
        engine from its stored input.

        The thresholds are read once per engine: a silence already counted under one threshold
        is not recounted mid-session, so a changed preference applies from the next session.
        After a restart the in-memory engine is gone; replaying the recorded input (with the
        therapist's current thresholds) rebuilds it, so at most the last persistence interval
        is lost.
        """
        if session_id in self.sessions:
            return
        async with self.database.session() as db:
            row = await db.get(TherapySession, session_id)
            if row is None:
                return
            config = self.config_for(row.therapist.preferences)
            runs = row.signal_input if row.status == SessionStatus.LIVE else None
        if session_id in self.sessions:
            return
        self._configs[session_id] = config
        if not runs:
            return
        signals = await asyncio.to_thread(LiveSignals.restore, session_id, runs, config)
        if session_id not in self.sessions:
            self.sessions[session_id] = signals
            self._saved[session_id] = _key(runs, ended=False)
            self._worker.add(signals)
            log.info(
                "resumed signals for session %s from %d stored ticks",
                session_id,
                sum(count for _, count in runs),
                extra={"session_id": session_id},
            )

    def latest(self, session_id: str) -> dict[str, Any] | None:
        signals = self.sessions.get(session_id)
        if signals is None or signals.latest is None:
            return None
        return snapshot_json(signals.snapshot())

    def timeline(self, session_id: str) -> list[dict[str, Any]] | None:
        signals = self.sessions.get(session_id)
        return None if signals is None else signals.timeline()

    # Worker thread → event loop.
    def _from_worker(self, update: SignalsUpdate) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, update)

    def _deliver(self, update: SignalsUpdate) -> None:
        room = self.rooms.get(update.session_id) if self.rooms else None
        if room is None:
            return
        messages: list[Signals | Speaking] = []
        if update.speaking_changed:
            messages.append(Speaking(speaking=list(update.speaking)))
        if update.snapshot is not None:
            messages.append(Signals(snapshot=SnapshotPayload.of(update.snapshot)))
        for message in messages:
            task = asyncio.ensure_future(room.send_signals(message))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def finish(self, session_id: str) -> None:
        self._configs.pop(session_id, None)
        signals = self.sessions.get(session_id)
        if signals is None:
            return
        signals.finish()
        self._worker.remove(session_id)
        await self._persist(signals, force=True)
        del self.sessions[session_id]
        self._saved.pop(session_id, None)

    async def unload(self, session_id: str) -> None:
        """The session's room closed (nobody connected): save its signals and drop them.

        Nothing is lost: the stored input rebuilds the engine exactly when someone returns
        (``prepare``). If someone came back while the row was written, the signals stay.
        """
        signals = self.sessions.get(session_id)
        if signals is None or signals.ended or self._has_room(session_id):
            return
        await self._persist(signals)
        if self._has_room(session_id) or self.sessions.get(session_id) is not signals:
            return
        self._worker.remove(session_id)
        del self.sessions[session_id]
        self._saved.pop(session_id, None)
        self._configs.pop(session_id, None)
        log.info(
            "unloaded signals of session %s (nobody connected)",
            session_id,
            extra={"session_id": session_id},
        )

    def _has_room(self, session_id: str) -> bool:
        return self.rooms is not None and self.rooms.get(session_id) is not None

    async def _persist(self, signals: LiveSignals, *, force: bool = False) -> bool:
        """Write the session's signals if they changed since the last write; True if written."""
        runs = signals.input_runs()
        key = _key(runs, signals.ended)
        if not force and (signals.latest is None or self._saved.get(signals.session_id) == key):
            return False
        snapshot = snapshot_json(signals.snapshot())
        timeline = pack_timeline(signals.timeline())
        async with self.database.session() as db:
            row = await db.get(TherapySession, signals.session_id)
            if row is not None:
                row.metrics = snapshot
                row.timeline = timeline
                row.signal_input = runs
                await db.commit()
                self.writes += 1
        self._saved[signals.session_id] = key
        return True

    async def flush(self) -> None:
        """Write every session whose signals changed (before the process exits)."""
        for signals in list(self.sessions.values()):
            if signals.ended:
                continue
            try:
                await self._persist(signals)
            except Exception:
                log.exception("persisting signals failed")

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(PERSIST_EVERY_S / 2)
            await self.flush()

    async def close(self) -> None:
        if self._persister is not None:
            self._persister.cancel()
            with contextlib.suppress(BaseException):
                await self._persister
        await self.flush()
        self._worker.stop()


def _key(runs: list[list[int]], ended: bool) -> tuple[int, int, bool]:
    # Input only ever grows by extending the last run or appending one, so its length and the
    # last run's count identify it.
    return (len(runs), runs[-1][1] if runs else 0, ended)
