"""Live call quality: samples every peer every 2 s, scores it, tells participants and admins.

Per participant two directions are scored: ``up`` (their media arriving at the server,
measured by the server's receiver) and ``down`` (the server's media arriving at them, from
their receiver reports and their own browser's stats). A participant's headline quality is
the worse of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from media import (
    ROLES,
    DirectionSample,
    KindSample,
    Label,
    MediaState,
    PeerStatsSampler,
    Role,
    SmoothedScore,
    label_for,
    other_role,
    rtp_lost,
)
from signaling import messages as m
from signaling.rooms import RoomRegistry

from .audit import record_now
from .db import Database
from .models import Incident as IncidentRow
from .ops import Metrics

log = logging.getLogger("rapport.quality")
SAMPLE_EVERY_S = 2.0
WATCH_EVERY_S = 0.25  # how often media states are checked between samples (no worker request)
HISTORY = 1800  # one hour at 2 s


class QualityPoint(BaseModel):
    """One 2-second sample of a participant's connection, as the admin's charts plot it."""

    t: float
    rtt_ms: float | None
    loss_up: float
    loss_down: float
    jitter_ms: float | None
    bitrate_in: float | None
    bitrate_out: float | None
    fps: float | None
    score_up: float
    score_down: float
    candidate_type: str | None


class Incident(BaseModel):
    """A move into or out of poor/lost quality, or a media restart the server ordered (a
    worker died: ``kind`` "worker_restarted", role "both"); kept in memory for the admin."""

    at: float
    session_id: str
    role: str
    from_label: Label | None = Field(serialization_alias="from")  # "from" is a keyword
    to: Label
    score: float | None
    kind: str = "quality"
    detail: str = ""


@dataclass
class ParticipantQuality:
    sampler: PeerStatsSampler = field(default_factory=PeerStatsSampler)
    up: SmoothedScore = field(default_factory=SmoothedScore)
    down: SmoothedScore = field(default_factory=SmoothedScore)
    client: m.ClientStats | None = None
    client_at: float = 0.0
    freezes_seen: int | None = None
    label: Label | None = None
    score: float | None = None
    history: deque[QualityPoint] = field(default_factory=lambda: deque(maxlen=HISTORY))


@dataclass
class CallQuality:
    session_id: str
    started: float = field(default_factory=time.time)
    roles: dict[str, ParticipantQuality] = field(default_factory=dict)
    # Media state per present role at the last sample; a change samples the room at once.
    states: dict[str, MediaState] = field(default_factory=dict)
    labels: list[Label] = field(default_factory=list)  # given at the last sample


class QualityHub:
    def __init__(self, rooms: RoomRegistry, metrics: Metrics, database: Database) -> None:
        self.rooms = rooms
        self.metrics = metrics
        self.database = database
        self.calls: dict[str, CallQuality] = {}
        self.incidents: deque[Incident] = deque(maxlen=500)
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[None]] = set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    # RoomObserver
    def on_message(self, kind: str) -> None:
        self.metrics.messages.labels(kind).inc()

    def on_error(self, code: str) -> None:
        self.metrics.errors.labels(code).inc()

    def on_client_stats(self, session_id: str, role: str, stats: m.ClientStats) -> None:
        call = self.calls.setdefault(session_id, CallQuality(session_id))
        pq = call.roles.setdefault(role, ParticipantQuality())
        pq.client = stats
        pq.client_at = time.monotonic()

    def on_media_restarted(self, session_id: str, reason: str, detail: str) -> None:
        incident = Incident(
            at=time.time(),
            session_id=session_id,
            role="both",
            from_label=None,
            to="lost",
            score=None,
            kind=reason,
            detail=detail,
        )
        self.incidents.appendleft(incident)
        self.metrics.media_restarts.labels(reason).inc()
        # Called from synchronous code: the row is written by a task of its own.
        task = asyncio.ensure_future(self.store_incident(incident))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def store_incident(self, incident: Incident) -> None:
        """Keep the incident in the database, so the admin's list survives a restart. A
        failed write is logged and the in-memory list still has it."""
        try:
            async with self.database.session() as db:
                db.add(
                    IncidentRow(
                        at=datetime.fromtimestamp(incident.at, UTC),
                        session_id=incident.session_id[:32],
                        role=incident.role[:20],
                        from_label=incident.from_label,
                        to_label=incident.to,
                        score=incident.score,
                        kind=incident.kind[:32],
                        detail=incident.detail,
                    )
                )
                await db.commit()
        except Exception:
            log.exception("could not store a quality incident for session %s", incident.session_id)

    async def _run(self) -> None:
        """A full sample every 2 s, and a room sampled at once when a participant's media
        state changes between samples: a link that died shows "lost" within the stall
        detector's 1.5–2 s, not up to a whole sampling interval later."""
        next_full = time.monotonic() + SAMPLE_EVERY_S
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            try:
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + SAMPLE_EVERY_S
                    await self.sample_all()
                else:
                    await self.sample_changed()
            except Exception:
                log.exception("quality sampling failed")

    def _media_states(self, room: Any) -> dict[str, MediaState]:
        return {role: room.media_state(role) for role in ROLES if room.member(role)}

    async def sample_changed(self) -> None:
        """Sample only the rooms whose media states moved since their last sample."""
        changed = False
        for session_id, room in list(self.rooms.rooms.items()):
            call = self.calls.get(session_id)
            if call is not None and call.states != self._media_states(room):
                await self._sample_room(session_id, room, call, time.monotonic())
                changed = True
        if changed:
            self._set_gauges()

    async def sample_all(self) -> None:
        now = time.monotonic()
        live = set()
        for session_id, room in list(self.rooms.rooms.items()):
            call = self.calls.setdefault(session_id, CallQuality(session_id, room.created_at))
            live.add(session_id)
            await self._sample_room(session_id, room, call, now)
        for session_id in list(self.calls):
            if session_id not in live:
                del self.calls[session_id]
        self._set_gauges()

    def _set_gauges(self) -> None:
        """/metrics from each call's last sample, full or not, so they agree with what the
        participants were last told."""
        labels: dict[str, int] = dict.fromkeys(("excellent", "good", "poor", "lost", "no_media"), 0)
        media_states: dict[str, int] = dict.fromkeys(
            ("none", "connecting", "connected", "lost", "no_media"), 0
        )
        for call in self.calls.values():
            for label in call.labels:
                labels[label] += 1
            for state in call.states.values():
                media_states[state] += 1
        for name, count in labels.items():
            self.metrics.quality_labels.labels(name).set(count)
        for name, count in media_states.items():
            self.metrics.media_states.labels(name).set(count)
        rooms = list(self.rooms.rooms.values())
        self.metrics.peer_connections.set(sum(r.call.peer_count for r in rooms))
        self.metrics.active_sessions.set(len(rooms))
        for role in ROLES:
            seated = [r for r in rooms if r.member(role) is not None]
            held = sum(1 for r in seated if r.reconnecting(role))
            self.metrics.participants.labels(role).set(len(seated) - held)
            self.metrics.participants_reconnecting.labels(role).set(held)

    async def _sample_room(
        self, session_id: str, room: Any, call: CallQuality, now: float
    ) -> list[Label]:
        """Score each participant of one room and tell them; return the labels given."""
        labels: list[Label] = []
        states = self._media_states(room)
        call.states = states
        for seat, state in states.items():
            if state == "no_media":
                # Never "excellent" without media: a peer that never connected has no
                # loss to score, which used to read as a perfect call.
                pq = call.roles.setdefault(seat, ParticipantQuality())
                await self._transition(session_id, seat, pq, "no_media")
                pq.score, pq.label = 0.0, "no_media"
                labels.append("no_media")
        reports = await room.call.peer_reports()
        ages = {peer.role: peer.rtp_age_s for peer in reports}
        for peer in reports:
            role = peer.role
            if states.get(Role(role)) not in ("connected", "lost"):
                continue  # not connected yet (or no_media, above): nothing to score
            pq = call.roles.setdefault(role, ParticipantQuality())
            up_stale, down_stale = rtp_lost(
                peer.rtp_age_s, ages.get(other_role(role), {}).get("up")
            )
            state_lost = peer.media_state == "lost" or states.get(Role(role)) == "lost"
            up, down = pq.sampler.sample(
                peer.rtc,
                now,
                lost=state_lost or up_stale,
                down_lost=state_lost or up_stale or down_stale,
            )
            down = self._with_client(pq, down, now)
            up_score, _ = pq.up.update(up)
            down_score, _ = pq.down.update(down)
            score = min(up_score, down_score)
            label = label_for(score, up.lost or down.lost)
            await self._transition(session_id, role, pq, label)
            pq.score, pq.label = score, label
            labels.append(label)
            self._observe(up, down)
            pq.history.append(self._point(up, down, up_score, down_score, pq.client))
        call.labels = labels
        await self._tell_participants(room, call)
        return labels

    @staticmethod
    def _with_client(pq: ParticipantQuality, down: DirectionSample, now: float) -> DirectionSample:
        """Fold the browser's own view (freezes, fps, loss it saw) into the down direction."""
        stats = pq.client
        if stats is None or now - pq.client_at > 3 * SAMPLE_EVERY_S:
            return down
        freezes = 0
        if stats.freezes is not None:
            if pq.freezes_seen is not None:
                freezes = max(0, stats.freezes - pq.freezes_seen)
            pq.freezes_seen = stats.freezes
        kinds = dict(down.kinds)
        for kind, loss in (("audio", stats.audio_loss_in), ("video", stats.video_loss_in)):
            base = kinds.get(kind, KindSample())
            kinds[kind] = KindSample(
                loss=max(base.loss, loss or 0.0),
                jitter_ms=base.jitter_ms,
                bitrate_bps=stats.inbound_bitrate if kind == "video" else base.bitrate_bps,
                freezes=freezes if kind == "video" else 0,
                packets=base.packets,
            )
        rtt = down.rtt_ms if stats.rtt_ms is None else max(down.rtt_ms or 0.0, stats.rtt_ms)
        return DirectionSample(
            rtt_ms=rtt,
            kinds=kinds,
            bitrate_bps=down.bitrate_bps,
            packets_per_s=down.packets_per_s,
            fps=stats.fps_in,
            lost=down.lost,
        )

    def _observe(self, up: DirectionSample, down: DirectionSample) -> None:
        if up.rtt_ms is not None:
            self.metrics.rtt.observe(up.rtt_ms / 1000)
        for direction, sample in (("up", up), ("down", down)):
            for kind, ks in sample.kinds.items():
                self.metrics.loss.labels(direction).observe(ks.loss)
                if kind == "audio" and ks.jitter_ms is not None:
                    self.metrics.jitter.labels(direction).observe(ks.jitter_ms / 1000)

    @staticmethod
    def _point(
        up: DirectionSample,
        down: DirectionSample,
        up_score: float,
        down_score: float,
        client: m.ClientStats | None,
    ) -> QualityPoint:
        def loss(sample: DirectionSample) -> float:
            return round(max((k.loss for k in sample.kinds.values()), default=0.0), 4)

        audio = up.kinds.get("audio")
        return QualityPoint(
            t=time.time(),
            rtt_ms=None if up.rtt_ms is None else round(up.rtt_ms, 1),
            loss_up=loss(up),
            loss_down=loss(down),
            jitter_ms=None
            if audio is None or audio.jitter_ms is None
            else round(audio.jitter_ms, 1),
            bitrate_in=None if up.bitrate_bps is None else round(up.bitrate_bps),
            bitrate_out=None if down.bitrate_bps is None else round(down.bitrate_bps),
            fps=None if client is None else client.fps_in,
            score_up=up_score,
            score_down=down_score,
            candidate_type=None if client is None else client.candidate_type,
        )

    async def _transition(
        self, session_id: str, role: str, pq: ParticipantQuality, label: Label
    ) -> None:
        previous = pq.label
        if previous == label:
            return
        bad = ("poor", "lost", "no_media")
        if label in bad or (previous in bad and label not in bad):
            incident = Incident(
                at=time.time(),
                session_id=session_id,
                role=role,
                from_label=previous,
                to=label,
                score=pq.score,
            )
            self.incidents.appendleft(incident)
            await self.store_incident(incident)
            action = "quality_recovered" if label not in bad else f"quality_{label}"
            await record_now(
                self.database,
                action,
                "system",
                session_id,
                f"{role}: {previous or 'start'} -> {label}",
            )

    async def _tell_participants(self, room: Any, call: CallQuality) -> None:
        for role in ROLES:
            me = call.roles.get(role)
            if me is None or me.score is None or me.label is None:
                continue
            other = call.roles.get(other_role(role))
            peer_level = None
            if (
                other is not None
                and other.score is not None
                and other.label is not None
                and room.member(other_role(role))
            ):
                peer_level = m.QualityLevel(score=other.score, label=other.label)
            await room.send_quality(
                role, m.Quality(you=m.QualityLevel(score=me.score, label=me.label), peer=peer_level)
            )

    def worst(self, session_id: str) -> m.QualityLevel | None:
        call = self.calls.get(session_id)
        if call is None:
            return None
        scored = [
            m.QualityLevel(score=pq.score, label=pq.label)
            for pq in call.roles.values()
            if pq.score is not None and pq.label is not None
        ]
        return min(scored, key=lambda level: level.score, default=None)
