"""End to end in real browsers: sign in, create a session, admit a client, talk, leave,
rejoin without a second admission, deny a stranger, end the session, read the audit log.

Two chromium processes (therapist and client) with fake cameras and a speech WAV as the fake
microphone talk through the real server and its aiortc media relay, all on 127.0.0.1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, ViewportSize, expect

from tests.support import eventually_sync

from .helpers import end_detail, end_title, stage_in

RapportServer = Any  # see conftest.py
Browsers = Any


pytestmark = pytest.mark.browser

WAIT_MS = 30_000
expect.set_options(timeout=20_000)

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

# Pages with a live <video> never fire "load" until media arrives (media elements delay the
# load event), so navigations here wait for DOMContentLoaded only.

# Resolves truthy once the <video> has dimensions and has rendered `minFrames` new frames
# (both per getVideoPlaybackQuality and per requestVideoFrameCallback) since the probe named
# `key` was installed. A new srcObject restarts the count.
VIDEO_ADVANCING_JS = """
([selector, key, minFrames]) => {
  const v = document.querySelector(selector);
  if (!v || !v.srcObject || v.videoWidth === 0 || v.readyState < 2) return false;
  v.__probes = v.__probes || {};
  let p = v.__probes[key];
  const total = () => v.getVideoPlaybackQuality().totalVideoFrames;
  if (!p || p.stream !== v.srcObject) {
    p = { stream: v.srcObject, start: total(), rvfc: 0 };
    const tick = () => { p.rvfc += 1; v.requestVideoFrameCallback(tick); };
    v.requestVideoFrameCallback(tick);
    v.__probes[key] = p;
    return false;
  }
  const frames = total() - p.start;
  if (frames >= minFrames && p.rvfc >= minFrames && !v.paused) {
    return { frames, rvfc: p.rvfc, width: v.videoWidth, height: v.videoHeight };
  }
  return false;
}
"""

# Resolves to the peak RMS once the remote stream's audio (through WebAudio) exceeds `threshold`.
AUDIO_ENERGY_JS = """
([selector, key, threshold]) => {
  const v = document.querySelector(selector);
  const stream = v && v.srcObject;
  if (!stream || stream.getAudioTracks().length === 0) return false;
  window.__audioProbes = window.__audioProbes || {};
  let p = window.__audioProbes[key];
  if (!p || p.stream !== stream) {
    const ctx = new AudioContext();
    ctx.resume();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    ctx.createMediaStreamSource(stream).connect(analyser);
    p = { stream, ctx, analyser, buf: new Float32Array(analyser.fftSize), peak: 0 };
    window.__audioProbes[key] = p;
  }
  p.analyser.getFloatTimeDomainData(p.buf);
  let sum = 0;
  for (const x of p.buf) sum += x * x;
  p.peak = Math.max(p.peak, Math.sqrt(sum / p.buf.length));
  return p.peak > threshold ? p.peak : false;
}
"""

MIC_METER_MOVES_JS = """
() => {
  const m = document.querySelector('[data-testid="mic-level"]');
  return m && Number(m.value) > 0.2 ? Number(m.value) : false;
}
"""

REMOTE = '[data-testid="remote-video"]'
SELF = '[data-testid="self-video"]'


def _open(
    browser: Any, server: RapportServer, log: list[str], name: str
) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport=DESKTOP, base_url=server.base_url)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.on("console", lambda msg: log.append(f"[{name}] {msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: log.append(f"[{name}] pageerror: {err}"))
    return context, page


def wait_video(
    page: Page, key: str, selector: str = REMOTE, min_frames: int = 15
) -> dict[str, Any]:
    handle = page.wait_for_function(
        VIDEO_ADVANCING_JS, arg=[selector, key, min_frames], polling=200, timeout=WAIT_MS
    )
    result: dict[str, Any] = handle.json_value()
    return result


def wait_audio(page: Page, key: str, threshold: float = 0.01) -> float:
    handle = page.wait_for_function(
        AUDIO_ENERGY_JS, arg=[REMOTE, key, threshold], polling=100, timeout=WAIT_MS
    )
    return float(handle.json_value())


def shoot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"))


def login_via_page(
    page: Page,
    email: str,
    password: str,
    path: str = "/login?next=/sessions",
    lands_on: str = "/sessions",
    artifacts: Path | None = None,
) -> None:
    page.goto(path, wait_until="domcontentloaded")
    page.get_by_test_id("login-email").fill(email)
    page.get_by_test_id("login-password").fill(password)
    if artifacts is not None:
        shoot(page, artifacts, "login-1280")
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(re.compile(rf"{re.escape(lands_on)}$"), wait_until="domcontentloaded")


def client_joins(page: Page, invite_url: str, name: str | None = None) -> None:
    page.goto(invite_url, wait_until="domcontentloaded")
    expect(page.get_by_test_id("join-button")).to_be_enabled()
    if name:
        page.get_by_test_id("display-name").fill(name)
    page.get_by_test_id("join-button").click()


def audit_actions(
    server: RapportServer, session_id: str, required: set[str]
) -> list[dict[str, Any]]:
    email, password = server.users["admin"]
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        res = http.post("/api/login", json={"email": email, "password": password})
        assert res.status_code == 200, res.text
        events: list[dict[str, Any]] = []

        def all_recorded() -> list[dict[str, Any]] | None:
            nonlocal events
            res = http.get("/api/admin/audit", params={"session_id": session_id, "limit": 500})
            assert res.status_code == 200, res.text
            events = res.json()["events"]
            return events if required <= {e["action"] for e in events} else None

        return eventually_sync(
            all_recorded,
            timeout=10,
            interval=0.25,
            message=lambda: (
                f"audit actions {sorted(required - {e['action'] for e in events})} "
                f"for session {session_id}"
            ),
        )


def test_admit_talk_leave_rejoin_end(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str], artifacts_dir: Path
) -> None:
    server = rapport_server
    t_ctx, t = _open(browsers.therapist, server, console_log, "therapist")
    c_ctx, c = _open(browsers.client, server, console_log, "client")
    try:
        # Therapist signs in through the login page and creates a session.
        email, password = server.users["therapist"]
        t.goto("/login", wait_until="domcontentloaded")
        t.get_by_test_id("login-email").fill(email)
        t.get_by_test_id("login-password").fill("not the password")
        t.get_by_test_id("login-submit").click()
        expect(t.get_by_test_id("login-error")).to_be_visible()
        login_via_page(t, email, password, artifacts=artifacts_dir)
        expect(t.get_by_test_id("user-name")).to_have_text("Dr. Ellis Moreau")
        t.get_by_test_id("client-label").fill("R.K.")
        t.get_by_test_id("create-session").click()
        expect(t.get_by_test_id("invite-url")).to_contain_text("/join/")
        invite_url = t.get_by_test_id("invite-url").inner_text().strip()
        room_href = t.get_by_test_id("open-created-room").get_attribute("href") or ""
        session_id = room_href.rstrip("/").rsplit("/", 1)[-1]
        assert session_id, room_href
        stored = t.evaluate("(id) => sessionStorage.getItem(`rapport.invite.${id}`)", session_id)
        assert stored == invite_url
        # Listed once (other browser tests share this account, so the list may hold theirs).
        expect(
            t.locator(f'[data-testid="session-item"][data-session-id="{session_id}"]')
        ).to_have_count(1)
        shoot(t, artifacts_dir, "sessions-1280")

        t.get_by_test_id("open-created-room").click()
        t.wait_for_url(
            re.compile(rf"/sessions/{re.escape(session_id)}$"), wait_until="domcontentloaded"
        )
        expect(stage_in(t, "waiting").get_by_test_id("stage-message")).to_contain_text(
            "Waiting for your client"
        )
        wait_video(t, "self", selector=SELF, min_frames=5)

        # Client: device check, then the waiting room.
        c.goto(invite_url, wait_until="domcontentloaded")
        expect(c.get_by_test_id("join-button")).to_be_enabled()
        wait_video(c, "self", selector=SELF, min_frames=5)
        c.wait_for_function(MIC_METER_MOVES_JS, polling=100, timeout=WAIT_MS)
        expect(c.get_by_test_id("camera-select")).not_to_have_value("")
        shoot(c, artifacts_dir, "client-device-check-1280")
        c.get_by_test_id("display-name").fill("Robin")
        c.get_by_test_id("join-button").click()
        expect(c.get_by_test_id("waiting-message")).to_contain_text(
            "Waiting for your therapist to let you in"
        )
        shoot(c, artifacts_dir, "client-waiting-1280")

        # Therapist admits; both sides play the other's video; the therapist hears the client.
        entry = t.get_by_test_id("lobby-entry")
        expect(entry).to_have_count(1)
        expect(entry).to_contain_text("Robin")
        shoot(t, artifacts_dir, "therapist-lobby-1280")
        entry.get_by_test_id("admit-button").click()
        expect(t.get_by_test_id("lobby-entry")).to_have_count(0)
        wait_video(t, "first")
        wait_video(c, "first")
        assert wait_audio(t, "first") > 0.01
        expect(t.get_by_test_id("peer-status")).to_contain_text("In the room")
        expect(t.get_by_test_id("connection-status")).to_have_text("Connected")
        expect(c.get_by_test_id("connection-status")).to_have_text("Connected")

        shoot(t, artifacts_dir, "therapist-room-1280")
        shoot(c, artifacts_dir, "client-room-1280")
        for page, name in ((t, "therapist"), (c, "client")):
            page.set_viewport_size(PHONE)
            page.wait_for_timeout(300)  # let layout settle before the picture (not an assertion)
            shoot(page, artifacts_dir, f"{name}-room-390")
            page.set_viewport_size(DESKTOP)

        # Mute state reaches the therapist.
        c.get_by_test_id("mute-audio").click()
        expect(c.get_by_test_id("mute-audio")).to_have_attribute("aria-pressed", "true")
        expect(t.get_by_test_id("peer-status")).to_contain_text("microphone off")
        c.get_by_test_id("mute-audio").click()
        expect(t.get_by_test_id("peer-status")).not_to_contain_text("microphone off")

        # Client leaves; the therapist sees it.
        c.get_by_test_id("leave-button").click()
        expect(end_title(c, "left")).to_have_text("You left the session")
        expect(t.get_by_test_id("peer-status")).to_contain_text("left")

        # Rejoin (reload) with the same browser identity: no second admission.
        c.get_by_test_id("rejoin-button").click()
        expect(c.get_by_test_id("join-button")).to_be_enabled()
        c.get_by_test_id("join-button").click()
        wait_video(c, "rejoined")
        wait_video(t, "rejoined")
        assert wait_audio(t, "rejoined") > 0.01
        expect(c.get_by_test_id("waiting-message")).to_be_hidden()
        expect(t.get_by_test_id("admit-button")).to_have_count(0)
        expect(t.get_by_test_id("peer-status")).to_contain_text("In the room")

        # Therapist ends the session; both see it.
        t.get_by_test_id("end-button").click()
        t.get_by_test_id("end-confirm-both").click()
        expect(end_title(t, "ended")).to_have_text("Session ended")
        # The client took part, so the check-in replaces the room.
        expect(c.get_by_test_id("checkin-title")).to_be_visible()
        expect(c.get_by_test_id("checkin-title")).to_have_text("The session has ended")
        expect(
            end_title(t, "ended").locator("xpath=..").get_by_role("link", name="Back to sessions")
        ).to_be_visible()
        shoot(t, artifacts_dir, "therapist-ended-1280")
        shoot(c, artifacts_dir, "client-ended-1280")

        required = {
            "session_created",
            "client_waiting",
            "client_admitted",
            "client_left",
            "client_rejoined",
            "session_ended",
        }
        events = audit_actions(server, session_id, required)
        actions = {e["action"] for e in events}
        assert required <= actions, f"missing {required - actions}; got {sorted(actions)}"
        assert all(e["session_id"] == session_id for e in events)
        assert not [line for line in console_log if "pageerror" in line], console_log

        # The admin page shows the same log, filtered by session.
        admin_email, admin_password = server.users["admin"]
        m_ctx, m = _open(browsers.therapist, server, console_log, "admin")
        try:
            login_via_page(m, admin_email, admin_password, path="/login", lands_on="/admin")
            m.get_by_test_id("audit-session").fill(session_id)
            m.get_by_test_id("audit-apply").click()
            expect(m.get_by_test_id("audit-summary")).to_contain_text(f"for session {session_id}")
            expect(m.get_by_test_id("audit-rows")).to_contain_text("client_rejoined")
            expect(m.get_by_test_id("audit-row")).to_have_count(len(events))
            shoot(m, artifacts_dir, "admin-audit-1280")
        finally:
            m_ctx.close()
    finally:
        t_ctx.close()
        c_ctx.close()


def test_stranger_with_same_link_is_denied(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str], artifacts_dir: Path
) -> None:
    server = rapport_server
    t_ctx, t = _open(browsers.therapist, server, console_log, "therapist")
    a_ctx, a = _open(browsers.client, server, console_log, "client-a")
    b_ctx, b = _open(browsers.client, server, console_log, "client-b")  # a different identity
    try:
        email, password = server.users["therapist"]
        res = t.request.post("/api/login", data={"email": email, "password": password})
        assert res.ok, res.text()
        res = t.request.post("/api/sessions", data={"client_label": "Deny test"})
        assert res.status == 201, res.text()
        created = res.json()
        session_id, invite_url = created["id"], created["invite_url"]

        t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
        expect(stage_in(t, "waiting").get_by_test_id("stage-message")).to_contain_text(
            "Waiting for your client"
        )

        client_joins(a, invite_url, "Alex")
        expect(a.get_by_test_id("waiting-message")).to_be_visible()
        t.get_by_test_id("admit-button").click()
        wait_video(t, "a")
        wait_video(a, "a")

        client_joins(b, invite_url)
        expect(b.get_by_test_id("waiting-message")).to_be_visible()
        entry = t.get_by_test_id("lobby-entry")
        expect(entry).to_have_count(1)
        expect(entry).to_contain_text("Client")
        entry.get_by_test_id("deny-button").click()
        expect(end_detail(b, "denied")).to_contain_text("could not admit you")
        expect(t.get_by_test_id("lobby-entry")).to_have_count(0)
        shoot(b, artifacts_dir, "client-denied-1280")

        # The admitted client's call carries on.
        wait_video(t, "after-deny")
        wait_video(a, "after-deny")
        expect(stage_in(a, "ended")).to_have_count(0)
        expect(a.get_by_test_id("checkin")).to_be_hidden()

        t.get_by_test_id("end-button").click()
        t.get_by_test_id("end-confirm-both").click()
        expect(a.get_by_test_id("checkin-title")).to_be_visible()
        events = audit_actions(server, session_id, {"client_denied"})
        assert "client_denied" in {e["action"] for e in events}
        assert not [line for line in console_log if "pageerror" in line], console_log
    finally:
        for ctx in (t_ctx, a_ctx, b_ctx):
            ctx.close()


def test_second_tab_takes_over_the_room(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str]
) -> None:
    server = rapport_server
    ctx, first = _open(browsers.therapist, server, console_log, "tab-1")
    try:
        email, password = server.users["therapist"]
        res = first.request.post("/api/login", data={"email": email, "password": password})
        assert res.ok, res.text()
        res = first.request.post("/api/sessions", data={"client_label": "Takeover test"})
        assert res.status == 201, res.text()
        room = f"/sessions/{res.json()['id']}"

        first.goto(room, wait_until="domcontentloaded")
        expect(stage_in(first, "waiting").get_by_test_id("stage-message")).to_contain_text(
            "Waiting for your client"
        )

        second = ctx.new_page()
        second.on("pageerror", lambda err: console_log.append(f"[tab-2] pageerror: {err}"))
        second.goto(room, wait_until="domcontentloaded")
        expect(second.get_by_test_id("takeover-panel")).to_contain_text(
            "This session is open in another tab"
        )
        second.get_by_test_id("takeover-button").click()
        expect(second.get_by_test_id("takeover-panel")).to_be_hidden()
        expect(stage_in(second, "waiting").get_by_test_id("stage-message")).to_contain_text(
            "Waiting for your client"
        )
        expect(end_title(first, "replaced")).to_be_visible()
        expect(first.get_by_test_id("controls")).to_be_hidden()
        assert not [line for line in console_log if "pageerror" in line], console_log
    finally:
        ctx.close()


def test_an_audit_filter_typed_while_the_admin_page_loads_is_kept(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str]
) -> None:
    """An admin who types a session into the audit filter before the page has finished asking who
    they are must see that session's events: the page's own start-up must neither clear the field
    nor let its unfiltered first load replace the filtered one (a CI run saw "200 events, newest
    first." where "for session …" was expected)."""
    server = rapport_server
    m_ctx, m = _open(browsers.therapist, server, console_log, "admin")
    try:
        email, password = server.users["admin"]
        res = m.request.post("/api/login", data={"email": email, "password": password})
        assert res.ok, res.text()
        held: list[Any] = []
        m.route("**/api/me", lambda route: held.append(route))
        m.goto("/admin", wait_until="domcontentloaded")
        wanted = "0123456789abcdef"
        m.get_by_test_id("audit-session").fill(wanted)
        eventually_sync(lambda: held or None, timeout=10, interval=0.05, message="/api/me asked")
        for route in held:
            route.continue_()
        # The page now knows the admin: its polls start (the calls table fills in).
        expect(m.get_by_test_id("user-name")).not_to_be_empty()
        m.get_by_test_id("audit-apply").click()
        expect(m.get_by_test_id("audit-session")).to_have_value(wanted)
        expect(m.get_by_test_id("audit-summary")).to_contain_text(f"for session {wanted}")
        # And it stays so once the page's own start-up has finished.
        m.wait_for_function(
            "() => !document.querySelector('[data-testid=audit-summary]')"
            ".textContent.startsWith('Loading')"
        )
        expect(m.get_by_test_id("audit-summary")).to_contain_text(f"for session {wanted}")
        assert "?session_id=" + wanted in m.url
    finally:
        m_ctx.close()
