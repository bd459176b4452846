"""Two relay-only browsers hold a call through a real coturn with credentials Rapport derived.

coturn (Debian's ``coturn``) runs as a throwaway on 127.0.0.1 with ``use-auth-secret``: it
knows only the shared secret, so an allocation succeeds only if Rapport's username/credential
pair is right and unexpired. Rapport runs with ``RAPPORT_ICE_TRANSPORT_POLICY=relay`` and an
8 s credential lifetime, so a second call started after that lifetime can only connect with
credentials issued afresh, and the first call's credentials are shown to be refused by then.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from signaling import messages as m
from tests.server_process import THERAPIST_EMAIL, THERAPIST_PASSWORD, RapportServer
from tests.services import stop_process
from tests.support import eventually_sync

from .conftest import Browsers, serve_rapport
from .helpers import new_page, wait_for, wait_video

pytestmark = pytest.mark.browser
TURNSERVER = "/usr/bin/turnserver"
REMOTE = '[data-testid="remote-video"]'
TTL_S = 8
# Relay-only ICE through coturn, with chromium twice and a media worker on a loaded 2-core
# machine, has taken up to ~26 s to show video: a deadline, not a speed claim.
VIDEO_DEADLINE_MS = 60_000
REALM = "rapport.test"

# Keeps every RTCPeerConnection the page builds, the configuration it was built with, and the
# page's WebSockets.
RECORD_PC_JS = """
(() => {
  const OriginalWS = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends OriginalWS {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
  };
  const Original = window.RTCPeerConnection;
  window.__OriginalPC = Original;
  window.__pcs = [];
  window.__pcConfigs = [];
  class RecordingPC extends Original {
    constructor(config, ...rest) {
      super(config, ...rest);
      window.__pcs.push(this);
      window.__pcConfigs.push(JSON.parse(JSON.stringify(config || {})));
    }
  }
  window.RTCPeerConnection = RecordingPC;
})();
"""

# The candidate types of the page's current connection's selected pair, from getStats().
SELECTED_PAIR_JS = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  if (!pc || pc.connectionState !== "connected") return null;
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
  });
  const pair = pairId && stats.get(pairId);
  if (!pair || pair.state !== "succeeded") return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return { local: local.candidateType, relayProtocol: local.relayProtocol || null,
           url: local.url || null, remote: remote.candidateType,
           bytesReceived: pair.bytesReceived };
}
"""

# Gather relay-only candidates with the given ICE servers (outside the app's own call).
GATHER_RELAY_JS = """
async (iceServers) => {
  const pc = new window.__OriginalPC({ iceServers, iceTransportPolicy: "relay" });
  const candidates = [];
  const errors = [];
  pc.addEventListener("icecandidate", (e) => {
    if (e.candidate && e.candidate.candidate) candidates.push(e.candidate.candidate);
  });
  pc.addEventListener("icecandidateerror", (e) => errors.push(e.errorCode));
  pc.addTransceiver("audio");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, 15000);
  });
  pc.close();
  return { candidates, errors };
}
"""


@dataclass
class Coturn:
    port: int
    secret: str
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no coturn log)"

    def allocated(self, username: str) -> bool:
        line = f"realm <{REALM}> user <{username}>: incoming packet ALLOCATE processed, success"
        return line in self.log()


def _free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port for coturn")


def _stun_answers(port: int) -> bool:
    """A STUN binding request gets a binding success response: coturn is listening."""
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            data = sock.recv(2048)
        except OSError:
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == request[8:20]


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    if not Path(TURNSERVER).exists():
        pytest.fail(
            f"{TURNSERVER} is not installed (Debian package coturn; ./dev.sh test installs it)"
        )
    tmp = tmp_path_factory.mktemp("coturn")
    port = _free_udp_tcp_port()
    secret = secrets.token_urlsafe(24)
    log_path = tmp / "turn.log"
    args = [
        TURNSERVER,
        "-n",  # no configuration file: everything is on this command line
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        "--allow-loopback-peers",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--fingerprint",
        "--verbose",
        f"--userdb={tmp / 'turndb'}",
        f"--log-file={log_path}",
        "--simple-log",
        f"--pidfile={tmp / 'turn.pid'}",
    ]
    out = (tmp / "stdout.txt").open("wb")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    server = Coturn(port=port, secret=secret, log_path=log_path)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"coturn exited with {proc.returncode}:\n{server.log()}")
            return _stun_answers(port)

        eventually_sync(ready, timeout=15, interval=0.2, message="coturn did not answer STUN")
        yield server
    finally:
        stop_process(proc, 10)
        out.close()


@pytest.fixture(scope="module")
def turn_rapport(coturn: Coturn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {
        "RAPPORT_TURN_URLS": f"turn:127.0.0.1:{coturn.port}?transport=udp",
        "RAPPORT_TURN_SECRET": coturn.secret,
        "RAPPORT_TURN_TTL_S": str(TTL_S),
        "RAPPORT_ICE_TRANSPORT_POLICY": "relay",
    }
    with serve_rapport(tmp_path_factory.mktemp("rapport-turn"), env) as server:
        yield server


@dataclass
class Call:
    session_id: str
    therapist: Page
    client: Page
    contexts: list[BrowserContext]


def _start_call(
    server: RapportServer, browsers: Browsers, http: httpx.Client, log: list[str], label: str
) -> Call:
    res = http.post("/api/sessions", json={"client_label": label})
    assert res.status_code == 201, res.text
    session_id, invite_url = res.json()["id"], res.json()["invite_url"]
    t_ctx, t = new_page(
        browsers.therapist, server.base_url, log, f"therapist-{label}", init_script=RECORD_PC_JS
    )
    c_ctx, c = new_page(
        browsers.client, server.base_url, log, f"client-{label}", init_script=RECORD_PC_JS
    )
    call = Call(session_id, t, c, [t_ctx, c_ctx])
    login = {"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
    assert t.request.post("/api/login", data=login).ok
    c.goto(invite_url, wait_until="domcontentloaded")
    expect(c.get_by_test_id("join-button")).to_be_enabled(timeout=20_000)
    c.get_by_test_id("display-name").fill("Sam")
    c.get_by_test_id("join-button").click()
    t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
    t.get_by_test_id("admit-button").click()
    return call


def _turn_username(page: Page) -> tuple[str, dict[str, Any]]:
    """The TURN username of the page's current connection, and that connection's config."""
    config: dict[str, Any] = page.evaluate("window.__pcConfigs[window.__pcConfigs.length - 1]")
    assert config["iceTransportPolicy"] == "relay", config
    turn = [s for s in config["iceServers"] if s.get("credential")]
    assert len(turn) == 1, config
    return str(turn[0]["username"]), config


def _assert_page_relayed(page: Page, coturn: Coturn, key: str, role: str) -> str:
    """The page plays the other's video through a relay pair; returns its TURN username."""
    wait_video(page, key, REMOTE, min_frames=20, timeout_ms=VIDEO_DEADLINE_MS)

    def carrying() -> dict[str, Any] | None:
        pair: dict[str, Any] | None = page.evaluate(SELECTED_PAIR_JS)
        return pair if pair and pair["bytesReceived"] > 0 else None

    # Right after a rebuild the new pair may be selected before its counters moved.
    pair = wait_for(carrying, 20, f"{role}: a selected pair carrying media")
    assert pair["local"] == "relay", pair
    assert pair["url"] == f"turn:127.0.0.1:{coturn.port}?transport=udp", pair
    assert pair["bytesReceived"] > 0, pair
    username, _ = _turn_username(page)
    expiry, opaque = username.split(":")
    assert abs(int(expiry) - (time.time() + TTL_S)) < TTL_S + 60, username
    assert re.fullmatch("[0-9a-f]{20}", opaque), username
    wait_for(partial(coturn.allocated, username), 10, f"coturn allocation for {role}")
    return username


def _assert_relayed(call: Call, coturn: Coturn, key: str) -> dict[str, str]:
    """Both pages play the other's video through a relay pair; returns each page's username."""
    usernames = {
        role: _assert_page_relayed(page, coturn, key, role)
        for role, page in (("therapist", call.therapist), ("client", call.client))
    }
    assert usernames["therapist"] != usernames["client"]
    return usernames


def test_relay_only_call_through_coturn_and_a_new_call_after_the_credentials_expire(
    turn_rapport: RapportServer, coturn: Coturn, browsers: Browsers, console_log: list[str]
) -> None:
    server = turn_rapport
    log = console_log
    http = httpx.Client(base_url=server.base_url, timeout=10)
    calls: list[Call] = []
    try:
        login = {"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
        assert http.post("/api/login", json=login).is_success

        first = _start_call(server, browsers, http, log, "first")
        calls.append(first)
        first_users = _assert_relayed(first, coturn, "first")
        _, old_config = _turn_username(first.therapist)
        expires = max(int(u.split(":")[0]) for u in first_users.values())

        # Wait out the credentials' lifetime (coturn compares the expiry with its clock).
        wait_for(lambda: time.time() > expires + 1, TTL_S + 30, "the TURN credentials to expire")
        # coturn checks a credential only when an allocation is made: the first call goes on.
        wait_video(
            first.therapist, "after-expiry", REMOTE, min_frames=20, timeout_ms=VIDEO_DEADLINE_MS
        )
        # The first call's credentials are now refused: no relay candidate, a 401 instead.
        stale = first.therapist.evaluate(GATHER_RELAY_JS, old_config["iceServers"])
        assert not [c for c in stale["candidates"] if " typ relay" in c], stale
        assert 401 in stale["errors"], stale

        # A rejoin on the same page (its PeerCall already built) offers with the fresh
        # credentials that come with the new `joined`, and is relayed again.
        built = first.therapist.evaluate("window.__pcs.length")
        first.therapist.evaluate(
            "window.__sockets[window.__sockets.length - 1].send(JSON.stringify({type: 'join'}))"
        )
        # A function, not an expression string: the page's CSP forbids the eval that polling
        # an expression needs (it failed under load, when the first check was not yet true).
        first.therapist.wait_for_function("(n) => window.__pcs.length > n", arg=built)
        renewed = _assert_page_relayed(first.therapist, coturn, "rejoined", "therapist rejoined")
        assert int(renewed.split(":")[0]) > expires, renewed
        # Same person, same session: the same pseudonym under a new expiry.
        assert renewed.split(":")[1] == first_users["therapist"].split(":")[1]
        for context in first.contexts:
            with contextlib.suppress(Exception):
                context.close()

        # A new call is issued new credentials and connects through the relay again.
        second = _start_call(server, browsers, http, log, "second")
        calls.append(second)
        second_users = _assert_relayed(second, coturn, "second")
        for role, username in second_users.items():
            assert int(username.split(":")[0]) > expires, (role, username)
            assert username not in first_users.values()
        assert coturn.secret not in coturn.log()
        assert coturn.secret not in server.log_tail(max_chars=10_000_000)
        assert not [line for line in log if "pageerror" in line], log
    except BaseException:
        print("---- coturn log ----\n" + coturn.log()[-8000:])
        raise
    finally:
        for call in calls:
            for context in call.contexts:
                with contextlib.suppress(Exception):
                    context.close()
        http.close()


def test_a_page_that_re_offers_after_the_lifetime_without_rejoining_relays_with_fresh_ones(
    turn_rapport: RapportServer, coturn: Coturn, browsers: Browsers, console_log: list[str]
) -> None:
    """A media restart hours into a call (here: past the 8 s lifetime) rebuilds the page's
    connection without a rejoin: the page asks for fresh credentials (`ice_refresh`) before
    it offers, instead of offering with expired ones that coturn refuses (401, no relay)."""
    server = turn_rapport
    log = console_log
    http = httpx.Client(base_url=server.base_url, timeout=10)
    calls: list[Call] = []
    try:
        login = {"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
        assert http.post("/api/login", json=login).is_success
        call = _start_call(server, browsers, http, log, "restarted")
        calls.append(call)
        users = _assert_relayed(call, coturn, "before")
        expires = int(users["client"].split(":")[0])
        wait_for(lambda: time.time() > expires + 1, TTL_S + 30, "the TURN credentials to expire")

        # The server asks the client's page to rebuild its connection (as after a media
        # worker crash); the page keeps its socket, so no `admitted` brings new credentials.
        page = call.client
        sockets, built = page.evaluate("[window.__sockets.length, window.__pcs.length]")
        restart = m.RestartMedia(reason="media_lost").model_dump_json()
        page.evaluate(
            """(text) => window.__sockets[window.__sockets.length - 1]
                 .dispatchEvent(new MessageEvent("message", { data: text }))""",
            restart,
        )
        page.wait_for_function("(n) => window.__pcs.length > n", arg=built)
        renewed = _assert_page_relayed(page, coturn, "restarted", "client restarted")
        assert int(renewed.split(":")[0]) > expires, renewed
        assert renewed.split(":")[1] == users["client"].split(":")[1]  # same pseudonym
        assert page.evaluate("window.__sockets.length") == sockets  # no reconnect, no rejoin
        assert not [line for line in log if "pageerror" in line], log
    except BaseException:
        print("---- coturn log ----\n" + coturn.log()[-8000:])
        raise
    finally:
        for c in calls:
            for context in c.contexts:
                with contextlib.suppress(Exception):
                    context.close()
        http.close()
