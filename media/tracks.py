"""Outbound tracks the server sends to a participant.

Frames are pushed in by whatever relays the other participant's media; ``recv`` hands them to
aiortc's sender. Queues are small and drop the oldest frame when full: under overload a fresh
frame is worth more than a complete history, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.frame import Frame

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000


class OutboundTrack(MediaStreamTrack):
    """A track fed by ``push``; restamps frames onto its own clock.

    Restamping matters because the source changes when the other participant reconnects (a
    new peer connection starts its timestamps anywhere), and a receiver's jitter buffer must
    see one monotonic timeline.
    """

    def __init__(self, kind: str, maxlen: int | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._frames: deque[Frame] = deque(maxlen=maxlen or (8 if kind == "audio" else 3))
        self._ready = asyncio.Event()
        self._start: float | None = None
        self._audio_samples = 0
        self.dropped = 0
        self.sent = 0

    def push(self, frame: Frame) -> None:
        if self.readyState != "live":
            return
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    async def recv(self) -> Frame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        if self.readyState != "live":
            raise MediaStreamError
        self._restamp(frame)
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    def _restamp(self, frame: Frame) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        if isinstance(frame, VideoFrame):
            frame.pts = int((now - self._start) * VIDEO_CLOCK)
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        elif isinstance(frame, AudioFrame):
            frame.pts = self._audio_samples
            frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
            self._audio_samples += frame.samples
