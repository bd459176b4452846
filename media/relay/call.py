"""The media of one session: a peer per present participant and the relay between them.

The relay forwards encoded frames (VP8 video, Opus audio) from one participant's peer to the
other's without decoding or re-encoding them, and passes the viewer's feedback upstream: a
keyframe request (PLI/FIR, or a viewer that just joined) becomes a throttled PLI to the
sending browser, and the viewer's bandwidth estimate (REMB) caps the REMB the server sends to
the sender. Audio is still decoded once, off the forwarding path, so ``on_audio`` receives
decoded frames for the alliance-signal engine exactly as before.

When a direction's codecs cannot be forwarded (say one browser offers only H.264 and the
other gets VP8), that direction falls back to decoding and re-encoding, which is logged and
shown in ``relay_mode``. ``MediaConfig.relay_mode = "transcode"`` makes every direction do so.

Forwarding depends on aiortc internals (``media.aiortc_compat``), which are loaded only when a
call forwards: building a forwarding ``Call`` on an aiortc they do not fit raises
``ForwardingUnavailable`` at once, while a transcoding ``Call`` never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from aiortc import RTCStatsReport
from av import AudioFrame
from av.frame import Frame

from ..participants import ROLES, MediaState, other_role
from .frames import FORWARDABLE, EncodedFrame
from .ice import MediaConfig
from .peer import SLOTS, ParticipantPeer

log = logging.getLogger("rapport.media")

# A participant's decoded audio: an av frame, or (from a media worker process) 48 kHz mono
# int16 samples, which is all the signal engine needs and a fifth of the bytes to ship.
AudioInput = AudioFrame | np.ndarray
AudioSink = Callable[[str, AudioInput], None]
MediaStateSink = Callable[[str, MediaState], None]
RelayMode = Literal["forward", "transcode"]
WorkerLostSink = Callable[[str], None]


@dataclass
class PeerReport:
    """One participant's peer as the quality hub samples it."""

    role: str
    media_state: MediaState
    rtc: RTCStatsReport
    #: Seconds since the last RTP packet per direction ("up": from the participant, "down":
    #: to them), None before the first. The 2-s stats alone show a dead link only as counters
    #: that stop moving, a sample or two late; this says it at once.
    rtp_age_s: dict[str, float | None] = field(default_factory=dict)


class CallHandle(Protocol):
    """What a room needs of its call, whether the peers live in this process or a worker's."""

    relay_mode: dict[str, RelayMode]
    #: Called (with a line for the log and audit) when the process holding this call's peers
    #: died: every peer is gone at once, so both participants must re-offer now.
    on_worker_lost: WorkerLostSink | None

    async def connect(self, role: str, offer_sdp: str) -> str: ...

    async def disconnect(self, role: str) -> None: ...

    async def close(self) -> None: ...

    def media_state(self, role: str) -> MediaState: ...

    @property
    def peer_count(self) -> int: ...

    async def peer_reports(self) -> list[PeerReport]: ...

    async def relay_stats(self) -> dict[str, Any]: ...


class MediaUnavailable(RuntimeError):
    """The media engine serving this call went away (a worker process died); retry."""


CallFactory = Callable[[str, AudioSink | None, MediaStateSink | None], CallHandle]


def direction(source_role: str) -> str:
    """Name of the direction of media leaving ``source_role``, e.g. "therapist->client"."""
    return f"{source_role}->{other_role(source_role)}"


def configured_mode(config: MediaConfig) -> RelayMode:
    return "transcode" if config.relay_mode == "transcode" else "forward"


def initial_relay_modes(config: MediaConfig) -> dict[str, RelayMode]:
    """Each direction's mode before any peer negotiated: what the deployment asks for."""
    return {direction(r): configured_mode(config) for r in ROLES}


def prepare_process(config: MediaConfig) -> None:
    """Ready this process to run media as ``config`` asks; called where media really runs.

    The aiortc speed patches change aiortc for the whole process, so they go in here (an
    in-process ``Call``, a media worker at start) rather than on import: a server whose calls
    all run in workers keeps aiortc as shipped. They are an optimisation, so any failure is
    logged and the call runs on aiortc's own clock. Forwarding, by contrast, is loaded (and
    its aiortc check run) only when ``config`` forwards, and fails loudly: a relay that was
    asked to forward must not quietly fall back to decoding every frame.
    """
    try:
        from media.aiortc_compat import speed

        speed.install()
    except Exception:
        log.warning("aiortc speed patches unavailable; using aiortc's own", exc_info=True)
    if configured_mode(config) == "forward":
        import media.aiortc_compat.forwarding  # noqa: F401  (raises ForwardingUnavailable)


def rtp_age(peer: ParticipantPeer, now: float | None = None) -> dict[str, float | None]:
    """Seconds since ``peer`` last received ("up") and sent ("down") media, any kind."""
    now = time.monotonic() if now is None else now
    received = max(peer.last_frame_at.values(), default=None)
    sent_at = [t._last_out_at for t in peer.outbound.values() if t._last_out_at > 0]
    sent = max(sent_at, default=None)
    return {
        "up": None if received is None else round(now - received, 3),
        "down": None if sent is None else round(now - sent, 3),
    }


class Call:
    """The in-process call; ``media.workers.pool.RemoteCall`` is the same behind a worker."""

    def __init__(
        self,
        config: MediaConfig,
        on_audio: AudioSink | None = None,
        on_media_state: MediaStateSink | None = None,
    ) -> None:
        prepare_process(config)
        self.config = config
        self.peers: dict[str, ParticipantPeer] = {}
        self._on_audio = on_audio
        self._on_media_state = on_media_state
        self.on_worker_lost: WorkerLostSink | None = None  # in-process: never called
        self._watchdog: asyncio.Task[None] | None = None
        self._last_state: dict[str, MediaState] = {}
        default = configured_mode(config)
        # Per direction ("therapist->client", "client->therapist"): "forward" when every
        # kind of media in it passes through encoded, "transcode" otherwise.
        self.relay_mode = initial_relay_modes(config)
        self._modes: dict[tuple[str, str], RelayMode] = {
            (r, k): default for r in ROLES for k in SLOTS
        }
        self.closed = False

    async def connect(self, role: str, offer_sdp: str) -> str:
        """Negotiate a fresh peer for ``role`` and return the SDP answer.

        The old peer (if any) is replaced only once the new one negotiated, so a bad offer in
        the middle of a call leaves the call as it was.
        """
        if role not in ROLES:
            raise ValueError(role)
        peer = ParticipantPeer(
            role,
            self.config,
            on_frame=lambda kind, frame: self._route_decoded(role, kind, frame),
            on_state=lambda: self._state_changed(role),
            on_encoded=lambda kind, frame: self._route_encoded(role, kind, frame),
            on_tap_audio=(lambda frame: self._tap_audio(role, frame)) if self._on_audio else None,
            on_keyframe_request=lambda kind: self._keyframe_for_viewer(role, kind),
            on_remb=lambda bps: self._remb_from_viewer(role, bps),
        )
        try:
            answer = await peer.answer(offer_sdp)
        except BaseException:
            await peer.close()
            raise
        old = self.peers.get(role)
        self.peers[role] = peer
        if old is not None:
            await old.close()
        self._update_modes()
        self._ensure_watchdog()
        self._state_changed(role)
        return answer

    async def disconnect(self, role: str) -> None:
        peer = self.peers.pop(role, None)
        if peer is not None:
            await peer.close()
            source = self.peers.get(other_role(role))
            if source is not None:
                source.set_downstream_bitrate(None)  # its viewer's estimate left with it
        self._state_changed(role)

    def media_state(self, role: str) -> MediaState:
        peer = self.peers.get(role)
        return "none" if peer is None else peer.media_state

    def mode(self, source_role: str, kind: str) -> RelayMode:
        """How ``kind`` media from ``source_role`` reaches the other participant."""
        return self._modes[(source_role, kind)]

    @property
    def peer_count(self) -> int:
        return len(self.peers)

    def stats(self) -> dict[str, Any]:
        return {
            "relay_mode": dict(self.relay_mode),
            "peers": {role: peer.stats() for role, peer in self.peers.items()},
        }

    async def relay_stats(self) -> dict[str, Any]:
        return self.stats()

    async def peer_reports(self) -> list[PeerReport]:
        reports = []
        for role, peer in list(self.peers.items()):
            try:
                rtc = await peer.pc.getStats()
            except Exception:  # a peer closing under our feet has no stats; skip it this round
                continue
            reports.append(PeerReport(role, peer.media_state, rtc, rtp_age(peer)))
        return reports

    # ----------------------------------------------------------------- relay decisions
    def _decide(self, source_role: str, kind: str) -> RelayMode:
        if self.config.relay_mode == "transcode":
            return "transcode"
        source = self.peers.get(source_role)
        target = self.peers.get(other_role(source_role))
        src = source.codec(kind) if source is not None else None
        dst = target.codec(kind) if target is not None else None
        if src is None or dst is None:
            # Nobody to relay to (yet), or nothing to relay: keep frames encoded, it is cheap.
            return "forward" if src is None or src in FORWARDABLE else "transcode"
        return "forward" if src == dst and src in FORWARDABLE else "transcode"

    def _update_modes(self) -> None:
        for source_role in ROLES:
            source = self.peers.get(source_role)
            for kind in SLOTS:  # the shared screen is a slot of its own (media.relay.peer)
                mode = self._decide(source_role, kind)
                previous = self._modes[(source_role, kind)]
                self._modes[(source_role, kind)] = mode
                if source is not None:
                    source.set_forwarding(kind, mode == "forward")
                if mode != previous and self.config.relay_mode == "forward":
                    target = self.peers.get(other_role(source_role))
                    src = source.codec(kind) if source else None
                    dst = target.codec(kind) if target else None
                    if mode == "transcode":
                        log.warning(
                            "relay %s %s: %s cannot be forwarded as %s; falling back to "
                            "transcoding",
                            direction(source_role),
                            kind,
                            src,
                            dst,
                        )
                    else:
                        log.info("relay %s %s: forwarding %s", direction(source_role), kind, src)
            modes = {self._modes[(source_role, k)] for k in SLOTS}
            self.relay_mode[direction(source_role)] = (
                "transcode" if "transcode" in modes else "forward"
            )

    # ----------------------------------------------------------------- routing
    def _route_encoded(self, source_role: str, kind: str, frame: EncodedFrame) -> None:
        if self._modes[(source_role, kind)] != "forward":
            return
        target = self.peers.get(other_role(source_role))
        source = self.peers.get(source_role)
        if target is not None and source is not None:
            target.outbound[kind].push_encoded(frame, (source.id, frame.epoch))

    def _route_decoded(self, source_role: str, kind: str, frame: Frame) -> None:
        """aiortc decoded this frame: relay it (transcoding) and let the signals listen."""
        if self._modes[(source_role, kind)] == "transcode":
            target = self.peers.get(other_role(source_role))
            source = self.peers.get(source_role)
            if target is not None and source is not None:
                target.outbound[kind].push(frame, (source.id, "decoded"))
        if kind == "audio" and self._on_audio is not None and isinstance(frame, AudioFrame):
            self._on_audio(source_role, frame)

    def _tap_audio(self, source_role: str, frame: AudioFrame) -> None:
        if self._on_audio is not None and not self.closed:
            self._on_audio(source_role, frame)

    def _keyframe_for_viewer(self, viewer_role: str, kind: str) -> None:
        """The viewer lost or lacks a picture (camera or screen, as ``kind`` says): ask the
        source's browser for a keyframe of that stream."""
        if kind not in ("video", "screen"):
            return
        source_role = other_role(viewer_role)
        source = self.peers.get(source_role)
        if source is not None and self._modes[(source_role, kind)] == "forward":
            source.request_keyframe(f"viewer {viewer_role}", kind)

    def _remb_from_viewer(self, viewer_role: str, bps: int) -> None:
        source_role = other_role(viewer_role)
        source = self.peers.get(source_role)
        if source is not None and self._modes[(source_role, "video")] == "forward":
            source.set_downstream_bitrate(bps)

    # ----------------------------------------------------------------- health
    def _state_changed(self, role: str) -> None:
        state = self.media_state(role)
        if self._last_state.get(role) == state:
            return
        self._last_state[role] = state
        if self._on_media_state is not None:
            self._on_media_state(role, state)

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(0.5)
            for role, peer in list(self.peers.items()):
                if peer.check_stall():
                    self._state_changed(role)

    async def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(BaseException):
                await self._watchdog
        for role in list(self.peers):
            await self.disconnect(role)
