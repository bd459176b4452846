"""Encoded-frame forwarding hooked into aiortc's internals (exactly aiortc 1.16.0).

Why this module exists: aiortc's ``RTCRtpReceiver`` always decodes. It reassembles RTP into
frames in a ``JitterBuffer`` (audio with a 4-frame prefetch, i.e. +80 ms) and decodes them on a
thread, so a relay built on its public API decodes and re-encodes every video frame (about a
third of a core per 640×480 stream). Its ``RTCRtpSender`` already packetises ``av.Packet``\\ s
without encoding; only the receiving side lacks a way to hand over encoded frames.

Every functional touch of aiortc internals is here, and each is small (the speed patches are
in ``media.aiortc_compat.speed``; the byte-level VP8/RTP work in ``media.relay.frames``):

* ``RTCRtpReceiver._RTCRtpReceiver__jitter_buffer`` is swapped for a ``FrameAssembler`` with
  the same ``add(packet) -> (pli_flag, frame)`` contract. aiortc keeps doing everything
  around it (SRTP, RTX unwrapping, NACKs, receiver reports, its bitrate estimator, and the
  VP8 depayload into ``packet._data``); the assembler completes each frame on its last packet
  (RTP marker bit, no prefetch), hands it to a callback and returns ``None`` so aiortc's
  decoder thread stays idle. Swapping the original buffer back restores aiortc's decode path
  (the transcoding fallback).
* ``RTCRtpReceiver._RTCRtpReceiver__remote_bitrate_estimator`` (aiortc's delay-based
  bandwidth estimator) is fed once per video frame instead of once per packet, which saves
  CPU without changing its groups (a frame's packets leave the sender together); the
  forwarder then sends the REMB itself, as min(own estimate, the viewer's estimate).
  ``_send_rtcp`` and ``_send_rtcp_pli`` send that REMB and (throttled) keyframe requests.
* ``RTCRtpSender._send_keyframe`` (called on a viewer's PLI or FIR) and
  ``RTCRtpSender._handle_rtcp_packet`` (REMB) are wrapped to observe the viewer's feedback.
* ``RTCRtpSender._RTCRtpSender__encoder`` is filled with a ``_ForwardingEncoder`` that sends
  forwarded RTP payloads as they are.
* ``RTCRtpTransceiver._codecs`` tells which codecs were negotiated.

Importing this module runs ``media.aiortc_compat.guard.require()``, which raises
``ForwardingUnavailable`` (an ``ImportError``) naming what changed, so an aiortc upgrade fails
loudly instead of silently decoding again (or silently sending nothing). Only code that
forwards imports it. tests/test_forward.py checks the behaviour end to end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import get_encoder, is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from av.frame import Frame

from media.relay.frames import (
    EncodedFrame,
    ForwardedPayloads,
    FrameSink,
    PictureIdRenumberer,
    Unwrapper,
    seq_after,
    vp8_frame_start,
    vp8_keyframe_payload,
    vp8_keyframe_start,
)

from .guard import ForwardingUnavailable, require
from .pin import AIORTC_VERSION
from .speed import speed_up_estimator

require()  # before anything below can be installed into an aiortc it was not written for

log = logging.getLogger("rapport.media.aiortc_compat")

KEYFRAME_INTERVAL_S = 0.5  # at most one keyframe request to a sender per interval
GAP_TIMEOUT_S = 0.15  # how long a missing packet may hold up later frames (NACK/RTX time)
MAX_BUFFERED_PACKETS = 400  # a video frame of a 640×480 keyframe is ~40 packets
MAX_LATE_IN_A_ROW = 100  # this many "old" packets in a row means the sender jumped ahead
REMB_MIN_INTERVAL_S = 0.25


# ---------------------------------------------------------------------------- frames
class FrameAssembler:
    """Stands in for aiortc's JitterBuffer: RTP packets in, complete frames out, no prefetch.

    Audio: every Opus packet is a frame and is delivered at once; late packets are dropped.
    Video (VP8): a frame is delivered when every packet from its first (descriptor S bit)
    to its last (marker bit) is present. A missing packet holds later frames back for at
    most ``GAP_TIMEOUT_S`` so aiortc's NACK can fetch it; after that the assembler skips
    ahead to the next keyframe and asks for one, because a decoder fed frames with a hole
    in the reference chain shows corrupted video until the next keyframe anyway.
    """

    def __init__(
        self,
        kind: str,
        codec_for: Callable[[int], RTCRtpCodecParameters | None],
        deliver: FrameSink,
        need_keyframe: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        on_marker: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self._codec_for = codec_for
        self._clock = clock
        self._on_marker = on_marker
        self._deliver = deliver
        self._need_keyframe = need_keyframe
        self._packets: dict[int, RtpPacket] = {}
        # Sequence numbers in ``_packets`` that start a keyframe, kept as packets come and go
        # so that skipping to a keyframe does not re-parse every buffered packet: under loss
        # the buffer holds hundreds and a skip can follow every arrival.
        self._key_starts: set[int] = set()
        self._next: int | None = None  # sequence number of the next frame's first packet
        self._stuck_since: float | None = None
        self._unwrap = Unwrapper()
        self.ssrc: int | None = None
        self.epoch = 0
        self.frames = 0
        self.keyframes = 0
        self.frames_skipped = 0
        self.packets_late = 0
        self._late_in_a_row = 0
        self.last_keyframe_at = 0.0

    # aiortc's receiver calls this for every depayloaded RTP packet.
    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        try:
            if packet.ssrc != self.ssrc or self._late_in_a_row > MAX_LATE_IN_A_ROW:
                self._restart(packet.ssrc)
            if self.kind == "audio":
                self._add_audio(packet)
            else:
                self._add_video(packet)
                if packet.marker and self._on_marker is not None:
                    self._on_marker()
        except Exception:  # never let a malformed packet stop aiortc's receive loop
            log.exception("frame assembly failed")
        return False, None

    @property
    def capacity(self) -> int:
        return MAX_BUFFERED_PACKETS

    def _restart(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.epoch += 1
        self._packets.clear()
        self._key_starts.clear()
        self._next = None
        self._stuck_since = None
        self._late_in_a_row = 0
        self._unwrap = Unwrapper()

    def _late(self) -> None:
        self.packets_late += 1
        self._late_in_a_row += 1

    def _codec(self, packet: RtpPacket) -> RTCRtpCodecParameters | None:
        return self._codec_for(packet.payload_type)

    def _add_audio(self, packet: RtpPacket) -> None:
        seq = packet.sequence_number
        if self._next is not None and not (seq == self._next or seq_after(seq, self._next)):
            self._late()
            return
        self._late_in_a_row = 0
        self._next = (seq + 1) & 0xFFFF
        codec = self._codec(packet)
        data: bytes = getattr(packet, "_data", b"") or packet.payload  # Opus: the same bytes
        if codec is None or not data:
            return
        self.frames += 1
        self._deliver(
            EncodedFrame(
                "audio",
                codec.mimeType.lower(),
                data,
                self._unwrap(packet.timestamp),
                codec.clockRate,
                True,
                self._clock(),
                self.epoch,
                (data,),
            )
        )

    def _add_video(self, packet: RtpPacket) -> None:
        seq = packet.sequence_number
        key_start = vp8_keyframe_start(packet.payload)
        if self._next is None:
            if not key_start:
                self._store(seq, packet, key_start)  # may complete an earlier keyframe
                self._trim_unsynced()
                self._need_keyframe()
                return
            self._next = seq
            self._keep_from(seq)
        elif not (seq == self._next or seq_after(seq, self._next)):
            self._late()  # a retransmission we no longer need, or a duplicate
            return
        self._late_in_a_row = 0
        self._store(seq, packet, key_start)
        self._drain()
        if self._packets and self._next is not None:
            now = self._clock()
            if self._stuck_since is None:
                self._stuck_since = now
            elif (
                now - self._stuck_since > GAP_TIMEOUT_S or len(self._packets) > MAX_BUFFERED_PACKETS
            ):
                self._skip_to_keyframe()

    def _store(self, seq: int, packet: RtpPacket, key_start: bool) -> None:
        self._packets[seq] = packet
        if key_start:
            self._key_starts.add(seq)
        else:
            self._key_starts.discard(seq)  # a different payload under a seen number

    def _forget(self, seq: int) -> None:
        del self._packets[seq]
        self._key_starts.discard(seq)

    def _keep_from(self, seq: int) -> None:
        """Drop every buffered packet before ``seq``."""
        self._packets = {s: p for s, p in self._packets.items() if not seq_after(seq, s)}
        self._key_starts = {s for s in self._key_starts if s in self._packets}

    def _trim_unsynced(self) -> None:
        if len(self._packets) > MAX_BUFFERED_PACKETS:
            self._packets.clear()
            self._key_starts.clear()

    def _drain(self) -> None:
        """Deliver every complete frame at the head of the buffer."""
        while self._next is not None:
            seq = self._next
            first = self._packets.get(seq)
            if first is None:
                return
            if not first.payload:  # padding-only packet between frames
                self._forget(seq)
                self._next = (seq + 1) & 0xFFFF
                continue
            if not vp8_frame_start(first.payload):
                self._skip_to_keyframe()  # lost the start of this frame
                return
            parts: list[RtpPacket] = []
            while True:
                packet = self._packets.get(seq)
                if packet is None:
                    return  # incomplete: wait for a retransmission
                if parts and packet.timestamp != first.timestamp:
                    break  # a sender that does not set the marker bit: the frame ended
                parts.append(packet)
                seq = (seq + 1) & 0xFFFF
                if packet.marker:
                    break
                if len(parts) > MAX_BUFFERED_PACKETS:
                    self._skip_to_keyframe()
                    return
            for packet in parts:
                self._forget(packet.sequence_number)
            self._next = seq
            self._stuck_since = None
            self._emit(parts)

    def _emit(self, parts: list[RtpPacket]) -> None:
        first = parts[0]
        codec = self._codec(first)
        if codec is None:
            return
        payloads = tuple([p.payload for p in parts])
        keyframe = vp8_keyframe_payload(first.payload)
        now = self._clock()
        self.frames += 1
        if keyframe:
            self.keyframes += 1
            self.last_keyframe_at = now
        self._deliver(
            EncodedFrame(
                "video",
                codec.mimeType.lower(),
                None,
                self._unwrap(first.timestamp),
                codec.clockRate,
                keyframe,
                now,
                self.epoch,
                payloads,
            )
        )

    def _skip_to_keyframe(self) -> None:
        """Give up on the frame at the head; resume at the next buffered keyframe start.

        The head itself is never that start: a keyframe at the head that cannot complete
        (its lost packet never came back) would otherwise be chosen again on every skip,
        holding the stream and growing the buffer for as long as the call lasts.
        """
        self.frames_skipped += 1
        self._stuck_since = None
        head = self._next
        starts = sorted(
            (s for s in self._key_starts if s != head),
            key=lambda s: (s - (s if head is None else head)) & 0xFFFF,
        )
        if starts:
            self._next = starts[0]
            self._keep_from(starts[0])
            self._drain()
        else:
            self._next = None
            self._packets.clear()
            self._key_starts.clear()
            self._need_keyframe()


# ---------------------------------------------------------------------------- receiver
class _PerFrameEstimator:
    """Stands in for aiortc's RemoteBitrateEstimator: aiortc feeds it every packet, it
    passes one sample per frame on (the frame's last packet's times, the frame's size).

    aiortc's estimator groups packets sent within 5 ms and compares group to group. A
    sender that bursts each frame (aiortc, most encoders at these rates) makes one group
    per frame, so per-frame samples give the same delay trend for a quarter of the CPU; a
    pacing sender gets coarser, per-frame groups, still a sound delay gradient. It returns
    ``None`` to aiortc, so aiortc never sends REMB on its own while forwarding:
    ``frame_done`` hands the estimate to the forwarder, which caps it by the viewer's.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self._last: tuple[int, int, int] | None = None
        self._size = 0
        speed_up_estimator(real)

    def add(
        self, arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int
    ) -> tuple[int, list[int]] | None:
        self._last = (arrival_time_ms, abs_send_time, ssrc)
        self._size += payload_size
        return None

    def frame_done(self) -> tuple[int, list[int]] | None:
        if self._last is None:
            return None
        arrival, send_time, ssrc = self._last
        size, self._last, self._size = self._size, None, 0
        result: tuple[int, list[int]] | None = self.real.add(
            arrival_time_ms=arrival, abs_send_time=send_time, payload_size=size, ssrc=ssrc
        )
        return result


class ForwardingReceiver:
    """Makes one aiortc ``RTCRtpReceiver`` hand over encoded frames instead of decoding.

    ``enable()``/``disable()`` switch between forwarding and aiortc's own decode path at
    any time (the relay falls back to transcoding when codecs do not match). The receiver
    also sends the sending browser keyframe requests (throttled to one per
    ``KEYFRAME_INTERVAL_S``, with one trailing request so none is lost) and REMB.
    """

    def __init__(
        self,
        transceiver: RTCRtpTransceiver,
        on_frame: FrameSink,
        *,
        keyframe_interval: float = KEYFRAME_INTERVAL_S,
    ) -> None:
        receiver = transceiver.receiver
        self.kind = transceiver.kind
        self._receiver = receiver
        self._keyframe_interval = keyframe_interval
        self._transceiver = transceiver
        self._codecs: dict[int, RTCRtpCodecParameters] = {}
        self.assembler = FrameAssembler(
            self.kind,
            self._codec_for,
            on_frame,
            lambda: self.request_keyframe("resync"),
            on_marker=self._frame_sent if self.kind == "video" else None,
        )
        self._original_buffer: JitterBuffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        self._original_estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        self._estimator = (
            _PerFrameEstimator(self._original_estimator)
            if self._original_estimator is not None
            else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_pli = -1e9
        self._pending_pli: asyncio.TimerHandle | None = None
        self._downstream_bps: int | None = None
        self._own_bps: int | None = None
        self._last_remb: tuple[float, int] | None = None
        self.enabled = False
        self.keyframe_requests = 0
        self.plis_sent = 0
        self.rembs_sent: list[int] = []
        self.closed = False

    def _codec_for(self, payload_type: int) -> RTCRtpCodecParameters | None:
        codec = self._codecs.get(payload_type)
        if codec is None:  # negotiation may have completed after we were installed
            self._codecs = {
                c.payloadType: c
                for c in self._transceiver._codecs
                if not is_rtx(c) and c.payloadType is not None
            }
            codec = self._codecs.get(payload_type)
        return codec

    # -- mode
    def enable(self) -> None:
        if self.enabled or self.closed:
            return
        if self.assembler.ssrc is not None:  # forwarded before: start clean at a keyframe
            self.assembler._restart(self.assembler.ssrc)
            self.request_keyframe("forwarding resumed")
        self._receiver._RTCRtpReceiver__jitter_buffer = self.assembler  # type: ignore[attr-defined]
        if self._estimator is not None:
            self._receiver._RTCRtpReceiver__remote_bitrate_estimator = self._estimator  # type: ignore[attr-defined]
        self.enabled = True

    def disable(self) -> None:
        """Give the packets back to aiortc's jitter buffer and decoder (transcoding)."""
        if not self.enabled:
            return
        original = self._original_buffer
        fresh = JitterBuffer(
            capacity=original._capacity, prefetch=original._prefetch, is_video=original._is_video
        )
        self._receiver._RTCRtpReceiver__jitter_buffer = fresh  # type: ignore[attr-defined]
        self._receiver._RTCRtpReceiver__remote_bitrate_estimator = self._original_estimator  # type: ignore[attr-defined]
        self.enabled = False
        if self.kind == "video":
            self.request_keyframe("decoder start")  # the decoder cannot start mid-GOP

    # -- keyframes
    def request_keyframe(self, reason: str = "") -> None:
        """Ask the sender for a keyframe, at most once per interval (the rest coalesce)."""
        if self.kind != "video" or self.closed:
            return
        self.keyframe_requests += 1
        if self._pending_pli is not None:
            return
        now = time.monotonic()
        wait = self._last_pli + self._keyframe_interval - now
        if wait <= 0:
            self._send_pli(reason)
            return
        asked_at = now
        loop = asyncio.get_running_loop()

        def _trailing() -> None:
            self._pending_pli = None
            # A keyframe that arrived after the request already answered it.
            if self.assembler.last_keyframe_at < asked_at:
                self._send_pli(reason + " (deferred)")

        self._pending_pli = loop.call_later(wait, _trailing)

    def _send_pli(self, reason: str) -> None:
        ssrc = self.assembler.ssrc
        if ssrc is None or self.closed:
            return  # nothing received yet: the sender's first frame is a keyframe anyway
        self._last_pli = time.monotonic()
        self.plis_sent += 1
        log.debug("PLI to ssrc %d (%s)", ssrc, reason)
        self._spawn(self._receiver._send_rtcp_pli(ssrc))

    # -- bandwidth
    def _frame_sent(self) -> None:
        """The last packet of a video frame arrived: one estimator sample, maybe a REMB."""
        if self._estimator is None or not self.enabled:
            return
        estimate = self._estimator.frame_done()
        if estimate is not None:
            self._own_bps = estimate[0]
            self._remb(force=True)

    def set_downstream_bitrate(self, bps: int | None) -> None:
        """The viewer's REMB: the sender must not send more than the viewer can take."""
        self._downstream_bps = bps
        if bps is not None and self.kind == "video":
            self._remb(force=False)

    def _remb(self, force: bool) -> None:
        """REMB to the sender: min(own estimate, viewer's estimate), whichever are known."""
        known = [b for b in (self._own_bps, self._downstream_bps) if b is not None]
        if not known or self.closed:
            return
        target = min(known)
        if not force and self._last_remb is not None:
            at, sent = self._last_remb
            if time.monotonic() - at < REMB_MIN_INTERVAL_S and target >= sent * 0.9:
                return  # no news worth a packet: not lower, and one went out just now
        self._spawn(self._send_remb(target))

    async def _send_remb(self, bps: int) -> None:
        rtcp_ssrc = self._receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        media_ssrc = self.assembler.ssrc
        if rtcp_ssrc is None or media_ssrc is None:
            return
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bps, [media_ssrc])
        )
        self._last_remb = (time.monotonic(), bps)
        self.rembs_sent.append(bps)
        del self.rembs_sent[:-20]
        await self._receiver._send_rtcp(packet)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        self.closed = True
        if self._pending_pli is not None:
            self._pending_pli.cancel()
            self._pending_pli = None
        for task in self._tasks:
            task.cancel()


# ---------------------------------------------------------------------------- sender
def watch_sender(
    sender: RTCRtpSender,
    on_keyframe_request: Callable[[], None],
    on_remb: Callable[[int], None] | None = None,
) -> None:
    """Report a viewer's PLI/FIR and REMB sent to one of our senders.

    aiortc's handling stays in place (in transcoding it makes its encoder send a keyframe);
    the callbacks let the relay pass the feedback on to the participant who is the source.
    """
    original_keyframe = sender._send_keyframe
    original_rtcp = sender._handle_rtcp_packet

    def _send_keyframe() -> None:
        original_keyframe()
        try:
            on_keyframe_request()
        except Exception:
            log.exception("keyframe request handler failed")

    async def _handle_rtcp_packet(packet: Any) -> None:
        await original_rtcp(packet)
        if on_remb is not None and isinstance(packet, RtcpPsfbPacket):
            if packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    return
                if sender._ssrc in ssrcs:
                    on_remb(bitrate)

    sender._send_keyframe = _send_keyframe  # type: ignore[method-assign]
    sender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]


class _ForwardingEncoder:
    """Sits in an aiortc ``RTCRtpSender``'s encoder slot.

    ``ForwardedPayloads`` go out as they arrived, one RTP packet per payload: no
    depayloading, reassembling and re-packetising of each frame. VP8 picture ids are
    renumbered (``media.relay.frames.PictureIdRenumberer``) so that the outbound stream
    counts on across a change of source, as the ids aiortc's own packetiser gave it did.
    Anything else (decoded frames when the relay transcodes, ``av.Packet``\\ s) goes to
    aiortc's own encoder for the codec, created on first use, as it would have been without
    this.
    """

    def __init__(self, transceiver: RTCRtpTransceiver) -> None:
        self._transceiver = transceiver
        self._real: Any = None
        self._renumber = PictureIdRenumberer()
        self.forwarded = 0

    def _encoder(self) -> Any:
        if self._real is None:
            codec = negotiated_codec(self._transceiver)
            if codec is None:
                raise RuntimeError("nothing negotiated to encode with")
            self._real = get_encoder(codec)
        return self._real

    def pack(self, item: Any) -> tuple[list[bytes], int]:
        if isinstance(item, ForwardedPayloads):
            self.forwarded += 1
            payloads = item.payloads
            if payloads and self._transceiver.kind == "video":
                payloads = self._renumber(item)
            return list(payloads), item.timestamp
        result: tuple[list[bytes], int] = self._encoder().pack(item)
        return result

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        result: tuple[list[bytes], int] = self._encoder().encode(frame, force_keyframe)
        return result

    @property
    def target_bitrate(self) -> int:
        return int(self._encoder().target_bitrate)  # AttributeError for Opus, as aiortc's

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        encoder = self._encoder()
        if hasattr(encoder, "target_bitrate"):
            encoder.target_bitrate = bitrate


def forwarded_frames(sender: RTCRtpSender) -> int:
    """How many frames ``sender`` sent as forwarded payloads (0 unless ``send_forwarded``)."""
    encoder = sender._RTCRtpSender__encoder  # type: ignore[attr-defined]
    return encoder.forwarded if isinstance(encoder, _ForwardingEncoder) else 0


def send_forwarded(sender: RTCRtpSender, transceiver: RTCRtpTransceiver) -> None:
    """Let ``sender`` take ``ForwardedPayloads`` from its track (and everything else too).

    Call it before the sender starts (i.e. before the local description is applied).
    """
    current = sender._RTCRtpSender__encoder  # type: ignore[attr-defined]
    if isinstance(current, _ForwardingEncoder):
        return
    encoder = _ForwardingEncoder(transceiver)
    encoder._real = current
    sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- helpers
def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec a transceiver sends with (and expects), once negotiated."""
    return next((c for c in transceiver._codecs if not is_rtx(c)), None)


def negotiated_mime(transceiver: RTCRtpTransceiver) -> str | None:
    codec = negotiated_codec(transceiver)
    return codec.mimeType.lower() if codec is not None else None


__all__ = [
    "AIORTC_VERSION",
    "KEYFRAME_INTERVAL_S",
    "ForwardingReceiver",
    "ForwardingUnavailable",
    "FrameAssembler",
    "forwarded_frames",
    "negotiated_codec",
    "negotiated_mime",
    "send_forwarded",
    "watch_sender",
]
