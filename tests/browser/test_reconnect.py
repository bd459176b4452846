"""Calls survive reloads and a crashed server: real chromium pages, a real server subprocess.

A reload of the client's page and a SIGKILLed server restarted on the same port and database
must both bring the two videos back by themselves (one click on Join after a deliberate
reload), with the other person told "reconnecting" rather than "left", and the session's
signals carrying on in the same record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .conftest import Browsers, DialogueWavs, browser_pair
from .helpers import VIDEO_PLAYING_JS, new_page, open_and_admit, stage_in, wait_for

pytestmark = pytest.mark.browser

REMOTE = '[data-testid="remote-video"]'

# Every text the therapist's peer status and every data-state the stage goes through.
# The remote <video> still holds a picture: a stream, dimensions and a decoded frame.
LAST_FRAME_KEPT_JS = """(selector) => {
  const v = document.querySelector(selector);
  return Boolean(v && v.srcObject && v.videoWidth > 0 && v.readyState >= 2);
}"""
RECORD_CHANGES_JS = """
() => {
  const peer = document.querySelector('[data-testid="peer-status"]');
  const stage = document.querySelector('[data-testid="stage"]');
  window.__peerTexts = [peer.textContent];
  window.__stageStates = [stage.dataset.state];
  new MutationObserver(() => window.__peerTexts.push(peer.textContent))
    .observe(peer, { childList: true, characterData: true, subtree: true });
  new MutationObserver(() => window.__stageStates.push(stage.dataset.state))
    .observe(stage, { attributes: true, attributeFilter: ["data-state"] });
}
"""


@dataclass
class Call:
    server: Any
    http: httpx.Client
    session_id: str
    invite_url: str
    label: str
    t_ctx: BrowserContext
    t: Page
    c_ctx: BrowserContext
    c: Page
    log: list[str]

    @property
    def console_lines(self) -> list[str]:
        return self.log

    def metrics(self) -> dict[str, Any] | None:
        res = self.http.get(f"/api/sessions/{self.session_id}/metrics")
        return res.json() if res.status_code == 200 else None


def videos_advance(pages: list[Page], key: str, deadline: float, min_frames: int = 10) -> None:
    """Each page's remote video renders ``min_frames`` new frames before ``deadline``
    (time.monotonic()); frames of a stream that froze before the probe never count."""
    for page in pages:
        left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        page.wait_for_function(
            VIDEO_PLAYING_JS, arg=[REMOTE, key, min_frames], polling=100, timeout=left_ms
        )


# A therapist of its own, so the sessions this module creates do not show in other modules'
# session lists (the server is shared by every browser test).
THERAPIST = ("reconnect.therapist@example.test", "calm-river-5521")


def add_therapist(server: Any) -> tuple[str, str]:
    return server.add_user(*THERAPIST)  # type: ignore[no-any-return]


def login(server: Any, email: str, password: str) -> httpx.Client:
    return server.signed_in(email, password)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def own_browsers(pw: Any, dialogue_wavs: DialogueWavs) -> Iterator[Browsers]:
    """Browsers of this module only: the session-wide pair must not be running while another
    module (test_room_echo) starts its own Playwright, and this module sorts first."""
    with browser_pair(pw, dialogue_wavs.therapist, dialogue_wavs.client) as pair:
        yield pair


@pytest.fixture(scope="module")
def call(rapport_server: Any, own_browsers: Browsers) -> Iterator[Call]:
    browsers = own_browsers
    server = rapport_server
    log: list[str] = []
    email, password = add_therapist(server)
    http = login(server, email, password)
    label = f"Reconnect {uuid.uuid4().hex[:6]}"
    res = http.post("/api/sessions", json={"client_label": label})
    assert res.status_code == 201, res.text
    session_id, invite_url = res.json()["id"], res.json()["invite_url"]
    t_ctx, t = new_page(browsers.therapist, server.base_url, log, "therapist")
    c_ctx, c = new_page(browsers.client, server.base_url, log, "client")
    try:
        credentials = {"email": email, "password": password}
        open_and_admit(t, c, session_id, invite_url, credentials)
        videos_advance([t, c], "first", time.monotonic() + 30)
        yield Call(server, http, session_id, invite_url, label, t_ctx, t, c_ctx, c, log)
    finally:
        for ctx in (t_ctx, c_ctx):
            ctx.close()
        http.close()


def audit(server: Any, session_id: str) -> list[str]:
    email, password = server.users["admin"]
    with httpx.Client(base_url=server.base_url, timeout=10) as admin:
        assert admin.post("/api/login", json={"email": email, "password": password}).is_success
        res = admin.get("/api/admin/audit", params={"session_id": session_id, "limit": 500})
        return [e["action"] for e in res.json()["events"]]


def test_a_client_reload_brings_both_videos_back_and_never_reads_as_left(call: Call) -> None:
    t, c = call.t, call.c
    t.evaluate(RECORD_CHANGES_JS)
    started = time.monotonic()
    c.reload(wait_until="domcontentloaded")
    # The therapist is told the client is reconnecting: the seat is held, nobody "left".
    expect(t.get_by_test_id("peer-status")).to_have_text(
        "Your client is reconnecting…", timeout=10_000
    )
    expect(stage_in(t, "peer_reconnecting").get_by_test_id("stage-message")).to_contain_text(
        "Your client is reconnecting"
    )
    # One click on Join after a deliberate reload; no second admission.
    join = c.get_by_test_id("join-button")
    expect(join).to_be_enabled()
    join.click()
    videos_advance([t, c], "after-reload", started + 10)
    print(f"reload: both videos advancing {time.monotonic() - started:.1f} s after the reload")

    expect(stage_in(t, "call")).to_have_count(1)
    expect(t.get_by_test_id("admit-button")).to_have_count(0)
    peer_texts: list[str] = t.evaluate("window.__peerTexts")
    stages: list[str] = t.evaluate("window.__stageStates")
    assert not [text for text in peer_texts if "left" in text], peer_texts
    assert "waiting" not in stages, stages
    actions = audit(call.server, call.session_id)
    assert "client_reconnected" in actions, actions
    assert "client_disconnected" not in actions and "client_left" not in actions, actions


def test_a_killed_server_restarted_brings_both_videos_back_with_no_click(call: Call) -> None:
    t, c, server = call.t, call.c, call.server
    talked = wait_for(
        lambda: (
            (m := call.metrics()) and m["client_talk_s"] > 3 and m["therapist_talk_s"] > 1 and m
        ),
        timeout=40,
        what="some talk from both people in the signals",
    )
    # Signals are saved every few seconds; give the store one more round before the crash.
    before = wait_for(
        lambda: (m := call.metrics()) and m["client_talk_s"] > talked["client_talk_s"] + 3 and m,
        timeout=30,
        what="the client's talk time to grow",
    )
    for page in (t, c):
        page.evaluate(
            "window.__clicks = 0; addEventListener('click', () => window.__clicks++, true)"
        )
    t.evaluate(RECORD_CHANGES_JS)

    server.kill()
    for page in (t, c):
        expect(stage_in(page, "reconnecting").get_by_test_id("stage-message")).to_contain_text(
            "Reconnecting", timeout=15_000
        )
        expect(page.get_by_test_id("end-panel")).to_be_hidden()
        # Under the overlay the other person's last frame stays: not black, not a blank box.
        expect(page.locator(REMOTE)).to_be_visible()
        assert page.evaluate(LAST_FRAME_KEPT_JS, REMOTE), page.evaluate(
            "(s) => { const v = document.querySelector(s); return [v.videoWidth, v.readyState,"
            " Boolean(v.srcObject)]; }",
            REMOTE,
        )

    server.start()
    back = time.monotonic()
    videos_advance([t, c], "after-restart", back + 20)
    print(f"restart: both videos advancing {time.monotonic() - back:.1f} s after /healthz")
    for page in (t, c):
        expect(stage_in(page, "call")).to_have_count(1)
        assert page.evaluate("window.__clicks") == 0
    # Whoever came back first saw the other as reconnecting, never as gone.
    peer_texts: list[str] = t.evaluate("window.__peerTexts")
    assert not [text for text in peer_texts if "left" in text], peer_texts

    # The same session record carries on: one row, still live, talk totals continuing from
    # where they were (the crash costs at most the last save interval), not from zero.
    resumed = call.metrics()
    assert resumed is not None
    assert resumed["client_talk_s"] >= before["client_talk_s"] - 3.0, (before, resumed)
    grown = wait_for(
        lambda: (
            (m := call.metrics())
            and m["client_talk_s"] > before["client_talk_s"] + 2
            and m["therapist_talk_s"] > before["therapist_talk_s"]
            and m
        ),
        timeout=40,
        what="talk totals growing past their value before the crash",
    )
    assert grown["client_talk_s"] > before["client_talk_s"]
    sessions = call.http.get("/api/sessions").json()
    rows = sessions["sessions"] if isinstance(sessions, dict) else sessions
    mine = [s for s in rows if s.get("client_label") == call.label]
    assert [s["id"] for s in mine] == [call.session_id], mine
    assert mine[0]["status"] == "live"


def test_a_long_outage_gives_up_with_one_button(call: Call) -> None:
    t, server = call.t, call.server
    # The therapist's page stops trying after 3 s instead of 5 minutes (a page-level knob).
    call.t_ctx.add_init_script("window.rapportGiveUpAfterMs = 3000")
    t.reload(wait_until="domcontentloaded")
    expect(stage_in(t, "call")).to_have_count(1, timeout=20_000)
    server.kill()
    try:
        expect(t.get_by_test_id("end-title")).to_have_text(
            "The connection was lost", timeout=20_000
        )
        expect(stage_in(t, "disconnected")).to_have_count(1)
        expect(t.get_by_test_id("end-detail")).to_contain_text("Check your internet connection")
        actions = t.get_by_test_id("end-actions").locator("button, a")
        expect(actions).to_have_count(1)
        expect(actions).to_have_text("Try again")
    finally:
        server.start()
    # The one button starts the page afresh, and the therapist is back in the room.
    actions.click()
    expect(stage_in(t, "disconnected")).to_have_count(0, timeout=20_000)
    expect(t.get_by_test_id("end-panel")).to_be_hidden()
