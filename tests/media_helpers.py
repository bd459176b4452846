"""Synthetic browser stand-ins for media tests: aiortc peers with generated tracks."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from media.alliance.vad import FrameFeatures
from media.relay.ice import restrict_host_addresses
from tests.support import eventually

SAMPLE_RATE = 48_000
SAMPLES = 960  # 20 ms, what browsers and aiortc use for Opus


class ToneTrack(MediaStreamTrack):
    """A paced audio track: a tone of ``freq`` Hz, or silence when ``freq`` is 0."""

    kind = "audio"

    def __init__(self, freq: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(SAMPLES) + self._n) / SAMPLE_RATE
        mono = (self.amplitude * 32767 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += SAMPLES
        return frame


class ColorTrack(MediaStreamTrack):
    """A paced 15 fps video track of a flat colour, small to keep CPU low in tests."""

    kind = "video"

    def __init__(
        self, rgb: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (160, 120)
    ):
        super().__init__()
        self.rgb = rgb
        self.size = size
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n / 15 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        w, h = self.size
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[:, :] = self.rgb
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self._n * 6000
        frame.time_base = fractions.Fraction(1, 90_000)
        self._n += 1
        return frame


class FakeBrowser:
    """An offering peer, like a browser: sends generated media and records what it receives."""

    def __init__(
        self, audio: MediaStreamTrack | None = None, video: MediaStreamTrack | None = None
    ):
        restrict_host_addresses(["127.0.0.1"])
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.audio = audio or ToneTrack()
        self.video = video or ColorTrack()
        self.pc.addTrack(self.audio)
        self.pc.addTrack(self.video)
        self.received: dict[str, list[object]] = {"audio": [], "video": []}
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on(
            "track", lambda track: self._tasks.append(asyncio.ensure_future(self._read(track)))
        )

    async def _read(self, track: MediaStreamTrack) -> None:
        frames = self.received[track.kind]
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            frames.append(frame)
            if len(frames) > 200:  # keep memory bounded in long tests
                del frames[:100]

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def wait_for(self, kind: str, count: int, timeout: float = 15.0) -> None:
        await eventually(
            lambda: len(self.received[kind]) >= count,
            timeout=timeout,
            message=lambda: f"{count} {kind} frames (got {len(self.received[kind])})",
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


class PcmTrack(MediaStreamTrack):
    """A paced audio track playing int16 mono samples at 48 kHz, then silence.

    ``gain`` can be changed while playing (0 silences it), like a person who stops talking.
    """

    kind = "audio"

    def __init__(self, samples: np.ndarray, loop: bool = False) -> None:
        super().__init__()
        self.samples = np.asarray(samples, dtype=np.int16)
        self.loop = loop
        self.gain = 1.0
        self._n = 0
        self._start: float | None = None

    def restart(self, samples: np.ndarray | None = None) -> None:
        if samples is not None:
            self.samples = np.asarray(samples, dtype=np.int16)
        self._offset = self._n

    _offset = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        pos = self._n - self._offset
        if self.loop and len(self.samples):
            pos %= len(self.samples)
        chunk = self.samples[pos : pos + SAMPLES]
        if chunk.size < SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(SAMPLES - chunk.size, dtype=np.int16)])
        chunk = (chunk.astype(np.float32) * self.gain).astype(np.int16)
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += SAMPLES
        return frame


def speech(seconds: float, voice: str = "en-us", gap: float = 0.25) -> np.ndarray:
    """Continuous espeak speech of about ``seconds`` (int16, 48 kHz mono)."""
    from tests.fixtures.dialogues import synthesize

    sentences = [
        "I have been thinking about what we talked about last week.",
        "It was hard at first, but I tried the exercise every morning.",
        "Some days it helped and some days it did not help at all.",
        "I would like to talk about my sister and the holidays.",
    ]
    parts: list[np.ndarray] = []
    total = 0
    i = 0
    while total < seconds * SAMPLE_RATE:
        pcm = (synthesize(sentences[i % len(sentences)], voice, 165) * 0.5 * 32767).astype(np.int16)
        parts += [pcm, np.zeros(int(gap * SAMPLE_RATE), dtype=np.int16)]
        total += pcm.size + int(gap * SAMPLE_RATE)
        i += 1
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


class NetEmulator:
    """Packet loss and delay on one peer's outgoing datagrams, in process.

    Wraps the aioice connection's ``sendto`` — the last step before the UDP socket — so RTP,
    RTCP and everything above it behave as on a lossy network. Start it once connected
    (dropping the DTLS handshake would only test set-up timeouts).
    """

    def __init__(self, pc: RTCPeerConnection, seed: int = 1) -> None:
        import random

        self.loss = 0.0
        self.delay_s = 0.0
        self.blackhole = False
        self.dropped = 0
        self.sent = 0
        self._rng = random.Random(seed)
        transport = pc.getTransceivers()[0].sender.transport
        assert transport is not None
        self._conn = transport.transport._connection
        self._send = self._conn.sendto
        self._pending: set[asyncio.Task[None]] = set()
        # The emulator sits in aioice's send path: no public hook exists for it.
        self._conn.sendto = self._sendto  # type: ignore[method-assign]

    async def _sendto(self, data: bytes, component: int) -> None:
        if self.blackhole or self._rng.random() < self.loss:
            self.dropped += 1
            return
        self.sent += 1
        if self.delay_s <= 0:
            await self._send(data, component)
            return
        loop = asyncio.get_running_loop()

        def later() -> None:
            task = asyncio.ensure_future(self._send(data, component))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        loop.call_later(self.delay_s, later)


def mean_rgb(frame: object) -> np.ndarray:
    """The mean colour of a received video frame (the synthetic tracks send flat colours)."""
    assert isinstance(frame, VideoFrame)
    pixels: np.ndarray = frame.to_ndarray(format="rgb24").reshape(-1, 3)
    mean: np.ndarray = pixels.mean(axis=0)
    return mean


def rms(frame: object) -> float:
    """The RMS level of a received audio frame."""
    assert isinstance(frame, AudioFrame)
    return float(np.sqrt(np.mean(frame.to_ndarray().astype(np.float64) ** 2)))


#: Bands of the synthetic frames attribution tests feed (``level_frame``).
BANDS = 4
Level = float | None  # a frame's speech-band level in dBFS, None for silence


def level_frame(level: Level) -> FrameFeatures:
    """A VAD frame at ``level`` dBFS spread evenly over ``BANDS`` bands (None: silence)."""
    if level is None:
        return FrameFeatures(False, -100.0, -90.0, 6.0, np.full(BANDS, 1e-10 / BANDS))
    power = 10.0 ** (level / 10.0)
    return FrameFeatures(True, level, -90.0, 6.0, np.full(BANDS, power / BANDS))
