"""A client on Debian's Firefox with a Chromium therapist: video and audio both ways.

Firefox with its default preferences hides its host addresses behind mDNS names and offers
nothing else here (no STUN server): the server's candidate filter drops every one of its
candidates, and the call connects only because the server learns Firefox's address from its
connectivity checks (peer-reflexive). The test checks that this is the case it exercises:
every candidate in Firefox's offer is a ``.local`` name.

Firefox is driven over WebDriver BiDi (tests/browser/bidi.py), the therapist through
Playwright's chromium. The server listens on 127.0.0.1, but its media uses a throwaway address
on a veth pair that leads nowhere (see ``private_address``): Firefox with default preferences
gathers no loopback candidate and does not pair its host candidates with a loopback one, so a
loopback-only media server could never receive its checks. Nothing off this machine can reach
that address, and no packet leaves it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.server_process import RapportServer
from tests.support import eventually_sync

from .bidi import FIREFOX, Firefox, launch_firefox
from .conftest import serve_rapport
from .helpers import new_page, stage_in

Browsers = Any

pytestmark = pytest.mark.browser

WAIT_S = 45.0
MEDIA_WAIT_S = 30.0

# Keeps every RTCPeerConnection the page makes (newest last), for getStats from the test.
RECORD_PCS_JS = """() => {
  const Native = window.RTCPeerConnection;
  const pcs = [];
  Object.defineProperty(window, "__rapportPcs", { value: pcs });
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); pcs.push(this); }
  };
}"""

# The newest open peer connection's offer and counters, per kind, from getStats.
MEDIA_STATS_JS = """async () => {
  const pcs = (window.__rapportPcs || []).filter((pc) => pc.connectionState !== "closed");
  const pc = pcs[pcs.length - 1];
  if (!pc) return null;
  const out = {
    state: pc.connectionState,
    sdp: pc.localDescription ? pc.localDescription.sdp : "",
    remoteSdp: pc.remoteDescription ? pc.remoteDescription.sdp : "",
    inbound: {},
    outbound: {},
  };
  // A kind may have several streams (the camera and an idle screen-share section): sum them.
  const add = (into, kind, values) => {
    const seen = into[kind] || {};
    into[kind] = Object.fromEntries(
      Object.entries(values).map(([key, value]) => [key, (seen[key] || 0) + value]),
    );
  };
  (await pc.getStats()).forEach((s) => {
    const kind = s.kind || s.mediaType;
    if (s.type === "inbound-rtp") {
      add(out.inbound, kind, {
        bytes: s.bytesReceived || 0,
        frames: s.framesDecoded || 0,
        energy: s.totalAudioEnergy || 0,
      });
    } else if (s.type === "outbound-rtp") {
      add(out.outbound, kind, { bytes: s.bytesSent || 0, frames: s.framesEncoded || 0 });
    }
  });
  return out;
}"""

JOIN_READY_JS = """() => {
  const b = document.querySelector('[data-testid="join-button"]');
  return !!b && !b.disabled;
}"""

WAITING_JS = """() => {
  const m = document.querySelector('[data-testid="waiting-message"]');
  return m ? m.textContent : "";
}"""

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d \S+ \d+ (\S+) \d+ typ (\S+)", re.M)


@contextlib.contextmanager
def private_address() -> Iterator[str]:
    """A throwaway address on a veth pair of this machine, for the media sockets.

    Firefox with default preferences gathers no loopback candidate and does not pair its host
    candidates with a loopback one, so a loopback-only media server could never receive its
    checks. An address on a veth pair whose other end goes nowhere is local to this machine,
    routed by nobody else and removed afterwards: unlike the machine's own network address,
    nothing off this machine can reach the media sockets bound to it.
    """
    name = f"rapport{os.getpid() % 100000}"
    address = "198.18.77.1"  # RFC 2544 benchmarking range: never a real host's address
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"],
        check=True,
        timeout=10,
    )
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True, timeout=10)
        for link in (name, f"{name}p"):
            subprocess.run(["ip", "link", "set", link, "up"], check=True, timeout=10)
        yield address
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, timeout=10)


@pytest.fixture(scope="module")
def host_media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RapportServer]:
    """The Rapport server on 127.0.0.1 whose media sockets use this machine's own address."""
    with private_address() as media_address:
        yield from _media_server(tmp_path_factory, media_address)


def _media_server(
    tmp_path_factory: pytest.TempPathFactory, media_address: str
) -> Iterator[RapportServer]:
    env = {"RAPPORT_MEDIA_ADDRESSES": f'["{media_address}"]'}
    with serve_rapport(tmp_path_factory.mktemp("rapport-firefox"), env) as server:
        yield server


@pytest.fixture
def firefox(tmp_path: Path) -> Iterator[Firefox]:
    if not Path(FIREFOX).exists():
        pytest.fail(f"{FIREFOX} is missing: apt-get install firefox-esr")
    with launch_firefox(tmp_path) as ff:
        ff.add_preload_script(RECORD_PCS_JS)
        yield ff


def _brief(stats: Any) -> Any:
    """The stats without the SDP texts, for failure messages."""
    if not isinstance(stats, dict):
        return stats
    return {k: v for k, v in stats.items() if k not in ("sdp", "remoteSdp")}


def _grew(before: dict[str, Any], after: dict[str, Any], path: tuple[str, str, str]) -> float:
    section, kind, key = path
    old = float(before[section].get(kind, {}).get(key, 0))
    new = float(after[section].get(kind, {}).get(key, 0))
    return new - old


def _media_flows(stats: Any, name: str) -> None:
    """Both pages' counters advance: frames decoded, audio bytes and energy, bytes sent."""
    first = {n: stats(n) for n in ("therapist", "client")}
    for n, s in first.items():
        assert s is not None and s["state"] == "connected", (n, s)
    last: dict[str, Any] = {}

    def advanced() -> bool:
        for n in ("therapist", "client"):
            last[n] = stats(n)
            checks = (
                _grew(first[n], last[n], ("inbound", "video", "frames")) >= 20,
                _grew(first[n], last[n], ("inbound", "audio", "bytes")) > 5_000,
                _grew(first[n], last[n], ("inbound", "audio", "energy")) > 0,
                _grew(first[n], last[n], ("outbound", "video", "bytes")) > 20_000,
                _grew(first[n], last[n], ("outbound", "audio", "bytes")) > 5_000,
            )
            if not all(checks):
                return False
        return True

    eventually_sync(
        advanced,
        timeout=MEDIA_WAIT_S,
        interval=0.5,
        message=lambda: (
            f"{name}: media did not advance both ways: "
            f"{ {n: _brief(v) for n, v in first.items()} } -> "
            f"{ {n: _brief(v) for n, v in last.items()} }"
        ),
    )


def test_firefox_client_with_chromium_therapist_video_and_audio_both_ways(
    host_media_server: RapportServer,
    browsers: Browsers,
    firefox: Firefox,
    console_log: list[str],
) -> None:
    server = host_media_server
    t_ctx, t = new_page(browsers.therapist, server.base_url, console_log, "therapist")
    t_ctx.add_init_script(f"({RECORD_PCS_JS})()")
    try:
        email, password = server.users["therapist"]
        t.goto("/login?next=/sessions", wait_until="domcontentloaded")
        t.get_by_test_id("login-email").fill(email)
        t.get_by_test_id("login-password").fill(password)
        t.get_by_test_id("login-submit").click()
        t.wait_for_url(re.compile(r"/sessions$"), wait_until="domcontentloaded")
        t.get_by_test_id("client-label").fill("F.X.")
        t.get_by_test_id("create-session").click()
        expect(t.get_by_test_id("invite-url")).to_contain_text("/join/")
        invite_url = t.get_by_test_id("invite-url").inner_text().strip()
        t.get_by_test_id("open-created-room").click()
        expect(stage_in(t, "waiting")).to_be_visible()

        # The client, on Firefox: device check with Firefox's fake devices, then Join.
        ff = firefox.tab
        ff.navigate(invite_url)
        eventually_sync(
            lambda: ff.call(JOIN_READY_JS),
            timeout=WAIT_S,
            interval=0.25,
            message=lambda: (
                "Firefox's join button never enabled:\n" + "\n".join(firefox.console()[-50:])
            ),
        )
        ff.click('[data-testid="join-button"]')
        eventually_sync(
            lambda: "Waiting" in str(ff.call(WAITING_JS)),
            timeout=WAIT_S,
            interval=0.25,
            message=lambda: "Firefox never reached the waiting room",
        )

        entry = t.get_by_test_id("lobby-entry")
        expect(entry).to_have_count(1)
        entry.get_by_test_id("admit-button").click()

        def stats(name: str) -> Any:
            if name == "client":
                return ff.call(MEDIA_STATS_JS)
            return t.evaluate(f"({MEDIA_STATS_JS})()")

        def connected() -> bool:
            ts, cs = stats("therapist"), stats("client")
            return bool(ts and cs and ts["state"] == "connected" and cs["state"] == "connected")

        eventually_sync(
            connected,
            timeout=WAIT_S,
            interval=0.5,
            message=lambda: (
                f"not connected: therapist {stats('therapist')}, "
                f"client {stats('client')}\n"
                + "\n".join(firefox.console()[-50:])
                + "\n"
                + server.log_tail()
            ),
        )
        # The case under test: Firefox offered mDNS names only, all dropped by the filter.
        offered = _CANDIDATE.findall(stats("client")["sdp"])
        assert offered, "Firefox's offer had no candidates"
        assert all(addr.endswith(".local") for addr, _ in offered), offered

        _media_flows(stats, "firefox client / chromium therapist")
        expect(t.get_by_test_id("connection-status")).to_have_text("Connected")
        assert not [line for line in console_log if "pageerror" in line], console_log
        # Firefox asked for nothing beyond this machine (its only way out is the sentinel).
        assert firefox.proxy.requests == [], firefox.proxy.requests
    finally:
        console_log.extend(firefox.console())
        t_ctx.close()
