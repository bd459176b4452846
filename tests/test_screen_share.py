"""Screen sharing (issue 13): the shared screen is a second video section, forwarded like the
camera, and the room says who shares (one person at a time).

The media half uses aiortc peers shaped like the web client (web/js/media.js): every offer
carries audio, the camera and a screen section whose sender has no track until the person
shares; sharing starts and stops with ``replaceTrack``, with no new offer. The signalling half
uses real sockets to a live server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from media import Role
from media.aiortc_compat import forwarding
from media.relay.call import Call
from media.relay.ice import MediaConfig
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack, mean_rgb
from tests.signaling_helpers import Participant, invite_token, open_room
from tests.support import eventually

FORWARD = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))
TRANSCODE = MediaConfig(
    allow_loopback_candidates=True, media_addresses=("127.0.0.1",), relay_mode="transcode"
)
RED, BLUE, GREEN, YELLOW = (220, 30, 30), (30, 30, 220), (20, 200, 20), (220, 220, 20)
WAIT_S = 20.0  # loopback media on a loaded 2-core machine: generous


class SharingBrowser(FakeBrowser):
    """A FakeBrowser with the web client's third section: a screen sender, empty until shared,
    and what arrives on each video section kept apart (camera vs the other's screen)."""

    def __init__(self, camera: tuple[int, int, int]) -> None:
        super().__init__(ToneTrack(440), ColorTrack(camera))
        # Like a browser, one transport for every section (aiortc's "balanced" default would
        # put the second video section on a transport that BUNDLE then throws away).
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.pc.addTrack(self.audio)
        self.pc.addTrack(self.video)
        self.screen: RTCRtpTransceiver = self.pc.addTransceiver("video", direction="sendrecv")
        self.received["screen"] = []
        self.pc.remove_all_listeners("track")
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        slot = "screen" if self.screen.receiver.track is track else track.kind
        self._tasks.append(asyncio.ensure_future(self._read_slot(track, slot)))

    async def _read_slot(self, track: MediaStreamTrack, slot: str) -> None:
        frames = self.received[slot]
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            frames.append(frame)
            if len(frames) > 200:
                del frames[:100]

    def share(self, rgb: tuple[int, int, int] | None) -> None:
        """Start (a screen of colour ``rgb``) or stop (None) sharing, as replaceTrack does."""
        track = ColorTrack(rgb, size=(320, 240)) if rgb else None
        self.screen.sender.replaceTrack(track)


async def join(call: Call, role: str, peer: FakeBrowser) -> None:
    await peer.accept(await call.connect(role, await peer.offer()))


def server_sender(call: Call, role: str, slot: str) -> RTCRtpSender:
    return call.peers[role]._transceivers[slot].sender


async def wait_frames(browser: SharingBrowser, slot: str, more: int) -> None:
    target = len(browser.received[slot]) + more
    await eventually(
        lambda: len(browser.received[slot]) >= target,
        timeout=WAIT_S,
        message=lambda: f"{target} {slot} frames (got {len(browser.received[slot])})",
    )


async def test_a_shared_screen_is_forwarded_on_its_own_section_without_re_encoding() -> None:
    call = Call(FORWARD)
    therapist, client = SharingBrowser(RED), SharingBrowser(BLUE)
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await wait_frames(client, "video", 10)
        await wait_frames(therapist, "video", 10)
        # Three sections each way, all forwarding; nobody shares yet.
        for peer in call.peers.values():
            assert peer.codec("screen") == "video/vp8"
        assert set(call.relay_mode.values()) == {"forward"}
        assert client.received["screen"] == [] and therapist.received["screen"] == []

        # The therapist shares (replaceTrack only: no new offer): the client gets it on its
        # screen section while the therapist's camera keeps arriving on the camera section.
        therapist.share(GREEN)
        await wait_frames(client, "screen", 15)
        await wait_frames(client, "video", 10)
        assert mean_rgb(client.received["screen"][-1])[1] > 150  # green
        assert mean_rgb(client.received["video"][-1])[0] > 150  # still the red camera
        screen_frame = client.received["screen"][-1]
        assert isinstance(screen_frame, VideoFrame) and screen_frame.width == 320
        assert therapist.received["screen"] == []  # nothing comes back to the sharer

        # Forwarded, not transcoded: the server sent the screen on as the RTP payloads it
        # received (no decode, no encode on that path), and counted it on its own.
        therapist_peer = call.peers["therapist"].stats()
        client_peer = call.peers["client"].stats()
        assert therapist_peer["screen_forwarder"]["enabled"] is True
        assert therapist_peer["screen_forwarder"]["frames"] >= 15
        assert therapist_peer["frames_in"]["screen"] >= 15
        out = client_peer["outbound"]["screen"]
        assert out["forwarded"] >= 15 and out["encoded"] == 0, out
        assert forwarding.forwarded_frames(server_sender(call, "client", "screen")) >= 15
        assert client_peer["outbound"]["video"]["encoded"] == 0

        # The therapist stops; the client shares back, the other way through the relay.
        therapist.share(None)
        client.share(YELLOW)
        await wait_frames(therapist, "screen", 15)
        assert min(mean_rgb(therapist.received["screen"][-1])[:2]) > 150  # yellow
        out = call.peers["therapist"].stats()["outbound"]["screen"]
        assert out["forwarded"] >= 15 and out["encoded"] == 0, out
        assert set(call.relay_mode.values()) == {"forward"}
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_a_viewer_who_reconnects_mid_share_gets_the_screen_again() -> None:
    """A new peer for the viewer (a reconnect or restart_media) starts on a keyframe the
    server asks the sharer for; the share itself never stopped."""
    call = Call(FORWARD)
    therapist, client = SharingBrowser(RED), SharingBrowser(BLUE)
    again = SharingBrowser(BLUE)
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        therapist.share(GREEN)
        await wait_frames(client, "screen", 10)
        await join(call, "client", again)
        await wait_frames(again, "screen", 10)
        assert mean_rgb(again.received["screen"][-1])[1] > 150
    finally:
        for browser in (therapist, client, again):
            await browser.close()
        await call.close()


async def test_the_transcoding_fallback_relays_the_screen_too() -> None:
    call = Call(TRANSCODE)
    therapist, client = SharingBrowser(RED), SharingBrowser(BLUE)
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        client.share(GREEN)
        await wait_frames(therapist, "screen", 10)
        await wait_frames(therapist, "video", 10)
        assert mean_rgb(therapist.received["screen"][-1])[1] > 150
        assert mean_rgb(therapist.received["video"][-1])[2] > 150  # the blue camera
        out = call.peers["therapist"].stats()["outbound"]["screen"]
        assert out["encoded"] >= 10 and out["forwarded"] == 0, out
    finally:
        await therapist.close()
        await client.close()
        await call.close()


# ---------------------------------------------------------------------------- signalling
def states(p: Participant, role: str) -> list[dict[str, Any]]:
    return [s for s in p.seen("peer_state") if s["role"] == role]


@NO_MEDIA_WORKER
async def test_one_person_shares_at_a_time_and_the_other_side_is_told(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, _cookie = await open_room(live_server.ws_url, therapist)
    try:
        await c.expect("peer_state", role="therapist", present=True)
        await t.send({"type": "screen_share", "active": True})
        await c.expect("peer_state", role="therapist", screen_sharing=True)

        # The client's share is refused, with a reason naming who shares.
        await c.send({"type": "screen_share", "active": True})
        error = await c.error()
        assert error["code"] == "screen_busy" and error["ref"] == "screen_share"
        assert "Your therapist is sharing their screen" in error["message"]
        assert not [s for s in states(t, "client") if s.get("screen_sharing")]

        await t.send({"type": "screen_share", "active": False})
        await c.expect("peer_state", role="therapist", screen_sharing=False)
        await c.send({"type": "screen_share", "active": True})
        await t.expect("peer_state", role="client", screen_sharing=True)
        await t.send({"type": "screen_share", "active": True})
        error = await t.error()
        assert error["code"] == "screen_busy"
        assert "Your client is sharing their screen" in error["message"]

        # A malformed message is refused precisely and changes nothing.
        await c.send({"type": "screen_share", "active": "maybe"})
        assert (await c.error())["code"] == "invalid_message"

        # Leaving ends the share: the therapist sees the client gone and not sharing.
        await c.send({"type": "leave"})
        gone = await t.expect("peer_state", role="client", present=False)
        assert gone["screen_sharing"] is False
        events = (await admin.get("/api/admin/audit", params={"session_id": session["id"]})).json()[
            "events"
        ]
        actions = [e["action"] for e in events]
        assert actions.count("screen_share_started") == 2
        assert actions.count("screen_share_stopped") == 1
    finally:
        await t.close()
        await c.close()


@NO_MEDIA_WORKER
async def test_a_reconnect_starts_unshared_so_no_stale_share_is_shown(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, cookie = await open_room(live_server.ws_url, therapist)
    c2: Participant | None = None
    try:
        await c.send({"type": "screen_share", "active": True})
        await t.expect("peer_state", role="client", screen_sharing=True)
        await c.ws.close()  # the network drops; the seat is held
        await t.expect("peer_state", role="client", reconnecting=True)
        c2 = await Participant.connect(
            f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
        )
        await c2.send({"type": "join"})
        await c2.expect("admitted")
        back = await t.expect("peer_state", role="client", reconnecting=False, present=True)
        assert back["screen_sharing"] is False  # a reloaded page shares nothing
        # The page that still shares says so again, and the therapist sees it.
        await c2.send({"type": "screen_share", "active": True})
        await t.expect("peer_state", role="client", screen_sharing=True)
    finally:
        await t.close()
        if c2 is not None:
            await c2.close()


@NO_MEDIA_WORKER
async def test_only_people_in_the_call_can_share(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    response = await therapist.post("/api/sessions", json={"client_label": ""})
    session = response.json()
    waiting = await Participant.connect(
        f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}",
        "rapport_client=screen-test-identity-0123456789",
    )
    try:
        await waiting.expect("welcome")
        await waiting.send({"type": "join"})
        await waiting.expect("waiting")
        await waiting.send({"type": "screen_share", "active": True})
        error = await waiting.error()
        assert error["code"] == "not_admitted" and error["ref"] == "screen_share"
    finally:
        await waiting.close()


def test_peer_state_says_who_shares_and_defaults_to_no_one() -> None:
    from signaling.messages import PeerState, ScreenShare, inbound_adapter

    assert PeerState(role=Role.CLIENT, present=True).model_dump()["screen_sharing"] is False
    message = inbound_adapter.validate_json('{"type": "screen_share", "active": true}')
    assert isinstance(message, ScreenShare) and message.active is True
    with pytest.raises(ValueError):
        inbound_adapter.validate_json('{"type": "screen_share"}')


def test_call_quality_counts_the_camera_and_the_screen_together() -> None:
    """Two video streams arrive (camera and a shared screen): loss over both, worse jitter;
    the screen's idle counters must not hide the camera's loss."""
    from types import SimpleNamespace

    from media.relay.quality import PeerStatsSampler

    def report(camera: tuple[int, int], screen: tuple[int, int]) -> dict[str, Any]:
        def inbound(name: str, received: int, lost: int, jitter: int) -> Any:
            return SimpleNamespace(
                type="inbound-rtp",
                kind="video",
                id=name,
                packetsReceived=received,
                packetsLost=lost,
                jitter=jitter,
            )

        return {
            "camera": inbound("camera", *camera, jitter=900),  # 10 ms at 90 kHz
            "screen": inbound("screen", *screen, jitter=2700),  # 30 ms
        }

    sampler = PeerStatsSampler()
    sampler.sample(report((100, 0), (0, 0)), 0.0)
    up, _ = sampler.sample(report((150, 50), (0, 0)), 2.0)
    video = up.kinds["video"]
    assert video.packets == 50 and video.loss == pytest.approx(0.5)
    assert video.jitter_ms == pytest.approx(30.0)
