"""Encoded frames as the relay passes them on, and the VP8/RTP byte work that needs no aiortc.

Kept apart from ``media.aiortc_compat`` (the only code that touches aiortc's private
internals) so that the transcoding relay, the outbound tracks and the audio tap can import
what they share with forwarding without loading, or depending on, those internals: a
mismatched aiortc then stops forwarding only, never a transcoding call. Everything here works
on bytes and integers (RFC 3550 sequence/timestamp arithmetic, RFC 7741 VP8 payload
descriptors); the only aiortc names used are public ones (the VP8 depayloader and decoders).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiortc.codecs import get_decoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame

# Codecs whose frames the relay forwards as they are (mime types, lower case).
FORWARDABLE = frozenset({"video/vp8", "audio/opus"})


class EncodedFrame:
    """One complete encoded frame as it arrived, ready to be sent on.

    ``payloads`` are the frame's RTP payloads exactly as they arrived (for VP8 each still
    starts with its payload descriptor; for Opus the one payload is the frame): the relay
    sends them on as they are, rewriting only RTP headers. ``data`` is the bare bitstream
    (VP8 descriptors stripped), computed on first use since forwarding never needs it.
    """

    __slots__ = (
        "_data",
        "arrival",
        "clock_rate",
        "epoch",
        "keyframe",
        "kind",
        "mime",
        "payloads",
        "timestamp",
    )

    def __init__(
        self,
        kind: str,  # "audio" | "video"
        mime: str,  # lower-case mime type, e.g. "video/vp8"
        data: bytes | None,
        timestamp: int,  # RTP timestamp, unwrapped (keeps growing across 32-bit wraps)
        clock_rate: int,
        keyframe: bool,  # always True for audio
        arrival: float,  # time.monotonic() when the frame became complete
        epoch: int,  # changes when the stream restarts (new SSRC): timestamps are unrelated
        payloads: tuple[bytes, ...] | None = None,
    ) -> None:
        if data is None and payloads is None:
            raise ValueError("an encoded frame needs data or payloads")
        self.kind = kind
        self.mime = mime
        self._data = data
        self.timestamp = timestamp
        self.clock_rate = clock_rate
        self.keyframe = keyframe
        self.arrival = arrival
        self.epoch = epoch
        self.payloads = payloads

    @property
    def data(self) -> bytes:
        if self._data is None:
            payloads = self.payloads or ()
            if self.mime == "video/vp8":
                self._data = b"".join(vp8_depayload(p) for p in payloads)
            else:
                self._data = b"".join(payloads)
        return self._data

    def __repr__(self) -> str:
        return (
            f"EncodedFrame({self.kind}, {self.mime}, ts={self.timestamp}, "
            f"keyframe={self.keyframe}, epoch={self.epoch})"
        )


FrameSink = Callable[[EncodedFrame], None]


class ForwardedPayloads:
    """An encoded frame on its way out: RTP payloads to send as they are, at ``timestamp``.

    ``OutboundTrack.recv`` returns this instead of an ``av.Packet`` to a sender prepared by
    ``media.aiortc_compat.forwarding.send_forwarded``; aiortc's sender then only puts RTP
    headers on the payloads.
    """

    __slots__ = ("payloads", "source", "timestamp")

    def __init__(self, payloads: Sequence[bytes], timestamp: int, source: object) -> None:
        self.payloads = payloads
        self.timestamp = timestamp  # RTP time on the outbound track's own timeline
        self.source = source  # who sent it: picture ids restart when it changes


# ---------------------------------------------------------------------------- RTP numbers
def seq_after(a: int, b: int) -> bool:
    """``a`` is later than ``b`` in 16-bit sequence space."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class Unwrapper:
    """Extends 32-bit RTP timestamps to a monotonic-ish int (wraps every ~13 h at 90 kHz)."""

    def __init__(self) -> None:
        self._raw: int | None = None
        self._ext = 0

    def __call__(self, ts: int) -> int:
        if self._raw is None:
            self._ext = ts
        else:
            diff = (ts - self._raw) & 0xFFFFFFFF
            if diff >= 0x80000000:
                diff -= 0x100000000
            self._ext += diff
        self._raw = ts
        return self._ext


# ---------------------------------------------------------------------------- VP8
def vp8_frame_start(payload: bytes) -> bool:
    """First packet of a VP8 frame: descriptor S bit set and partition id 0 (RFC 7741)."""
    return bool(payload) and (payload[0] & 0x1F) == 0x10


def vp8_descriptor_size(payload: bytes) -> int:
    """Length of the VP8 payload descriptor at the start of an RTP payload (RFC 7741 4.2)."""
    if not payload[0] & 0x80:
        return 1
    if len(payload) < 2:
        return len(payload)
    ext = payload[1]
    size = 2
    if ext & 0x80:  # I: picture id, 7 or 15 bits
        size += 2 if len(payload) > 2 and payload[2] & 0x80 else 1
    if ext & 0x40:  # L: TL0PICIDX
        size += 1
    if ext & 0x30:  # T and/or K: one byte
        size += 1
    return size


def vp8_keyframe_payload(payload: bytes) -> bool:
    """A frame's first RTP payload carries a keyframe: its VP8 P bit is 0 (RFC 6386 9.1)."""
    if not payload:
        return False
    size = vp8_descriptor_size(payload)
    return len(payload) > size and (payload[size] & 0x01) == 0


def vp8_keyframe_start(payload: bytes) -> bool:
    return vp8_frame_start(payload) and vp8_keyframe_payload(payload)


def vp8_picture_id(payload: bytes) -> tuple[int, bool] | None:
    """(picture id, 15-bit?) from a VP8 payload descriptor, None when it carries none."""
    if len(payload) < 3 or not payload[0] & 0x80 or not payload[1] & 0x80:
        return None
    if payload[2] & 0x80:
        if len(payload) < 4:
            return None
        return ((payload[2] & 0x7F) << 8) | payload[3], True
    return payload[2], False


def with_picture_id(payload: bytes, picture_id: int) -> bytes:
    """``payload`` with its descriptor's picture id replaced (same width), else unchanged."""
    found = vp8_picture_id(payload)
    if found is None:
        return payload
    if found[1]:
        return (
            payload[:2] + bytes((0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF)) + payload[4:]
        )
    return payload[:2] + bytes((picture_id & 0x7F,)) + payload[3:]


def packetize_vp8(data: bytes, picture_id: int, max_payload: int = 1300) -> list[bytes]:
    """A VP8 frame as RTP payloads: each behind a payload descriptor carrying a 15-bit
    picture id, S bit on the first (RFC 7741), at most ``max_payload`` bytes each (what
    aiortc's packetiser makes)."""
    pid = bytes((0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF))
    first, rest = b"\x90\x80" + pid, b"\x80\x80" + pid
    size = max_payload - len(first)
    return [(rest if pos else first) + data[pos : pos + size] for pos in range(0, len(data), size)]


class PictureIdRenumberer:
    """Keeps an outbound VP8 stream's picture ids counting on across a change of source.

    A viewer's decoder (and a browser's loss detection) reads a jump in picture ids as lost
    frames, and each source numbers from wherever it likes; so when the source changes (a
    reconnect, a switch between participants' streams) the ids are shifted to continue from
    the last one sent. Payloads whose id already fits go out as the same objects.
    """

    def __init__(self) -> None:
        self._source: object = None
        self._offset = 0
        self._last: int | None = None

    def __call__(self, item: ForwardedPayloads) -> Sequence[bytes]:
        found = vp8_picture_id(item.payloads[0])
        if found is None:
            return item.payloads
        picture_id, wide = found
        mask = 0x7FFF if wide else 0x7F
        if item.source != self._source or self._last is None:
            self._source = item.source
            last = self._last
            self._offset = 0 if last is None else (last + 1 - picture_id) & mask
        out = (picture_id + self._offset) & mask
        self._last = out
        if out == picture_id:
            return item.payloads
        return [with_picture_id(p, out) for p in item.payloads]


# ---------------------------------------------------------------------------- decoding
class FrameDecoder:
    """aiortc's own decoder for a codec, fed ``EncodedFrame``\\ s.

    Using aiortc's decoder (not a hand-configured PyAV one) keeps decoded frames exactly
    what the decode path yields: Opus comes out as 48 kHz s16 stereo frames of 960 samples.
    """

    def __init__(self, mime: str, clock_rate: int) -> None:
        kind = mime.split("/")[0]
        self._decoder = get_decoder(
            RTCRtpCodecParameters(
                mimeType=mime, clockRate=clock_rate, channels=2 if kind == "audio" else None
            )
        )

    def decode(self, frame: EncodedFrame) -> list[Frame]:
        return self._decoder.decode(JitterFrame(frame.data, frame.timestamp))


__all__ = [
    "FORWARDABLE",
    "EncodedFrame",
    "ForwardedPayloads",
    "FrameDecoder",
    "FrameSink",
    "PictureIdRenumberer",
    "Unwrapper",
    "packetize_vp8",
    "seq_after",
    "vp8_descriptor_size",
    "vp8_frame_start",
    "vp8_keyframe_payload",
    "vp8_keyframe_start",
    "vp8_picture_id",
    "with_picture_id",
]
