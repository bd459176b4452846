"""TURN credentials: coturn's REST scheme, issued only to admitted participants.

The credential maths is checked against OpenSSL (an implementation independent of the one
under test); the protocol tests run a real server and read every message its sockets send.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.settings import Settings
from server.turn import TurnIssuer, opaque_id, turn_credential
from tests.conftest import LiveServer, make_settings
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
)

SECRET = "quiet-harbour-turn-secret"
TURN_URLS = ["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]
STUN_URL = "stun:127.0.0.1:3478"
TTL_S = 600


def openssl_hmac_sha1_b64(secret: str, message: str) -> str:
    out = subprocess.run(
        ["openssl", "dgst", "-sha1", "-hmac", secret, "-binary"],
        input=message.encode(),
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    return base64.b64encode(out).decode()


# ----------------------------------------------------------------- the credential maths


def test_credential_matches_a_known_vector() -> None:
    # printf '%s' '1700003600:4f2a9c' | openssl dgst -sha1 -hmac 'quiet-harbour-turn-secret' \
    #   -binary | base64
    assert turn_credential(SECRET, "1700003600:4f2a9c") == "6ZxNL/XAQfi067ywzBzYQRKn5kc="
    assert openssl_hmac_sha1_b64(SECRET, "1700003600:4f2a9c") == "6ZxNL/XAQfi067ywzBzYQRKn5kc="


def test_issued_username_carries_the_expiry_and_no_identity() -> None:
    now = 1_700_000_000.7
    issue = TurnIssuer(turn_urls=TURN_URLS, secret=SECRET, ttl_s=TTL_S, clock=lambda: now)
    grant = issue("session-abc", "client:7")
    (turn,) = grant.servers
    assert turn.urls == TURN_URLS
    assert turn.username is not None and turn.credential is not None
    expiry, opaque = turn.username.split(":")
    assert int(expiry) == 1_700_000_000 + TTL_S
    assert re.fullmatch("[0-9a-f]{20}", opaque)
    assert turn.credential == openssl_hmac_sha1_b64(SECRET, turn.username)
    assert grant.transport_policy == "all"
    # One pseudonym per person per session: stable across rejoins, unlinkable across sessions.
    assert issue("session-abc", "client:7").servers[0].username == turn.username
    assert opaque_id(SECRET, "session-xyz", "client:7") != opaque
    assert opaque_id(SECRET, "session-abc", "user:1") != opaque


def test_a_later_issue_expires_later() -> None:
    clock = [1_700_000_000.0]
    issue = TurnIssuer(turn_urls=TURN_URLS, secret=SECRET, ttl_s=TTL_S, clock=lambda: clock[0])
    first = issue("s", "user:1").servers[0]
    clock[0] += 3600
    second = issue("s", "user:1").servers[0]
    assert second.username == f"{1_700_000_000 + 3600 + TTL_S}:{opaque_id(SECRET, 's', 'user:1')}"
    assert second.credential != first.credential


def test_static_and_stun_servers_come_before_turn_and_the_secret_is_nowhere() -> None:
    static = [{"urls": "turn:fixed.example.org:3478", "username": "u", "credential": "p"}]
    issue = TurnIssuer(
        turn_urls=TURN_URLS,
        secret=SECRET,
        stun_urls=[STUN_URL],
        static_servers=static,
        transport_policy="relay",
    )
    grant = issue("s", "client:1")
    wire = [json.loads(s.model_dump_json()) for s in grant.servers]
    assert wire[0] == static[0]
    assert wire[1] == {"urls": [STUN_URL]}  # no "username": null for the browser to choke on
    assert wire[2]["username"] and wire[2]["credential"]
    assert grant.transport_policy == "relay"
    assert SECRET not in json.dumps(wire) and SECRET not in repr(issue)


def test_without_turn_only_the_fixed_servers_are_given() -> None:
    grant = TurnIssuer(static_servers=[{"urls": "stun:s.example.org"}])("s", "client:1")
    assert [s.username for s in grant.servers] == [None]


# ----------------------------------------------------------------- settings


def test_turn_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_TURN_URLS", ",".join(TURN_URLS))
    monkeypatch.setenv("RAPPORT_TURN_SECRET", SECRET)
    monkeypatch.setenv("RAPPORT_TURN_TTL_S", "8")
    monkeypatch.setenv("RAPPORT_STUN_URLS", '["stun:a.example.org", "stun:b.example.org"]')
    monkeypatch.setenv("RAPPORT_ICE_TRANSPORT_POLICY", "relay")
    settings = Settings()
    assert settings.turn_urls == TURN_URLS
    assert settings.turn_ttl_s == 8
    assert settings.stun_urls == ["stun:a.example.org", "stun:b.example.org"]
    assert settings.ice_transport_policy == "relay"
    assert settings.turn_secret is not None
    assert settings.turn_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert settings.server_ice_servers == []  # the server's own peers get none of it


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RAPPORT_TURN_URLS": TURN_URLS[0]}, "RAPPORT_TURN_SECRET is not"),
        ({"RAPPORT_TURN_SECRET": SECRET}, "RAPPORT_TURN_URLS is not"),
        ({"RAPPORT_TURN_URLS": TURN_URLS[0], "RAPPORT_TURN_SECRET": "short"}, "too short"),
        ({"RAPPORT_TURN_URLS": "stun:x.example.org", "RAPPORT_TURN_SECRET": SECRET}, "turn:"),
        ({"RAPPORT_STUN_URLS": "turn:x.example.org"}, "stun:"),
        ({"RAPPORT_ICE_TRANSPORT_POLICY": "relay"}, "needs a TURN server"),
    ],
)
def test_half_a_turn_configuration_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        Settings()


def test_relay_policy_accepts_a_static_turn_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_ICE_TRANSPORT_POLICY", "relay")
    monkeypatch.setenv(
        "RAPPORT_ICE_SERVERS",
        '[{"urls": ["turns:t.example.org:5349"], "username": "u", "credential": "p"}]',
    )
    assert Settings().ice_transport_policy == "relay"


def test_the_server_peers_use_their_own_ice_configuration(tmp_path: Path) -> None:
    """The server is publicly reachable: the browsers' relays are not for its own peers."""
    fixed = [{"urls": "turn:fixed.example.org:3478", "username": "u", "credential": "p"}]
    browsers_only = make_settings(
        tmp_path, 8000, media_workers=0, ice_servers=fixed, turn_urls=TURN_URLS, turn_secret=SECRET
    )
    media = create_app(browsers_only).state.rooms.media_config
    assert media.rtc_configuration().iceServers == []
    own = make_settings(
        tmp_path, 8000, media_workers=0, server_ice_servers=[{"urls": "stun:s.example.org"}]
    )
    media = create_app(own).state.rooms.media_config
    assert [s.urls for s in media.rtc_configuration().iceServers] == ["stun:s.example.org"]


# ----------------------------------------------------------------- the protocol

TURN_SERVER = {
    "media_workers": 0,
    "turn_urls": TURN_URLS,
    "turn_secret": SECRET,
    "turn_ttl_s": TTL_S,
    "stun_urls": [STUN_URL],
    "ice_transport_policy": "relay",
}
WITH_TURN = pytest.mark.parametrize("live_server", [TURN_SERVER], indirect=True, ids=["turn"])


def assert_fresh_turn(message: dict[str, Any]) -> str:
    """The message's TURN entry is a valid REST credential expiring one lifetime from now."""
    assert message["ice_transport_policy"] == "relay"
    servers = message["ice_servers"]
    assert servers[0] == {"urls": [STUN_URL]}
    turn = servers[1]
    assert turn["urls"] == TURN_URLS
    expiry = int(turn["username"].split(":")[0])
    assert time.time() + TTL_S - 30 <= expiry <= time.time() + TTL_S + 1
    assert turn["credential"] == openssl_hmac_sha1_b64(SECRET, turn["username"])
    return str(turn["username"])


def credentials_in(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        server
        for message in messages
        for server in message.get("ice_servers", [])
        if "credential" in server
    ]


async def drain(p: Participant) -> list[dict[str, Any]]:
    """Everything the server sent this socket so far (a pong comes after all of it)."""
    await p.send({"type": "ping", "t": 1.0})
    await p.expect("pong")
    return list(p.inbox)


@WITH_TURN
async def test_turn_credentials_only_after_admission(
    live_server: LiveServer, therapist: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await therapist.post("/api/sessions", json={"client_label": "C"})
    session = response.json()
    ws = live_server.ws_url
    t = await Participant.connect(f"{ws}/ws/sessions/{session['id']}", login_cookie(therapist))
    welcome = await t.expect("welcome")
    assert "ice_servers" not in welcome
    await t.send({"type": "join"})
    joined = await t.expect("joined")
    therapist_username = assert_fresh_turn(joined)

    join_url = f"{ws}/ws/join/{invite_token(session['invite_url'])}"
    cookie = new_client_cookie()
    c = await Participant.connect(join_url, cookie)
    welcome = await c.expect("welcome")
    assert "ice_servers" not in welcome
    await c.send({"type": "join", "display_name": "Kim Example"})
    await c.expect("waiting")
    participant_id = await next_waiting(t)

    # A second client, denied: never admitted, never given a relay.
    d = await Participant.connect(join_url, new_client_cookie())
    await d.send({"type": "join", "display_name": "Someone Else"})
    await d.expect("waiting")
    lobby = await t.expect("lobby")
    while len(lobby["waiting"]) < 2:
        lobby = await t.expect("lobby")
    other = next(e for e in lobby["waiting"] if e["participant_id"] != participant_id)
    await t.send({"type": "deny", "participant_id": other["participant_id"]})
    await d.expect("denied")
    assert credentials_in(d.inbox) == []
    assert all("ice_servers" not in message for message in d.inbox)

    waiting_seen = await drain(c)
    assert credentials_in(waiting_seen) == []
    assert all("ice_servers" not in message for message in waiting_seen)

    await t.send({"type": "admit", "participant_id": participant_id})
    admitted = await c.expect("admitted")
    client_username = assert_fresh_turn(admitted)
    assert client_username.split(":")[1] != therapist_username.split(":")[1]
    # A pseudonym of fixed shape: no name, role or participant number for coturn to log.
    assert re.fullmatch("[0-9a-f]{20}", client_username.split(":")[1])

    # A rejoin (reload, new socket) is issued a credential again, not the old one replayed.
    await c.ws.close()
    c2 = await Participant.connect(join_url, cookie)
    await c2.send({"type": "join"})
    rejoined = await c2.expect("admitted", rejoined=True)
    assert assert_fresh_turn(rejoined).split(":")[1] == client_username.split(":")[1]

    # The secret is in no message any socket received, and in no log line.
    everything = [*await drain(t), *await drain(c2), joined, admitted, rejoined, *waiting_seen]
    assert SECRET not in json.dumps(everything)
    assert SECRET not in caplog.text
    for p in (t, c2, d):
        await p.close()
