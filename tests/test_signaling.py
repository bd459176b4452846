"""Signalling over real WebSockets to a real server, with real aiortc media.

Tests that never send an offer (takeover, rate limits, refused sockets) run on a live server
without a media worker process (``NO_MEDIA_WORKER``): real sockets, none of a worker's set-up.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack
from tests.signaling_helpers import Participant, invite_token, login_cookie, new_client_cookie


async def _session(therapist: httpx.AsyncClient) -> dict[str, str]:
    response = await therapist.post("/api/sessions", json={"client_label": "C"})
    assert response.status_code == 201
    session: dict[str, str] = response.json()
    return session


async def _therapist_in(
    server: LiveServer, therapist: httpx.AsyncClient, session_id: str
) -> Participant:
    t = await Participant.connect(
        f"{server.ws_url}/ws/sessions/{session_id}", login_cookie(therapist)
    )
    welcome = await t.expect("welcome")
    assert welcome["role"] == "therapist" and welcome["session_id"] == session_id
    await t.send({"type": "join"})
    await t.expect("joined")
    return t


async def _client_waiting(
    server: LiveServer, invite_url: str, cookie: str | None = None
) -> Participant:
    c = await Participant.connect(
        f"{server.ws_url}/ws/join/{invite_token(invite_url)}", cookie or new_client_cookie()
    )
    welcome = await c.expect("welcome")
    assert welcome["role"] == "client" and welcome["session_id"] is None
    await c.send({"type": "join", "display_name": "K"})
    return c


async def _audit(admin: httpx.AsyncClient, session_id: str) -> list[str]:
    events = (await admin.get("/api/admin/audit", params={"session_id": session_id})).json()
    return [e["action"] for e in reversed(events["events"])]


@pytest.mark.parametrize("live_server", [0, 2], indirect=True, ids=["in-process", "2-workers"])
async def test_full_flow_waiting_admit_media_leave_rejoin_end(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    t = await _therapist_in(live_server, therapist, session["id"])
    cookie = new_client_cookie()
    c = await _client_waiting(live_server, session["invite_url"], cookie)
    await c.expect("waiting")
    lobby = await t.expect("lobby")
    while not lobby["waiting"]:
        lobby = await t.expect("lobby")
    entry = lobby["waiting"][0]
    assert entry["display_name"] == "K" and not entry["returning"]

    # Before admission: no media and no session data for the client.
    await c.send({"type": "offer", "sdp": await FakeBrowser().offer()})
    assert (await c.error())["code"] == "not_admitted"
    assert not c.seen("lobby") and not c.seen("peer_state")

    await t.send({"type": "admit", "participant_id": entry["participant_id"]})
    assert (await c.expect("admitted"))["rejoined"] is False
    await t.start_media(FakeBrowser(ToneTrack(300), ColorTrack((200, 0, 0))))
    await c.start_media(FakeBrowser(ToneTrack(500), ColorTrack((0, 0, 200))))
    assert t.browser is not None and c.browser is not None
    await t.browser.wait_for("video", 10)
    await c.browser.wait_for("video", 10)
    await t.expect("peer_state", present=True, media="connected", timeout=15)

    await c.send({"type": "mute", "audio": True, "video": False})
    await t.expect("peer_state", audio_muted=True)

    await c.send({"type": "leave"})
    await c.expect("left")
    await t.expect("peer_state", present=False)
    await c.close()

    # Same browser identity comes back after a reload: straight back in, no second admission.
    c = await _client_waiting(live_server, session["invite_url"], cookie)
    assert (await c.expect("admitted"))["rejoined"] is True
    await c.start_media()
    assert c.browser is not None
    await c.browser.wait_for("video", 5)

    await t.send({"type": "end"})
    await c.expect("ended")
    await t.expect("ended")
    await c.close()
    await t.close()
    actions = await _audit(admin, session["id"])
    for expected in [
        "session_created",
        "therapist_joined",
        "client_waiting",
        "client_admitted",
        "client_left",
        "client_rejoined",
        "session_ended",
    ]:
        assert expected in actions, (expected, actions)
    assert (await therapist.get(f"/api/sessions/{session['id']}")).json()["status"] == "ended"
    # The link is dead once the session ended.
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(session["invite_url"])).status_code == 410


async def test_second_device_waits_and_can_be_denied_while_call_continues(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    t = await _therapist_in(live_server, therapist, session["id"])
    c1 = await _client_waiting(live_server, session["invite_url"])
    lobby = await t.expect("lobby")
    while not lobby["waiting"]:
        lobby = await t.expect("lobby")
    await t.send({"type": "admit", "participant_id": lobby["waiting"][0]["participant_id"]})
    await c1.expect("admitted")
    await t.start_media()
    await c1.start_media()
    assert t.browser is not None
    await t.browser.wait_for("video", 5)

    c2 = await _client_waiting(live_server, session["invite_url"])  # a different browser
    await c2.expect("waiting")
    lobby = await t.expect("lobby")
    while not lobby["waiting"]:
        lobby = await t.expect("lobby")
    await t.send({"type": "deny", "participant_id": lobby["waiting"][0]["participant_id"]})
    await c2.expect("denied")
    frames = len(t.browser.received["video"])
    await t.browser.wait_for("video", frames + 10)
    await c1.close()
    await c2.close()
    await t.close()


@NO_MEDIA_WORKER
async def test_second_therapist_tab_gets_clear_error_then_can_take_over(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    first = await _therapist_in(live_server, therapist, session["id"])
    second = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await second.expect("welcome")
    await second.send({"type": "join"})
    error = await second.error()
    assert error["code"] == "already_connected" and "another tab" in error["message"]
    await first.send({"type": "ping", "t": 1})
    assert (await first.expect("pong"))["t"] == 1  # the first tab is unaffected
    await second.send({"type": "join", "takeover": True})
    await second.expect("joined")
    assert "another tab" in (await first.expect("replaced"))["message"]
    await first.close()
    await second.close()


async def test_bad_messages_get_precise_errors_and_the_call_continues(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    t = await _therapist_in(live_server, therapist, session["id"])
    c = await _client_waiting(live_server, session["invite_url"])
    lobby = await t.expect("lobby")
    while not lobby["waiting"]:
        lobby = await t.expect("lobby")
    await t.send({"type": "admit", "participant_id": lobby["waiting"][0]["participant_id"]})
    await c.expect("admitted")
    await t.start_media()
    await c.start_media()
    assert t.browser is not None

    cases: list[tuple[str | dict[str, object], str]] = [
        ("not json at all", "bad_json"),
        ("[1, 2, 3]", "invalid_message"),
        ({"type": "teleport"}, "unknown_type"),
        ({"type": "offer"}, "invalid_message"),
        ({"type": "offer", "sdp": "x", "extra": 1}, "invalid_message"),
        ({"type": "offer", "sdp": "v=0\r\nm=audio"}, "bad_sdp"),
        (
            {
                "type": "offer",
                "sdp": "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
                "a=ice-ufrag:x\r\na=fingerprint:sha-256 00",
            },
            "bad_sdp",
        ),
        (
            {
                "type": "offer",
                "sdp": "v=0\r\no=- 0 0 IN IP4 0\r\ns=-\r\nt=0 0\r\n"
                "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\n"
                "a=ice-pwd:abcdabcdabcdabcdabcdabcd\r\n"
                "a=fingerprint:sha-256 zz\r\na=rtpmap:banana\r\n",
            },
            "bad_sdp",
        ),
        ({"type": "admit", "participant_id": 1}, "forbidden"),
        ({"type": "deny", "participant_id": 1}, "forbidden"),
        ({"type": "end"}, "forbidden"),
        ("x" * (64 * 1024 + 1), "too_large"),
        (json.dumps({"type": "offer", "sdp": "v=0" + "a" * 70_000}), "too_large"),
    ]
    for message, code in cases:
        await c.send(message)
        error = await c.error()
        assert error["code"] == code, (
            message if isinstance(message, dict) else message[:40],
            error,
        )
        assert error["message"]
    # Hostile SDP from the therapist's side too.
    await t.send({"type": "offer", "sdp": "v=0\r\n\x00"})
    assert (await t.error())["code"] == "bad_sdp"
    await t.send({"type": "admit", "participant_id": 99999})
    assert (await t.error())["code"] == "unknown_participant"

    frames = len(t.browser.received["video"])
    await t.browser.wait_for("video", frames + 10)  # media still flows
    await c.send({"type": "ping", "t": 7})
    assert (await c.expect("pong"))["t"] == 7
    await c.close()
    await t.close()


@NO_MEDIA_WORKER
async def test_flooding_is_rate_limited_without_dropping_the_socket(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    t = await _therapist_in(live_server, therapist, session["id"])
    for i in range(300):
        await t.send({"type": "ping", "t": i})
    error = await t.expect("error", timeout=10)
    assert error["code"] == "rate_limited"
    # Still connected and served once the bucket refills (50/s: 0.1 s gives 5 messages).
    await asyncio.sleep(0.1)
    await t.send({"type": "ping", "t": -1})
    assert (await t.expect("pong", t=-1, timeout=10))["t"] == -1
    await t.close()


@NO_MEDIA_WORKER
@pytest.mark.parametrize("path_kind", ["unknown", "expired"])
async def test_dead_invite_sockets_are_refused_with_a_reason(
    live_server: LiveServer, therapist: httpx.AsyncClient, path_kind: str
) -> None:
    token = "nope"
    if path_kind == "expired":
        created = await therapist.post("/api/sessions", json={"invite_ttl_hours": 0.0000001})
        token = invite_token(created.json()["invite_url"])
        await asyncio.sleep(0.01)
    c = await Participant.connect(f"{live_server.ws_url}/ws/join/{token}", new_client_cookie())
    error = await c.error()
    assert error["fatal"] is True and error["code"] == path_kind
    await c.close()


@NO_MEDIA_WORKER
async def test_cross_site_socket_and_anonymous_therapist_socket_refused(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    evil = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}",
        login_cookie(therapist),
        origin="https://evil.example",
    )
    assert (await evil.error())["code"] == "forbidden"
    anonymous = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", "rapport_login=forged"
    )
    assert (await anonymous.error())["code"] == "unauthorized"
    await evil.close()
    await anonymous.close()
