"""The server's relay between two loopback peers, without a browser."""

from __future__ import annotations

import pytest

from media.relay.call import Call
from media.relay.ice import MediaConfig
from media.relay.sdp import SdpError
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack, mean_rgb, rms
from tests.support import eventually

CONFIG = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))


async def _join(call: Call, role: str, browser: FakeBrowser) -> None:
    await browser.accept(await call.connect(role, await browser.offer()))


async def test_media_flows_both_ways_and_audio_is_tapped() -> None:
    tapped: dict[str, int] = {"therapist": 0, "client": 0}
    call = Call(CONFIG, on_audio=lambda role, frame: tapped.__setitem__(role, tapped[role] + 1))
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((220, 30, 30)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((30, 30, 220)))
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await therapist.wait_for("video", 10)
        await client.wait_for("video", 10)
        await therapist.wait_for("audio", 50)
        # The client sees the therapist's red, the therapist sees the client's blue.
        assert mean_rgb(client.received["video"][-1])[0] > 150
        assert mean_rgb(therapist.received["video"][-1])[2] > 150
        assert max(rms(f) for f in therapist.received["audio"][-20:]) > 1000
        assert tapped["therapist"] > 20 and tapped["client"] > 20
        assert call.media_state("client") == "connected"
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_bad_offer_mid_call_leaves_call_intact() -> None:
    call = Call(CONFIG)
    therapist, client = FakeBrowser(), FakeBrowser()
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await client.wait_for("video", 5)
        peer_before = call.peers["client"]
        for bad in [
            "",
            "v=0\r\nnonsense",
            "v=0\r\nm=audio x RTP/AVP 0\r\n",
            (await FakeBrowser().offer()).replace("a=fingerprint:", "a=fingerprunt:"),
        ]:
            with pytest.raises(SdpError):
                await call.connect("client", bad)
        assert call.peers["client"] is peer_before
        seen = len(client.received["video"])
        await client.wait_for("video", seen + 5)
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_client_reconnect_with_new_peer_resumes_media() -> None:
    call = Call(CONFIG)
    therapist, client = FakeBrowser(), FakeBrowser()
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await therapist.wait_for("video", 5)
        await client.close()
        await call.disconnect("client")
        client = FakeBrowser(video=ColorTrack((20, 200, 20)))
        await _join(call, "client", client)
        await client.wait_for("video", 5)
        count = len(therapist.received["video"])
        await therapist.wait_for("video", count + 10)
        assert mean_rgb(therapist.received["video"][-1])[1] > 150
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_stalled_media_is_reported_lost_within_3s() -> None:
    states: list[tuple[str, str]] = []
    call = Call(CONFIG, on_media_state=lambda role, state: states.append((role, state)))
    client = FakeBrowser()
    try:
        await _join(call, "client", client)
        await eventually(lambda: call.media_state("client") == "connected", timeout=60)
        await client.wait_for("audio", 0)
        # Stop sending without closing: like a network that went away.
        client.audio.stop()
        client.video.stop()
        await eventually(lambda: ("client", "lost") in states, timeout=6.0)
    finally:
        await client.close()
        await call.close()
