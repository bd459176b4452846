"""The forwarding relay: encoded frames through media.relay.call.Call, loopback peers, no browser.

FakeBrowser peers (tests/media_helpers.py) encode and decode like a browser does, so a picture
or a tone arriving at the far end proves the forwarded bitstream decodes. LoadPeer peers
(server/bench/loadgen.py) send pre-encoded frames and never decode video, so any VP8 codec call seen
in the process while they talk through the relay was made by the server.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiortc
import numpy as np
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc import clock as aiortc_clock
from aiortc import rate as aiortc_rate
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci, unpack_remb_fci
from av import AudioFrame, Packet

from media.aiortc_compat import forwarding, guard, speed
from media.aiortc_compat.forwarding import FrameAssembler
from media.alliance.engine import Role
from media.alliance.offline import analyze_pcm
from media.alliance.payload import snapshot_json
from media.relay import frames
from media.relay.call import AudioInput, Call
from media.relay.frames import EncodedFrame, ForwardedPayloads
from media.relay.ice import MediaConfig, restrict_host_addresses
from media.relay.tracks import OutboundTrack
from server.bench.loadgen import LoadPeer, make_clip
from tests.media_helpers import ColorTrack, FakeBrowser, PcmTrack, ToneTrack, mean_rgb, rms, speech
from tests.support import eventually

FORWARD = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))
TRANSCODE = MediaConfig(
    allow_loopback_candidates=True, media_addresses=("127.0.0.1",), relay_mode="transcode"
)
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (20, 200, 20)
WAIT_S = 15.0  # media over loopback peers: generous, as a loaded 2-core CI machine needs


async def join(call: Call, role: str, peer: FakeBrowser | LoadPeer) -> None:
    await peer.accept(await call.connect(role, await peer.offer()))


def video_sender(browser: FakeBrowser) -> RTCRtpSender:
    return next(s for s in browser.pc.getSenders() if s.kind == "video")


def video_receiver(browser: FakeBrowser) -> RTCRtpReceiver:
    return next(r for r in browser.pc.getReceivers() if r.track and r.track.kind == "video")


def count_keyframe_requests(sender: RTCRtpSender) -> list[int]:
    """Count PLI/FIR reaching a browser's sender (the hook aiortc calls for both)."""
    counter = [0]
    original = sender._send_keyframe

    def _send_keyframe() -> None:
        counter[0] += 1
        original()

    sender._send_keyframe = _send_keyframe  # type: ignore[method-assign]
    return counter


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeBrowser, FakeBrowser]]:
    yield (
        FakeBrowser(ToneTrack(440), ColorTrack(RED)),
        FakeBrowser(ToneTrack(660), ColorTrack(BLUE)),
    )


# ---------------------------------------------------------------------------- self-check
def test_aiortc_internals_self_check_passes_and_detects_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert aiortc.__version__ == guard.AIORTC_VERSION == forwarding.AIORTC_VERSION == "1.16.0"
    assert guard.check_internals() == []

    async def changed(self: Any, packet: Any, arrival_time_ms: int) -> None:
        """An aiortc that no longer feeds a jitter buffer."""

    monkeypatch.setattr(RTCRtpReceiver, "_handle_rtp_packet", changed)
    problems = guard.check_internals()
    assert any("jitter_buffer" in p for p in problems), problems

    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    assert any("aiortc 1.17.0 is installed" in p for p in guard.check_internals())


def test_replaced_aiortc_clock_gives_the_same_times() -> None:
    assert speed.install()  # explicit: importing media never patches aiortc (test_aiortc_compat)
    assert aiortc_clock.current_ms is speed.fast_current_ms
    original = speed.ORIGINAL_CLOCK
    assert abs(aiortc_clock.current_ms() - original["current_ms"]()) <= 5
    ntp = aiortc_clock.current_ntp_time()
    assert abs(ntp - original["current_ntp_time"]()) < (1 << 32) // 200  # 5 ms
    assert (
        abs(aiortc_clock.current_ms() - ((ntp >> 32) * 1000 + ((ntp & 0xFFFFFFFF) * 1000 >> 32)))
        <= 5
    )


def test_fast_bitrate_estimator_parts_match_aiortc() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        ours, theirs = speed.FastRateCounter(1000, 8000), aiortc_rate.RateCounter(1000, 8000)
        now = int(rng.integers(0, 10**9))
        for _ in range(300):
            now += int(rng.choice([0, 1, 2, 5, 33, 34, 100, 700, 1500, 3000]))
            value = int(rng.integers(0, 5000))
            ours.add(value, now)
            theirs.add(value, now)
            if rng.random() < 0.01:
                ours.reset()
                theirs.reset()
            assert ours.rate(now) == theirs.rate(now)
    # The whole estimator, sped up, returns exactly what aiortc's returns.
    fast, stock = aiortc_rate.RemoteBitrateEstimator(), aiortc_rate.RemoteBitrateEstimator()
    speed.speed_up_estimator(fast)
    now, send = 10**6, 0
    for _ in range(3000):
        now += int(rng.choice([30, 33, 34, 36, 50, 80]))
        send = (send + int(rng.choice([33, 34])) * 262) & 0xFFFFFF
        size = int(rng.integers(500, 40_000))
        assert fast.add(now, send, size, 5) == stock.add(now, send, size, 5)


# ---------------------------------------------------------------------------- units
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=97)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=96)


def vp8_packets(seq: int, ts: int, frame: bytes, parts: int) -> list[RtpPacket]:
    """A VP8 frame split in ``parts`` RTP packets, depayloaded the way aiortc does it."""
    size = -(-len(frame) // parts)
    out = []
    for i in range(parts):
        chunk = frame[i * size : (i + 1) * size]
        packet = RtpPacket(payload_type=97, sequence_number=(seq + i) & 0xFFFF, timestamp=ts)
        packet.ssrc = 1234
        packet.marker = int(i == parts - 1)
        packet.payload = bytes([0x10 if i == 0 else 0x00]) + chunk
        packet._data = chunk  # type: ignore[attr-defined]
        out.append(packet)
    return out


KEY = b"\x00" + bytes(50)  # VP8 P bit 0: keyframe
DELTA = b"\x01" + bytes(20)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_assembler(
    kind: str = "video",
) -> tuple[FrameAssembler, list[EncodedFrame], list[int], FakeClock]:
    frames: list[EncodedFrame] = []
    asks: list[int] = []
    clock = FakeClock()
    codec = VP8 if kind == "video" else OPUS
    assembler = FrameAssembler(
        kind,
        lambda pt: codec if pt == codec.payloadType else None,
        frames.append,
        lambda: asks.append(1),
        clock,
    )
    return assembler, frames, asks, clock


def test_video_frames_complete_on_their_last_packet_in_any_order() -> None:
    assembler, frames, asks, _ = make_assembler()
    key = vp8_packets(100, 9000, KEY, 3)
    for packet in (key[0], key[2], key[1]):
        assert assembler.add(packet) == (False, None)  # aiortc's decoder never gets a frame
    assert len(frames) == 1 and frames[0].keyframe and frames[0].data == KEY
    # The next frame is delivered on its marker packet: no waiting for a following frame.
    for packet in vp8_packets(103, 12000, DELTA, 2):
        assembler.add(packet)
    assert [f.keyframe for f in frames] == [True, False]
    assert frames[1].timestamp - frames[0].timestamp == 3000
    assert not asks


def test_video_loss_skips_to_next_keyframe_and_asks_for_one() -> None:
    assembler, frames, asks, clock = make_assembler()
    for packet in vp8_packets(65534, 2**32 - 3000, KEY, 2):  # sequence numbers wrap
        assembler.add(packet)
    lost = vp8_packets(0, 0, DELTA, 2)
    assembler.add(lost[1])  # lost[0] never arrives
    padding = RtpPacket(payload_type=97, sequence_number=2, timestamp=0)
    padding.ssrc = 1234
    padding._data = b""  # type: ignore[attr-defined]
    assembler.add(padding)
    for packet in vp8_packets(3, 3000, DELTA, 1):
        assembler.add(packet)
    assert len(frames) == 1  # held back behind the gap, waiting for a retransmission
    clock.now += 1.0
    for packet in vp8_packets(4, 6000, DELTA, 1):
        assembler.add(packet)
    assert assembler.frames_skipped == 1 and asks  # gave up: nothing to decode until a keyframe
    for packet in vp8_packets(5, 9000, KEY, 2):
        assembler.add(packet)
    assert [f.keyframe for f in frames] == [True, True]
    assert frames[1].timestamp - frames[0].timestamp == 12000  # unwrapped across 2**32


def test_audio_packets_are_frames_delivered_at_once_and_late_ones_dropped() -> None:
    assembler, frames, _, _ = make_assembler("audio")
    for seq in (10, 11, 13, 12, 14):
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 960)
        packet.ssrc = 99
        packet._data = b"\xfc" + bytes(30)  # type: ignore[attr-defined]
        assembler.add(packet)
    assert [f.timestamp // 960 for f in frames] == [10, 11, 13, 14]
    assert assembler.packets_late == 1


def test_vp8_keyframes_are_found_behind_any_payload_descriptor() -> None:
    for descriptor in (
        VpxPayloadDescriptor(1, 0),
        VpxPayloadDescriptor(1, 0, picture_id=5),
        VpxPayloadDescriptor(1, 0, picture_id=300),
        VpxPayloadDescriptor(1, 0, picture_id=300, tl0picidx=7, tid=(1, 1), keyidx=3),
        VpxPayloadDescriptor(1, 0, picture_id=9, keyidx=1),
    ):
        head = bytes(descriptor)
        assert frames.vp8_descriptor_size(head + KEY) == len(head)
        assert frames.vp8_keyframe_payload(head + KEY)
        assert not frames.vp8_keyframe_payload(head + DELTA)
        assert not frames.vp8_keyframe_payload(head)  # truncated: no VP8 header
    assert not frames.vp8_keyframe_payload(b"")


def test_video_frames_keep_their_rtp_payloads_as_they_arrived() -> None:
    assembler, frames, _, _ = make_assembler()
    packets = vp8_packets(7, 0, KEY, 3)
    for packet in packets:
        assembler.add(packet)
    assert frames[0].payloads == tuple(p.payload for p in packets)
    assert frames[0].data == KEY  # the bare bitstream, for whoever wants to decode it


class _Transceiver:
    kind = "video"
    _codecs = (VP8,)


def test_forwarded_payloads_go_out_as_they_are_with_picture_ids_counting_on() -> None:
    encoder = forwarding._ForwardingEncoder(_Transceiver())  # type: ignore[arg-type]

    def frame(picture_id: int, source: str, parts: int = 2) -> list[bytes]:
        first = bytes(VpxPayloadDescriptor(1, 0, picture_id=picture_id)) + KEY
        rest = bytes(VpxPayloadDescriptor(0, 0, picture_id=picture_id)) + bytes(30)
        payloads, ts = encoder.pack(ForwardedPayloads([first] + [rest] * (parts - 1), 90, source))
        assert ts == 90
        return payloads

    sent = frame(1000, "a")
    assert frames.vp8_picture_id(sent[0]) == (1000, True)  # first source: untouched
    assert frames.vp8_picture_id(frame(1001, "a")[1]) == (1001, True)
    # Another source (a reconnect) numbers its frames from anywhere: the viewer still sees
    # picture ids counting on, and every other byte as it arrived.
    again = frame(20, "b", parts=3)
    assert [frames.vp8_picture_id(p) for p in again] == [(1002, True)] * 3
    assert again[0][4:] == KEY and again[1][4:] == bytes(30)
    assert frames.vp8_picture_id(frame(21, "b")[0]) == (1003, True)
    assert encoder.forwarded == 4


def encoded(ts: int, keyframe: bool, epoch: int = 1) -> EncodedFrame:
    return EncodedFrame(
        "video", "video/vp8", KEY if keyframe else DELTA, ts, 90_000, keyframe, 0.0, epoch
    )


async def test_outbound_video_waits_for_a_keyframe_and_keeps_source_spacing() -> None:
    asks: list[int] = []
    track = OutboundTrack("video", on_keyframe_needed=lambda: asks.append(1))
    track.push_encoded(encoded(1000, False), "a")
    track.push_encoded(encoded(4000, True), "a")
    first = await asyncio.wait_for(track.recv(), 1)
    assert isinstance(first, Packet) and bytes(first) == KEY
    assert track.gated == 1 and asks  # the delta before the keyframe was useless to a decoder
    track.push_encoded(encoded(7000, False), "a")
    second = await asyncio.wait_for(track.recv(), 1)
    assert isinstance(second, Packet) and second.pts is not None and first.pts is not None
    assert second.pts - first.pts == 3000
    assert second.time_base == fractions.Fraction(1, 90_000)
    # A new source (the other participant reconnected): its own timeline, a fresh keyframe.
    track.push_encoded(encoded(50, False, epoch=2), "b")
    track.push_encoded(encoded(3050, True, epoch=2), "b")
    third = await asyncio.wait_for(track.recv(), 1)
    assert (
        isinstance(third, Packet)
        and bytes(third) == KEY
        and third.pts is not None
        and third.pts > second.pts
    )
    # Overflow drops the oldest and, for video, waits for the next keyframe.
    for i in range(5):
        track.push_encoded(encoded(6050 + 3000 * i, False), "b")
    assert track.dropped == 2
    track.push_encoded(encoded(30000, True), "b")
    fourth = await asyncio.wait_for(track.recv(), 1)
    assert isinstance(fourth, Packet) and bytes(fourth) == KEY
    track.stop()


# ---------------------------------------------------------------------------- through Call
async def test_forwarding_carries_video_and_audio_both_ways(
    pair: tuple[FakeBrowser, FakeBrowser],
) -> None:
    tapped: dict[str, list[AudioFrame]] = {"therapist": [], "client": []}
    not_frames: list[AudioInput] = []

    def on_audio(role: str, audio: AudioInput) -> None:
        # An in-process Call taps decoded av frames (a media worker would send mono PCM).
        if isinstance(audio, AudioFrame):
            tapped[role].append(audio)
        else:
            not_frames.append(audio)

    call = Call(FORWARD, on_audio=on_audio)
    therapist, client = pair
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await therapist.wait_for("video", 10)
        await client.wait_for("video", 10)
        await therapist.wait_for("audio", 50)
        await client.wait_for("audio", 50)
        # The browsers decode what the server forwarded: red one way, blue the other.
        assert mean_rgb(client.received["video"][-1])[0] > 150
        assert mean_rgb(therapist.received["video"][-1])[2] > 150
        assert max(rms(f) for f in therapist.received["audio"][-20:]) > 1000
        assert max(rms(f) for f in client.received["audio"][-20:]) > 1000
        assert call.relay_mode == {"therapist->client": "forward", "client->therapist": "forward"}
        for peer in call.peers.values():
            # Codecs read from the answer SDP are the ones aiortc negotiated (its private list).
            for transceiver in peer.pc.getTransceivers():
                assert peer.codec(transceiver.kind) == forwarding.negotiated_mime(transceiver)
        for role in ("therapist", "client"):
            out = call.peers[role].stats()["outbound"]
            assert out["video"]["forwarded"] > 0 and out["video"]["encoded"] == 0
            assert out["audio"]["forwarded"] > 0 and out["audio"]["encoded"] == 0
        # The signal engine still gets decoded audio, in the same shape as before.
        await eventually(
            lambda: len(tapped["therapist"]) > 20 and len(tapped["client"]) > 20,
            timeout=WAIT_S,
            message=lambda: f"tapped frames: { {r: len(f) for r, f in tapped.items()} }",
        )
        assert not not_frames
        frame = tapped["client"][-1]
        assert (frame.format.name, frame.layout.name, frame.sample_rate, frame.samples) == (
            "s16",
            "stereo",
            48_000,
            960,
        )
    finally:
        await therapist.close()
        await client.close()
        await call.close()


class CodecCalls:
    """Counts aiortc codec work in this process (LoadPeers do none of it for video)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        for cls, name in (
            (Vp8Decoder, "decode"),
            (Vp8Encoder, "encode"),
            (OpusDecoder, "decode"),
            (OpusEncoder, "encode"),
        ):
            self._wrap(monkeypatch, cls, name)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
        key = f"{cls.__name__}.{name}"
        self.counts[key] = 0
        original = getattr(cls, name)

        def counted(obj: Any, *args: Any, **kwargs: Any) -> Any:
            self.counts[key] += 1  # GIL-atomic enough for a counter read after the fact
            return original(obj, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)


@pytest.fixture(scope="module")
def small_clip() -> Any:
    return make_clip(seconds=1.0, width=160, height=120)


@pytest.mark.parametrize("config", [FORWARD, TRANSCODE], ids=["forward", "transcode"])
async def test_forwarding_path_never_decodes_or_encodes_video(
    config: MediaConfig, small_clip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    restrict_host_addresses(["127.0.0.1"])  # as FakeBrowser does: this test may run alone
    calls = CodecCalls(monkeypatch)
    tapped: list[int] = []
    call = Call(config, on_audio=lambda role, frame: tapped.append(1))
    therapist, client = LoadPeer("t", small_clip), LoadPeer("c", small_clip)
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        receivers = [f.assembler for peer in (therapist, client) for f in peer.forwarders]
        await eventually(
            lambda: all(a.frames > 30 for a in receivers),
            timeout=WAIT_S,
            message=lambda: f"frames received: {[a.frames for a in receivers]}",
        )
        await eventually(
            lambda: len(tapped) > 40,
            timeout=WAIT_S,
            message=lambda: f"{len(tapped)} audio frames tapped",
        )
        if config is FORWARD:
            # The server sends every frame on as the RTP payloads it arrived in.
            for peer in call.peers.values():
                for sender in peer.pc.getSenders():
                    assert forwarding.forwarded_frames(sender) > 0, sender.kind
            assert calls.counts["Vp8Decoder.decode"] == 0
            assert calls.counts["Vp8Encoder.encode"] == 0
            assert calls.counts["OpusEncoder.encode"] == 0
            assert calls.counts["OpusDecoder.decode"] > 0  # once, for the signal engine
            assert set(call.relay_mode.values()) == {"forward"}
        else:
            assert calls.counts["Vp8Decoder.decode"] > 0
            assert calls.counts["Vp8Encoder.encode"] > 0
            assert calls.counts["OpusEncoder.encode"] > 0
            assert set(call.relay_mode.values()) == {"transcode"}
            for peer in call.peers.values():
                assert all(forwarding.forwarded_frames(s) == 0 for s in peer.pc.getSenders())
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_viewer_pli_reaches_the_sending_browser(
    pair: tuple[FakeBrowser, FakeBrowser],
) -> None:
    call = Call(FORWARD)
    therapist, client = pair
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await client.wait_for("video", 5)
        asked = count_keyframe_requests(video_sender(therapist))
        forwarder = call.peers["therapist"].forwarders["video"]
        keyframes_before = forwarder.assembler.keyframes
        await asyncio.sleep(forwarding.KEYFRAME_INTERVAL_S)  # let any join-time request pass
        # The client's browser reports picture loss to the server...
        receiver = video_receiver(client)
        ssrc = receiver.getSynchronizationSources()[0].source
        await receiver._send_rtcp_pli(ssrc)
        # ...and the therapist's browser is asked for, and sends, a keyframe.
        await eventually(lambda: asked[0] >= 1, timeout=WAIT_S, message="no keyframe request")
        await eventually(
            lambda: forwarder.assembler.keyframes > keyframes_before,
            timeout=WAIT_S,
            message="no keyframe forwarded",
        )
        seen = len(client.received["video"])
        await client.wait_for("video", seen + 5)
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_keyframe_requests_are_throttled(pair: tuple[FakeBrowser, FakeBrowser]) -> None:
    call = Call(FORWARD)
    therapist, client = pair
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await client.wait_for("video", 5)
        asked = count_keyframe_requests(video_sender(therapist))
        peer = call.peers["therapist"]
        for _ in range(20):
            peer.request_keyframe("test storm")
        # The first PLI reaches the browser within moments (bounded wait: a loaded machine
        # delays RTCP); then give the throttle time to let any trailing request through.
        await eventually(lambda: asked[0] >= 1, timeout=5.0)
        await asyncio.sleep(forwarding.KEYFRAME_INTERVAL_S * 2.5)
        # 20 requests within a moment: one now (or one deferred), at most one trailing.
        assert 1 <= asked[0] <= 2
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_rejoining_viewer_gets_a_keyframe(pair: tuple[FakeBrowser, FakeBrowser]) -> None:
    call = Call(FORWARD)
    therapist, client = pair
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await client.wait_for("video", 5)
        asked = count_keyframe_requests(video_sender(therapist))
        await client.close()
        await call.disconnect("client")
        # aiortc's sender (like the therapist's) only sends keyframes when asked; the new
        # viewer can only decode a picture if the relay asked for one on its behalf.
        client = FakeBrowser(ToneTrack(660), ColorTrack(GREEN))
        await join(call, "client", client)
        await client.wait_for("video", 5)
        assert asked[0] >= 1
        assert mean_rgb(client.received["video"][-1])[0] > 150
        count = len(therapist.received["video"])
        await therapist.wait_for("video", count + 5)
        assert mean_rgb(therapist.received["video"][-1])[1] > 150
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_viewer_bandwidth_estimate_is_passed_to_the_sender(
    pair: tuple[FakeBrowser, FakeBrowser],
) -> None:
    call = Call(FORWARD)
    therapist, client = pair
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await client.wait_for("video", 5)
        sender = video_sender(therapist)
        remb: list[int] = []
        original = sender._handle_rtcp_packet

        async def spy(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                remb.append(unpack_remb_fci(packet.fci)[0])
            await original(packet)

        sender._handle_rtcp_packet = spy  # type: ignore[method-assign]
        # The server's own (per-frame fed) estimate of the therapist's uplink goes out...
        await eventually(lambda: bool(remb), timeout=WAIT_S, message="no REMB reached the sender")
        # ...and when the client's browser can only take 777 bps of what the server
        # sends it, the therapist's browser is told so.
        server_sender = next(s for s in call.peers["client"].pc.getSenders() if s.kind == "video")
        receiver = video_receiver(client)
        await receiver._send_rtcp(
            RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP,
                ssrc=server_sender._ssrc,
                media_ssrc=0,
                fci=pack_remb_fci(777, [server_sender._ssrc]),
            )
        )
        # The server's own estimate of even this tiny stream is kbps, so seeing exactly
        # this figure means the viewer's estimate was passed on as the minimum.
        await eventually(
            lambda: 777 in remb, timeout=WAIT_S, message=lambda: f"REMB seen: {remb[-5:]}"
        )
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_falls_back_to_transcoding_when_codecs_cannot_match(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = Call(FORWARD)
    therapist = FakeBrowser(ToneTrack(440), ColorTrack(RED))
    client = FakeBrowser(ToneTrack(660), ColorTrack(BLUE))
    # The client's browser only does H.264.
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    for transceiver in client.pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(h264[:1])
    caplog.set_level(logging.INFO, logger="rapport.media")
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        assert call.peers["client"].codec("video") == "video/h264"
        assert call.peers["therapist"].codec("video") == "video/vp8"
        assert call.relay_mode == {
            "therapist->client": "transcode",
            "client->therapist": "transcode",
        }
        assert call.mode("therapist", "audio") == "forward"  # Opus on both legs still passes
        assert "falling back to transcoding" in caplog.text
        await client.wait_for("video", 5)
        await therapist.wait_for("video", 5)
        assert mean_rgb(client.received["video"][-1])[0] > 150
        assert mean_rgb(therapist.received["video"][-1])[2] > 150
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def _tapped_speech(config: MediaConfig, pcm: np.ndarray) -> list[AudioFrame]:
    frames: list[AudioFrame] = []
    not_frames: list[AudioInput] = []

    def on_audio(role: str, audio: AudioInput) -> None:
        if role != "therapist":
            return
        if isinstance(audio, AudioFrame):
            frames.append(audio)
        else:
            not_frames.append(audio)

    call = Call(config, on_audio=on_audio)
    therapist = FakeBrowser(PcmTrack(pcm), ColorTrack(RED))
    client = FakeBrowser(PcmTrack(np.zeros(48_000, dtype=np.int16)), ColorTrack(BLUE))
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        seconds = pcm.size / 48_000 + 1.0
        await eventually(
            lambda: len(frames) >= seconds * 50,
            timeout=seconds + WAIT_S,
            message=lambda: f"{len(frames)} of {seconds * 50:g} frames tapped",
        )
    finally:
        await therapist.close()
        await client.close()
        await call.close()
    assert not not_frames  # an in-process Call taps decoded av frames
    return frames


async def test_tapped_audio_gives_the_same_signals_as_the_transcoding_path() -> None:
    pcm = np.concatenate(
        [np.zeros(24_000, dtype=np.int16), speech(3.0), np.zeros(24_000, dtype=np.int16)]
    )
    results = {}
    for name, config in (("forward", FORWARD), ("transcode", TRANSCODE)):
        frames = await _tapped_speech(config, pcm)
        assert {(f.format.name, f.layout.name, f.sample_rate, f.samples) for f in frames} == {
            ("s16", "stereo", 48_000, 960)
        }
        mono = np.concatenate([f.to_ndarray().reshape(-1, 2).mean(axis=1) for f in frames])
        snapshot = analyze_pcm(
            {
                Role.THERAPIST: mono.astype(np.int16),
                Role.CLIENT: np.zeros(mono.size, dtype=np.int16),
            }
        )
        results[name] = snapshot_json(snapshot)["therapist_talk_s"]
    assert results["forward"] >= 2.0
    assert abs(results["forward"] - results["transcode"]) <= 0.04, results


def test_vp8_packetiser_matches_aiortc() -> None:
    rng = np.random.default_rng(1)
    for size in (1, 500, 1296, 1297, 5000, 40_000):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert frames.packetize_vp8(data, 1234) == Vp8Encoder._packetize(data, 1234)


def test_a_long_wait_for_a_lost_keyframe_packet_parses_each_packet_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keyframe missing one packet holds hundreds of later packets back until the buffer
    limit makes the assembler give up. Each packet must be parsed for a keyframe start once,
    not once per skip over the whole buffer (that made a worker's CPU grow with its backlog
    under loss), and the stream resumes at the keyframe it then asks for."""
    from media.aiortc_compat import forwarding
    from media.relay.frames import vp8_keyframe_start

    parsed: list[int] = []

    def counting(payload: bytes) -> bool:
        parsed.append(1)
        return vp8_keyframe_start(payload)

    monkeypatch.setattr(forwarding, "vp8_keyframe_start", counting)
    assembler, frames, asks, _ = make_assembler()
    key = vp8_packets(0, 0, KEY, 3)
    assembler.add(key[0])
    assembler.add(key[2])  # key[1] is lost
    deltas = [vp8_packets(3 + i, 3000 * (i + 1), DELTA, 1)[0] for i in range(600)]
    for packet in deltas:
        assembler.add(packet)
    assert not frames and asks  # nothing can go out before a keyframe, and one is asked for
    assert len(parsed) <= 2 + len(deltas)
    for packet in vp8_packets(603, 3000 * 601, KEY, 3):
        assembler.add(packet)
    assert [f.keyframe for f in frames] == [True]


def test_a_keyframe_that_never_completes_is_given_up_for_the_next_one() -> None:
    """A keyframe whose lost packet never comes back (its retransmission lost too) must not
    hold the stream forever: after the gap timeout the assembler resumes at the next
    keyframe, and what it buffers stays bounded."""
    assembler, frames, _, clock = make_assembler()
    broken = vp8_packets(0, 0, KEY, 3)
    assembler.add(broken[0])
    assembler.add(broken[2])  # broken[1] is gone for good
    seq, ts = 3, 3000
    for _ in range(30):  # a second of delta frames behind it
        for packet in vp8_packets(seq, ts, DELTA, 2):
            assembler.add(packet)
        seq, ts = seq + 2, ts + 3000
    clock.now += 1.0
    for packet in vp8_packets(seq, ts, KEY, 3):  # the next keyframe, then more frames
        assembler.add(packet)
    for i in range(5):
        assembler.add(vp8_packets(seq + 3 + i, ts + 3000 * (i + 1), DELTA, 1)[0])
    assert [f.keyframe for f in frames] == [True] + [False] * 5
    assert frames[0].timestamp == ts
    assert len(assembler._packets) < 10
