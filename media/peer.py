"""The server's side of one browser's peer connection.

Each participant gets one ``RTCPeerConnection``. Everything it receives is read continuously
(an unread aiortc track grows memory by about 1 MB/s) and handed to ``on_frame``; what it sends
comes from two ``OutboundTrack``s that the call feeds with the other participant's media.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Literal

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame

from .ice import MediaConfig
from .sdp import SdpError, sanitize_offer
from .tracks import OutboundTrack

log = logging.getLogger("rapport.media")

MediaState = Literal["none", "connecting", "connected", "lost"]
FrameSink = Callable[[str, Frame], None]
STALL_AFTER_S = 3.0


class ParticipantPeer:
    def __init__(
        self,
        label: str,
        config: MediaConfig,
        on_frame: FrameSink,
        on_state: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self.pc = RTCPeerConnection(configuration=config.rtc_configuration())
        self._config = config
        self._on_frame = on_frame
        self._on_state = on_state or (lambda: None)
        self.outbound = {"audio": OutboundTrack("audio"), "video": OutboundTrack("video")}
        self._readers: list[asyncio.Task[None]] = []
        self.last_frame_at: dict[str, float] = {}
        self.frames_in: dict[str, int] = {"audio": 0, "video": 0}
        self.closed = False
        self._stalled = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def media_state(self) -> MediaState:
        state = self.pc.connectionState
        if self.closed or state in ("closed", "failed"):
            return "lost" if self.frames_in["audio"] or self.frames_in["video"] else "none"
        if state != "connected":
            return "connecting"
        return "lost" if self._stalled else "connected"

    async def answer(self, offer_sdp: str) -> str:
        """Apply a browser offer and return the answer; raise ``SdpError`` if unusable."""
        cleaned = sanitize_offer(offer_sdp, self._config)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=cleaned, type="offer"))
            kinds = {t.kind for t in self.pc.getTransceivers()}
            for kind in ("audio", "video"):
                if kind in kinds:
                    self.pc.addTrack(self.outbound[kind])
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except SdpError:
            raise
        except Exception as exc:  # aiortc signals bad SDP with many exception types
            log.info("offer rejected by aiortc: %s", type(exc).__name__)
            raise SdpError("The offer could not be negotiated.") from exc
        if self.pc.localDescription is None:
            raise SdpError("The offer could not be negotiated.")
        return self.pc.localDescription.sdp

    def check_stall(self, now: float | None = None) -> bool:
        """Mark media lost when no RTP arrived for 3 s on a connected peer; return change.

        aiortc keeps a dead peer 'connected' for ~30 s, so silence on the wire is the signal.
        """
        if self.closed or self.pc.connectionState != "connected":
            return False
        now = time.monotonic() if now is None else now
        newest = max(self.last_frame_at.values(), default=None)
        stalled = newest is not None and now - newest >= STALL_AFTER_S
        if stalled != self._stalled:
            self._stalled = stalled
            return True
        return False

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a decoder hiccup must not stop the reader: unread tracks leak
                log.exception("reading %s track failed", kind)
                continue
            if not isinstance(frame, Frame):
                continue  # a decoded track yields frames; packets only when forwarding
            self.frames_in[kind] += 1
            self.last_frame_at[kind] = time.monotonic()
            if self._stalled:
                self._stalled = False
                self._on_state()
            try:
                self._on_frame(kind, frame)
            except Exception:
                log.exception("frame sink failed")

    async def _on_connection_state(self) -> None:
        log.info("peer %s connection %s", self.label, self.pc.connectionState)
        self._on_state()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for track in self.outbound.values():
            track.stop()
        for task in self._readers:
            task.cancel()
        # aiortc's close can itself raise after a failed negotiation; the peer is gone either way.
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in self._readers:
            with contextlib.suppress(BaseException):
                await task
        self._on_state()
