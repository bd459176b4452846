"""The media of one session: a peer per present participant and the relay between them.

Video and audio are decoded by aiortc on receipt and re-encoded for the other participant
(a later step forwards encoded frames instead). Decoded audio is also handed to
``on_audio`` so the alliance-signal engine can listen without a second decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from av import AudioFrame
from av.frame import Frame

from .ice import MediaConfig
from .peer import MediaState, ParticipantPeer

log = logging.getLogger("rapport.media")

ROLES = ("therapist", "client")
AudioSink = Callable[[str, AudioFrame], None]


def other_role(role: str) -> str:
    return "client" if role == "therapist" else "therapist"


class Call:
    def __init__(
        self,
        config: MediaConfig,
        on_audio: AudioSink | None = None,
        on_media_state: Callable[[str, MediaState], None] | None = None,
    ) -> None:
        self.config = config
        self.peers: dict[str, ParticipantPeer] = {}
        self._on_audio = on_audio
        self._on_media_state = on_media_state
        self._watchdog: asyncio.Task[None] | None = None
        self._last_state: dict[str, MediaState] = {}
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
            on_frame=lambda kind, frame: self._route(role, kind, frame),
            on_state=lambda: self._state_changed(role),
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
        self._ensure_watchdog()
        self._state_changed(role)
        return answer

    async def disconnect(self, role: str) -> None:
        peer = self.peers.pop(role, None)
        if peer is not None:
            await peer.close()
        self._state_changed(role)

    def media_state(self, role: str) -> MediaState:
        peer = self.peers.get(role)
        return "none" if peer is None else peer.media_state

    def _route(self, source_role: str, kind: str, frame: Frame) -> None:
        target = self.peers.get(other_role(source_role))
        if target is not None:
            target.outbound[kind].push(frame)
        if kind == "audio" and self._on_audio is not None and isinstance(frame, AudioFrame):
            self._on_audio(source_role, frame)

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
