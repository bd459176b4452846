"""Synthetic participants for ``rapport bench``: browser stand-ins that cost little to run.

A load generator must not be the bottleneck it measures, so these aiortc peers never encode
or decode video: they send a few seconds of 640×480@30 VP8 (about 1 Mbps) and of speech-like
Opus, encoded once at start-up and looped, and they receive through
``media.aiortc_compat.forwarding`` (frames are assembled, timed and dropped, never decoded; only
audio is decoded, which is cheap, to read its level). The process installs aiortc's speed
patches (``media.aiortc_compat.speed``) when it starts, as the server's media processes do.

Latency is measured end to end without trusting any clock but this process's: each sender
records when it handed every frame to aiortc (keyed by the frame's RTP time), and each
receiver records when the frame was complete. The relay keeps the sender's timestamp spacing
and only adds a per-stream offset, which a pattern in the media pins down:

* video: the sender skips the last ``VIDEO_ANCHOR_SKIP`` of every ``VIDEO_ANCHOR_EVERY``
  slots, so only one alignment puts no received frame into a skipped slot;
* audio: the clip's frame levels (a click, syllables, pauses) repeat every
  ``AUDIO_LOOP_FRAMES``; only one alignment makes the received levels match. Levels survive
  the transcoding relay's decode and re-encode, so both relay modes are measured alike.

Arrival times settle the remaining whole periods (latency is far below one period). The same
measurement over a direct peer-to-peer pair in the same process is the baseline that
``rapport bench`` subtracts. Run as ``python -m server.bench.loadgen`` (driven by the bench over
stdin/stdout JSON lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import logging
import math
import secrets
import struct
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.aiortc_compat import speed
from media.aiortc_compat.forwarding import ForwardingReceiver, send_forwarded, watch_sender
from media.relay.frames import EncodedFrame, ForwardedPayloads, FrameDecoder, packetize_vp8
from media.relay.ice import restrict_host_addresses

log = logging.getLogger("rapport.loadgen")

VIDEO_FPS = 30
VIDEO_TICKS = 90_000 // VIDEO_FPS
AUDIO_TICKS = 960  # 20 ms at 48 kHz
VIDEO_ANCHOR_EVERY = 90  # slots (3 s)
VIDEO_ANCHOR_SKIP = 3
AUDIO_LOOP_FRAMES = 100  # 2 s; frame 0 of each loop is the click
CLIP_MAGIC = b"RAPPORTCLIP1"


# ---------------------------------------------------------------------------- clip
@dataclass
class Clip:
    """Pre-encoded media: VP8 frames (data, keyframe) and Opus packets, looped by senders."""

    video: list[tuple[bytes, bool]]
    audio: list[bytes]
    width: int
    height: int

    def save(self, path: Path) -> None:
        parts = [
            CLIP_MAGIC,
            struct.pack("!HHII", self.width, self.height, len(self.video), len(self.audio)),
        ]
        for data, key in self.video:
            parts.append(struct.pack("!I?", len(data), key) + data)
        for data in self.audio:
            parts.append(struct.pack("!I", len(data)) + data)
        path.write_bytes(b"".join(parts))

    @classmethod
    def load(cls, path: Path) -> Clip:
        raw = path.read_bytes()
        if not raw.startswith(CLIP_MAGIC):
            raise ValueError(f"{path} is not a Rapport clip")
        pos = len(CLIP_MAGIC)
        width, height, nv, na = struct.unpack_from("!HHII", raw, pos)
        pos += 12
        video: list[tuple[bytes, bool]] = []
        for _ in range(nv):
            size, key = struct.unpack_from("!I?", raw, pos)
            pos += 5
            video.append((raw[pos : pos + size], key))
            pos += size
        audio: list[bytes] = []
        for _ in range(na):
            (size,) = struct.unpack_from("!I", raw, pos)
            pos += 4
            audio.append(raw[pos : pos + size])
            pos += size
        return cls(video, audio, width, height)


def _scene(width: int, height: int, count: int) -> Iterator[np.ndarray]:
    """A camera-like picture: soft moving background, a textured 'head' moving about, noise."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cell = max(1, width // 80)
    tex = rng.integers(0, 160, (height // cell + 1, width // cell + 1)).astype(np.float32)
    tex = np.kron(tex, np.ones((cell, cell), dtype=np.float32))[:height, :width]
    noise = rng.normal(0, 3, (4, height, width)).astype(np.float32)
    for i in range(count):
        t = i / VIDEO_FPS
        img = 90 + 60 * np.sin(xx / 70 + t * 0.7) * np.cos(yy / 55 - t * 0.4)
        cx = width / 2 + width * 0.18 * math.sin(t * 1.3)
        cy = height / 2 + height * 0.1 * math.sin(t * 0.9)
        head = ((xx - cx) / (width * 0.17)) ** 2 + ((yy - cy) / (height * 0.29)) ** 2 < 1
        img[head] = 0.6 * np.roll(tex, int(t * 20), axis=1)[head] + 60
        img += noise[i % 4]
        y = np.clip(img, 0, 255).astype(np.uint8)
        yield np.stack([y, (y * 0.8).astype(np.uint8), (y * 0.6).astype(np.uint8)], axis=-1)


def encode_video(
    seconds: float = 3.0, width: int = 640, height: int = 480, bitrate: int = 1_000_000
) -> list[tuple[bytes, bool]]:
    """VP8 with one keyframe (the first frame): a sender restarts the loop on a PLI."""
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, VIDEO_FPS)
    ctx.framerate = fractions.Fraction(VIDEO_FPS, 1)
    ctx.bit_rate = bitrate
    ctx.gop_size = 1_000_000
    ctx.thread_count = 2
    ctx.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "undershoot-pct": "95",
        "overshoot-pct": "15",
        "static-thresh": "0",
        "partitions": "0",
        "kf-max-dist": "1000000",
    }
    frames: list[tuple[bytes, bool]] = []
    count = max(2, round(seconds * VIDEO_FPS))
    for i, rgb in enumerate(_scene(width, height, count)):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        if i == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in ctx.encode(frame):
            data = bytes(packet)
            frames.append((data, data[0] & 0x01 == 0))
    for packet in ctx.encode(None):
        data = bytes(packet)
        frames.append((data, data[0] & 0x01 == 0))
    if not frames or not frames[0][1]:
        raise RuntimeError("the VP8 clip must start with a keyframe")
    return frames


def speech_like(frames: int = AUDIO_LOOP_FRAMES, seed: int = 3) -> np.ndarray:
    """Mono int16 48 kHz: a click frame, then voiced 'syllables' and pauses, quiet at the end.

    Syllables are glottal-pulse-like harmonic series (f0 100-220 Hz) under a 4 Hz envelope at
    about -20 dBFS, so a voice activity detector treats them as speech; the first 20 ms are a
    near-full-scale noise burst (the timing click); the last 200 ms are quiet so the click's
    onset is unambiguous.
    """
    rng = np.random.default_rng(seed)
    n = frames * AUDIO_TICKS
    t = np.arange(n) / 48_000
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.7 * t) + 20 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 48_000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.7
    gate = np.ones(n)
    for start in rng.integers(AUDIO_TICKS * 5, n - AUDIO_TICKS * 20, 3):
        gate[start : start + int(0.3 * 48_000)] = 0.0  # pauses between 'words'
    signal: np.ndarray = voiced * envelope * gate
    signal = 0.1 * signal / (np.max(np.abs(signal)) + 1e-9)
    signal[: AUDIO_TICKS * 3] = 0.0
    signal[-AUDIO_TICKS * 10 :] = 0.0
    signal[:AUDIO_TICKS] = rng.choice([-0.9, 0.9], AUDIO_TICKS) * rng.uniform(0.8, 1.0, AUDIO_TICKS)
    return (signal * 32767).astype(np.int16)


def encode_audio(pcm: np.ndarray, bitrate: int = 32_000) -> list[bytes]:
    """One Opus packet per 20 ms frame of ``pcm`` (48 kHz mono)."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48_000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = bitrate
    ctx.options = {"application": "voip"}
    ctx.time_base = fractions.Fraction(1, 48_000)
    packets: list[bytes] = []
    for i in range(0, pcm.size - AUDIO_TICKS + 1, AUDIO_TICKS):
        frame = av.AudioFrame.from_ndarray(
            pcm[i : i + AUDIO_TICKS].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48_000
        frame.pts = i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets[: pcm.size // AUDIO_TICKS]


def make_clip(seconds: float = 3.0, width: int = 640, height: int = 480) -> Clip:
    return Clip(encode_video(seconds, width, height), encode_audio(speech_like()), width, height)


def load_or_make_clip(path: Path | None, width: int = 640, height: int = 480) -> Clip:
    if path is not None and path.exists():
        clip = Clip.load(path)
        if (clip.width, clip.height) == (width, height):
            return clip
    clip = make_clip(width=width, height=height)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        clip.save(path)
    return clip


# ---------------------------------------------------------------------------- sending
def packetize(kind: str, frames: list[bytes]) -> list[list[bytes]]:
    """Each frame as the RTP payloads a browser sends: VP8 split behind payload descriptors
    carrying the frame's index as picture id (RFC 7741), Opus one payload per frame."""
    if kind != "video":
        return [[data] for data in frames]
    return [packetize_vp8(data, index & 0x7FFF) for index, data in enumerate(frames)]


class PacedPacketTrack(MediaStreamTrack):
    """Sends a clip's encoded frames on a slot clock, recording when each one left.

    Slot ``i`` is due at ``start + i * period`` and carries RTP time ``i * ticks``; skipped
    slots (video anchors) advance the clock but send nothing. A keyframe request restarts
    the video loop at its keyframe, as a real encoder would send one.

    Frames are packetised once, up front: the sender (prepared by
    ``media.aiortc_compat.forwarding.send_forwarded``) only puts RTP headers on the payloads.
    Each pass of the loop starts at the keyframe and counts as a new source, so the sender
    renumbers picture ids to keep counting on.
    """

    def __init__(self, kind: str, frames: list[bytes], keyframes: list[bool] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._frames = frames
        self._payloads = packetize(kind, frames)
        self._pass = 0
        self._keyframes = keyframes or [True] * len(frames)
        self.period = 1 / VIDEO_FPS if kind == "video" else AUDIO_TICKS / 48_000
        self.ticks = VIDEO_TICKS if kind == "video" else AUDIO_TICKS
        self._slot = 0
        self._index = 0
        self._start: float | None = None
        self.sent: dict[int, float] = {}
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._index = 0
        self._pass += 1

    def _skipped(self, slot: int) -> bool:
        return (
            self.kind == "video"
            and slot % VIDEO_ANCHOR_EVERY >= VIDEO_ANCHOR_EVERY - VIDEO_ANCHOR_SKIP
        )

    # aiortc's MediaStreamTrack.recv returns Frame | Packet; a sender prepared by
    # send_forwarded takes ForwardedPayloads instead (media.aiortc_compat).
    async def recv(self) -> ForwardedPayloads:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        while self._skipped(self._slot):
            self._slot += 1
        wait = self._start + self._slot * self.period - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.readyState != "live":
            raise MediaStreamError
        slot = self._slot
        self._slot += 1
        if self.kind == "video":
            index = self._index % len(self._frames)
            if index == 0 and self._index:
                self._pass += 1
            self._index += 1
        else:
            index = slot % len(self._frames)
        self.sent[slot * self.ticks] = time.monotonic()
        return ForwardedPayloads(self._payloads[index], slot * self.ticks, self._pass)


# ---------------------------------------------------------------------------- receiving
@dataclass
class StreamLog:
    """What a receiver saw of one stream: (arrival, RTP time, level in dBFS or nan)."""

    kind: str
    frames: list[tuple[float, int, float]] = field(default_factory=list)
    record_from: float = math.inf
    record_until: float = math.inf
    decoder: FrameDecoder | None = None
    limit: int = 200_000

    def add(self, frame: EncodedFrame) -> None:
        if (
            not (self.record_from <= frame.arrival <= self.record_until)
            or len(self.frames) >= self.limit
        ):
            return
        level = math.nan
        if self.kind == "audio":
            level = self._level(frame)
        self.frames.append((frame.arrival, frame.timestamp, level))

    def _level(self, frame: EncodedFrame) -> float:
        if self.decoder is None:
            self.decoder = FrameDecoder(frame.mime, frame.clock_rate)
        try:
            decoded = self.decoder.decode(frame)
        except Exception:
            return math.nan
        return _level([f for f in decoded if isinstance(f, av.AudioFrame)])


def _prefer(transceiver: RTCRtpTransceiver, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime]
    if transceiver.kind == "video":
        chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    transceiver.setCodecPreferences(chosen)


class LoadPeer:
    """A browser stand-in: sends the paced clip, receives without decoding video."""

    def __init__(self, name: str, clip: Clip) -> None:
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tracks = {
            "video": PacedPacketTrack(
                "video", [d for d, _ in clip.video], [k for _, k in clip.video]
            ),
            "audio": PacedPacketTrack("audio", clip.audio),
        }
        self.inbound = {"video": StreamLog("video"), "audio": StreamLog("audio")}
        self.transceivers: dict[str, RTCRtpTransceiver] = {}
        self.forwarders: list[ForwardingReceiver] = []
        self._hooked = False

    def _add_transceivers(self) -> None:
        for kind in ("audio", "video"):
            transceiver = self.pc.addTransceiver(self.tracks[kind], direction="sendrecv")
            _prefer(transceiver, "video/vp8" if kind == "video" else "audio/opus")
            send_forwarded(transceiver.sender, transceiver)
            self.transceivers[kind] = transceiver

    def _hook(self) -> None:
        if self._hooked:
            return
        self._hooked = True
        for kind, transceiver in self.transceivers.items():
            log_ = self.inbound[kind]
            forwarder = ForwardingReceiver(transceiver, on_frame=log_.add)
            forwarder.enable()
            self.forwarders.append(forwarder)
        watch_sender(self.transceivers["video"].sender, self.tracks["video"].request_keyframe)

    async def offer(self) -> str:
        self._add_transceivers()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        self._hook()

    async def answer(self, offer_sdp: str) -> str:
        self._add_transceivers()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        self._hook()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    def record(self, start: float, until: float) -> None:
        for stream in self.inbound.values():
            stream.record_from, stream.record_until = start, until

    async def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        with contextlib.suppress(Exception):
            await self.pc.close()


# ---------------------------------------------------------------------------- analysis
@dataclass
class StreamResult:
    kind: str
    latencies_ms: list[float]
    sent: int
    received: int
    offset_found: bool


def clip_levels(packets: list[bytes]) -> list[float]:
    """Level (dBFS) of each 20 ms frame of an Opus clip, as a receiver decodes it in a loop."""
    decoder = FrameDecoder("audio/opus", 48_000)
    levels: list[float] = []
    for _ in range(2):  # the second pass is what a looping sender's receiver hears
        levels = []
        for i, data in enumerate(packets):
            frame = EncodedFrame("audio", "audio/opus", data, i * AUDIO_TICKS, 48_000, True, 0.0, 0)
            levels.append(
                _level([f for f in decoder.decode(frame) if isinstance(f, av.AudioFrame)])
            )
    return levels


def _level(frames: list[av.AudioFrame]) -> float:
    if not frames:
        return math.nan
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
    rms = float(np.sqrt(np.mean(pcm * pcm))) / 32768.0
    return 20 * math.log10(max(rms, 1e-6))


def _residue(
    kind: str, slots: np.ndarray, levels: np.ndarray, reference: list[float]
) -> int | None:
    """Which slot of the sender's pattern the received slot labels start from (mod period).

    Video: the sender never sends the last ``VIDEO_ANCHOR_SKIP`` slots of each period, so
    the right residue is the one that puts no received frame there. Audio: the level of
    each received frame follows the clip's level pattern (a click, speech, pauses); the
    right residue is the one where they agree best.
    """
    if kind == "video":
        period = VIDEO_ANCHOR_EVERY
        conflicts = [
            int(np.count_nonzero(((slots - r) % period) >= period - VIDEO_ANCHOR_SKIP))
            for r in range(period)
        ]
        best = min(conflicts)
        if conflicts.count(best) > 1 or best > 0.05 * len(slots):
            return None
        return conflicts.index(best)
    period = AUDIO_LOOP_FRAMES
    if len(reference) != period:
        return None
    ref = np.clip(np.asarray(reference, dtype=np.float64), -90, 0)
    got = np.clip(np.nan_to_num(levels, nan=-90.0), -90, 0)
    errors = [float(np.mean(np.abs(got - ref[(slots - r) % period]))) for r in range(period)]
    order = np.argsort(errors)
    if errors[order[1]] - errors[order[0]] < 1.0:  # dB: not clearly better than the next
        return None
    return int(order[0])


def align(
    kind: str,
    sent: dict[int, float],
    received: list[tuple[float, int, float]],
    reference: list[float],
) -> int | None:
    """The offset ``K`` with received RTP time = K + sent pts, or None if it cannot be told.

    The relay keeps timestamp spacing, so ``K mod ticks`` is common to every label; the
    pattern above fixes ``K`` modulo one period of it; the arrival times (latency is less
    than one period, 2-3 s) fix the rest.
    """
    if len(received) < 20:
        return None
    ticks = VIDEO_TICKS if kind == "video" else AUDIO_TICKS
    period = VIDEO_ANCHOR_EVERY if kind == "video" else AUDIO_LOOP_FRAMES
    period_s = period * (1 / VIDEO_FPS if kind == "video" else AUDIO_TICKS / 48_000)
    labels = np.array([ts for _, ts, _ in received], dtype=np.int64)
    base: int = Counter((labels % ticks).tolist()).most_common(1)[0][0]
    # Rounded: aiortc's encoder (transcoding) rescales pts through PyAV and can be 1 tick off.
    slots = np.rint((labels - base) / ticks).astype(np.int64)
    levels = np.array([level for _, _, level in received], dtype=np.float64)
    r = _residue(kind, slots, levels, reference)
    if r is None:
        return None
    votes: Counter[int] = Counter()
    step = max(1, len(received) // 200)  # a sample is plenty to out-vote stragglers
    for (arrival, _, _), slot in list(zip(received, slots.tolist(), strict=True))[::step]:
        first = (slot - r) % period  # the earliest sent slot this label can be
        for true_slot in range(first, max(sent, default=0) // ticks + 1, period):
            at = sent.get(true_slot * ticks)
            if at is not None and 0 <= arrival - at < period_s:
                votes[slot - true_slot] += 1
    if not votes:
        return None
    k_slots, count = votes.most_common(1)[0]
    if count < 0.5 * len(received[::step]):
        return None
    return base + k_slots * ticks


def match_stream(
    kind: str,
    sent: dict[int, float],
    received: list[tuple[float, int, float]],
    window: tuple[float, float],
    reference: list[float] | None = None,
) -> StreamResult:
    """Pair received frames with sent ones; latencies of the frames sent within ``window``."""
    start, end = window
    in_window = {pts: at for pts, at in sent.items() if start <= at <= end}
    offset = align(kind, sent, received, reference or [])
    if offset is None:
        got = sum(1 for arrival, _, _ in received if start <= arrival <= end + 0.2)
        return StreamResult(kind, [], len(in_window), min(got, len(in_window)), False)
    latencies: list[float] = []
    seen: set[int] = set()
    ticks = VIDEO_TICKS if kind == "video" else AUDIO_TICKS
    for arrival, ts, _ in received:
        pts = round((ts - offset) / ticks) * ticks
        if pts in in_window and pts not in seen:
            seen.add(pts)
            latencies.append((arrival - in_window[pts]) * 1000.0)
    return StreamResult(kind, latencies, len(in_window), len(seen), True)


def pair_results(
    sender: LoadPeer, receiver: LoadPeer, window: tuple[float, float], audio_levels: list[float]
) -> list[StreamResult]:
    return [
        match_stream(
            kind,
            sender.tracks[kind].sent,
            receiver.inbound[kind].frames,
            window,
            audio_levels if kind == "audio" else None,
        )
        for kind in ("audio", "video")
    ]


# ---------------------------------------------------------------------------- signalling
class Api:
    """Rapport's HTTP API as the web client uses it (stdlib only, run in a thread)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.cookies: dict[str, str] = {}

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.cookies:
            request.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        with urllib.request.urlopen(request, timeout=30) as response:
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            payload = response.read()
        return json.loads(payload) if payload else {}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._request, "POST", path, body)

    @property
    def ws_base(self) -> str:
        return ws_base(self.base)


def ws_base(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}"


class Socket:
    """One signalling WebSocket; keeps reading so the server never blocks on us."""

    NOISE = frozenset({"signals", "speaking", "peer_state", "pong"})

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, cookie: str) -> Socket:
        import websockets

        ws = await websockets.connect(url, additional_headers={"Cookie": cookie}, max_size=2**22)
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                message = json.loads(raw)
                if message.get("type") in self.NOISE:
                    continue
                self.inbox.append(message)
                del self.inbox[:-100]
                self._arrived.set()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def expect(self, kind: str, wait_s: float = 20.0, **match: Any) -> dict[str, Any]:
        async def _wait() -> dict[str, Any]:
            while True:
                for i, message in enumerate(self.inbox):
                    if message.get("type") == "error":
                        raise RuntimeError(f"server error: {message}")
                    if message.get("type") == kind and all(
                        message.get(k) == v for k, v in match.items()
                    ):
                        return self.inbox.pop(i)
                if self._reader.done():
                    raise ConnectionError("signalling socket closed")
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(_wait(), wait_s)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()


@dataclass
class Session:
    index: int
    therapist: LoadPeer
    client: LoadPeer
    sockets: list[Socket]
    # The base URLs each participant's socket went to (a cluster's nodes: ``--entry-urls``).
    entries: tuple[str, str] = ("", "")


async def start_session(
    api: Api, clip: Clip, index: int, entries: tuple[str, str] | None = None
) -> Session:
    """Create a session and bring both participants into the call, as the web client does.

    ``entries``: the therapist's and the client's node, when they are not ``api``'s (a
    cluster bench sends them through different nodes, so one socket is relayed)."""
    therapist_url, client_url = entries or (api.base, api.base)
    created = await api.post("/api/sessions", {"client_label": f"bench {index}"})
    session_id, invite = created["id"], created["invite_url"].rsplit("/join/", 1)[1]
    login = f"rapport_login={api.cookies['rapport_login']}"
    therapist_ws = await Socket.open(f"{ws_base(therapist_url)}/ws/sessions/{session_id}", login)
    sockets = [therapist_ws]
    therapist = LoadPeer(f"t{index}", clip)
    client = LoadPeer(f"c{index}", clip)
    try:
        await therapist_ws.expect("welcome")
        await therapist_ws.send({"type": "join"})
        await therapist_ws.expect("joined")
        client_ws = await Socket.open(
            f"{ws_base(client_url)}/ws/join/{invite}",
            f"rapport_client={secrets.token_urlsafe(24)}",
        )
        sockets.append(client_ws)
        await client_ws.expect("welcome")
        await client_ws.send({"type": "join", "display_name": f"Bench {index}"})
        while True:
            lobby = await therapist_ws.expect("lobby")
            if lobby["waiting"]:
                break
        await therapist_ws.send(
            {"type": "admit", "participant_id": lobby["waiting"][0]["participant_id"]}
        )
        await client_ws.expect("admitted")
        for peer, ws in ((therapist, therapist_ws), (client, client_ws)):
            await ws.send({"type": "offer", "sdp": await peer.offer()})
            await peer.accept((await ws.expect("answer"))["sdp"])
        await _connected(therapist, client)
    except BaseException:
        for peer in (therapist, client):
            await peer.close()
        for ws in sockets:
            await ws.close()
        raise
    return Session(index, therapist, client, sockets, (therapist_url, client_url))


async def _connected(*peers: LoadPeer, wait_s: float = 30.0) -> None:
    async def _wait() -> None:
        while any(p.pc.connectionState != "connected" for p in peers):
            if any(p.pc.connectionState in ("failed", "closed") for p in peers):
                raise ConnectionError("peer connection failed")
            await asyncio.sleep(0.05)

    await asyncio.wait_for(_wait(), wait_s)


async def start_direct(clip: Clip) -> tuple[LoadPeer, LoadPeer]:
    """Two peers connected to each other, no server: the latency baseline."""
    a, b = LoadPeer("direct-a", clip), LoadPeer("direct-b", clip)
    await a.accept(await b.answer(await a.offer()))
    await _connected(a, b)
    return a, b


# ---------------------------------------------------------------------------- process
def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _read_command() -> dict[str, Any] | None:
    line = await asyncio.to_thread(sys.stdin.readline)
    return json.loads(line) if line.strip() else None


def _summarise(results: list[StreamResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("audio", "video"):
        mine = [r for r in results if r.kind == kind]
        out[kind] = {
            "latencies_ms": [round(x, 3) for r in mine for x in r.latencies_ms],
            "sent": sum(r.sent for r in mine),
            "received": sum(r.received for r in mine),
            "streams": len(mine),
            "streams_unmatched": sum(1 for r in mine if not r.offset_found),
        }
    return out


async def run(args: argparse.Namespace) -> int:
    restrict_host_addresses(["127.0.0.1"])
    speed.install()  # media runs in this process: the same aiortc as the server's workers
    clip = load_or_make_clip(Path(args.clip) if args.clip else None)
    api = Api(args.url)
    await api.post(
        "/api/login", {"email": args.email, "password": sys.stdin.readline().rstrip("\n")}
    )
    sessions: list[Session] = []
    failed = 0
    direct: tuple[LoadPeer, LoadPeer] | None = None
    try:
        if args.direct:
            direct = await start_direct(clip)
        nodes = [u.rstrip("/") for u in (args.entry_urls or args.url).split(",") if u.strip()]
        for i in range(args.sessions):
            index = args.first_index + i
            # Round-robin: the therapist through node k, the client through node k + 1.
            entries = (nodes[index % len(nodes)], nodes[(index + 1) % len(nodes)])
            try:
                sessions.append(await start_session(api, clip, index, entries))
            except Exception as exc:
                failed += 1
                log.warning("session %d failed to start: %r", index, exc)
            await asyncio.sleep(args.stagger)
        _emit({"event": "ready", "sessions": len(sessions), "failed": failed})
        command = await _read_command()
        if command is None or command.get("cmd") != "measure":
            return 0
        start, until = float(command["from"]), float(command["until"])
        peers = [p for s in sessions for p in (s.therapist, s.client)]
        if direct:
            peers += list(direct)
        for peer in peers:
            peer.record(start - 1.0, until + 1.0)
        await asyncio.sleep(max(0.0, until + 1.0 - time.monotonic()))
        window = (start, until - 0.5)
        levels = clip_levels(clip.audio)
        relay: list[StreamResult] = []
        directions: dict[str, list[StreamResult]] = {
            "therapist->client": [],
            "client->therapist": [],
        }
        for s in sessions:
            to_client = pair_results(s.therapist, s.client, window, levels)
            to_therapist = pair_results(s.client, s.therapist, window, levels)
            directions["therapist->client"] += to_client
            directions["client->therapist"] += to_therapist
            relay += to_client + to_therapist
        baseline: list[StreamResult] = []
        if direct:
            baseline += pair_results(direct[0], direct[1], window, levels)
            baseline += pair_results(direct[1], direct[0], window, levels)
        _emit(
            {
                "event": "result",
                "sessions": len(sessions),
                "failed": failed,
                "relay": _summarise(relay),
                "direct": _summarise(baseline) if direct else None,
                "keyframe_requests": sum(p.tracks["video"].keyframe_requests for p in peers),
                # Frames sent and received per direction and kind (no latency samples).
                "directions": {
                    name: {
                        kind: {
                            "sent": sum(r.sent for r in part if r.kind == kind),
                            "received": sum(r.received for r in part if r.kind == kind),
                        }
                        for kind in ("audio", "video")
                    }
                    for name, part in directions.items()
                },
                "entries": [
                    {"index": s.index, "therapist": s.entries[0], "client": s.entries[1]}
                    for s in sessions
                ],
            }
        )
        return 0
    finally:
        for s in sessions:
            for ws in s.sockets:
                await ws.close()
            await s.therapist.close()
            await s.client.close()
        if direct:
            for peer in direct:
                await peer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True, help="Rapport base URL (127.0.0.1 only)")
    parser.add_argument("--email", required=True, help="therapist account; password on stdin")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--stagger", type=float, default=0.25, help="seconds between set-ups")
    parser.add_argument("--clip", help="pre-encoded clip cache file")
    parser.add_argument("--direct", action="store_true", help="also run the direct baseline pair")
    parser.add_argument(
        "--entry-urls",
        help="comma-separated node base URLs the participants' sockets go to, round-robin "
        "(session k: therapist via node k, client via node k+1); default --url",
    )
    args = parser.parse_args(argv)
    for url in [args.url, *(args.entry_urls or "").split(",")]:
        if url.strip() and urlsplit(url.strip()).hostname not in ("127.0.0.1", "localhost"):
            parser.error("the load generator only targets servers on this machine")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop

        return uvloop.run(run(args))
    except ImportError:
        return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
