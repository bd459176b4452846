"""Every page, looked at: a screenshot at 1280x800 and 390x844 in test-artifacts/ and axe's
WCAG 2.1 A/AA check, in the states a therapist, a client and an admin meet them.

One walk through a session (sign in, create, the client's device check, the waiting room, the
call, the end, the check-in, the summary) plus the pages off that path (first-run setup,
account, admin, the client's dead ends). Axe findings are gathered and reported together at
the end, so one run names every page that needs fixing. The integrator re-runs it after
merging other UI changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .helpers import (
    DESKTOP,
    PHONE,
    axe_violations,
    describe_violations,
    new_page,
    page_errors,
    shoot,
    stage_in,
    wait_video,
)

pytestmark = pytest.mark.browser
expect.set_options(timeout=20_000)

REMOTE = '[data-testid="remote-video"]'
SELF = '[data-testid="self-video"]'
SIZES = (("1280", DESKTOP), ("390", PHONE))
NEXT_FRAMES_JS = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
SCROLL_MAIN_TO_END_JS = """() => {
  const main = document.querySelector('#main');
  main.scrollTop = main.scrollHeight;
  return main.scrollTop + window.scrollY;
}"""
WIDE_ELEMENTS_JS = """() => [...document.querySelectorAll('body *')]
  .filter((e) => e.getBoundingClientRect().right > innerWidth + 1)
  .slice(0, 8).map((e) => `${e.tagName}.${e.className}[${e.dataset.testid || ''}]`
    + ` ${Math.round(e.getBoundingClientRect().right)}`)"""
SCROLLED_JS = "() => [window.scrollY, document.querySelector('#main').scrollTop]"


@dataclass
class Tour:
    """Screenshots and axe findings of the pages visited so far."""

    artifacts: Path
    problems: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def look(self, page: Page, name: str) -> None:
        """Both sizes: a picture, and axe; the page is left at the desktop size."""
        for label, size in SIZES:
            page.set_viewport_size(size)
            # Layout settles on the next frames; a picture before that would show the old size.
            page.evaluate(NEXT_FRAMES_JS)
            shoot(page, self.artifacts, f"page-{name}-{label}")
            violations = axe_violations(page)
            if violations:
                self.problems.append(f"{name} at {label}:\n{describe_violations(violations)}")
        page.set_viewport_size(DESKTOP)
        self.seen.append(name)


@pytest.fixture
def tour(artifacts_dir: Path) -> Tour:
    return Tour(artifacts_dir)


def _sign_in(page: Page, email: str, password: str) -> None:
    res = page.request.post("/api/login", data={"email": email, "password": password})
    assert res.ok, res.text()


def _new_session(page: Page, label: str, ttl_hours: float | None = None) -> tuple[str, str]:
    body: dict[str, Any] = {"client_label": label}
    if ttl_hours is not None:
        body["invite_ttl_hours"] = ttl_hours
    res = page.request.post("/api/sessions", data=body)
    assert res.status == 201, res.text()
    created = res.json()
    return created["id"], created["invite_url"]


@pytest.fixture
def contexts(
    rapport_server: Any, browsers: Any, console_log: list[str]
) -> Iterator[dict[str, tuple[BrowserContext, Page]]]:
    opened: dict[str, tuple[BrowserContext, Page]] = {}
    base = rapport_server.base_url
    opened["therapist"] = new_page(browsers.therapist, base, console_log, "therapist")
    opened["client"] = new_page(browsers.client, base, console_log, "client")
    opened["other"] = new_page(browsers.client, base, console_log, "other")
    opened["admin"] = new_page(browsers.therapist, base, console_log, "admin")
    try:
        yield opened
    finally:
        for ctx, _ in opened.values():
            ctx.close()


def test_every_page_screenshot_and_axe(
    rapport_server: Any,
    contexts: dict[str, tuple[BrowserContext, Page]],
    console_log: list[str],
    tour: Tour,
) -> None:
    server = rapport_server
    _, t = contexts["therapist"]
    _, c = contexts["client"]
    _, o = contexts["other"]
    _, m = contexts["admin"]
    email, password = server.users["therapist"]

    # Signed out: the sign-in page and a first-run setup link that is not (or no longer) valid.
    t.goto("/login", wait_until="domcontentloaded")
    expect(t.get_by_test_id("login-submit")).to_be_visible()
    tour.look(t, "login")
    t.goto("/setup/not-a-setup-token", wait_until="domcontentloaded")
    expect(t.locator("main")).to_be_visible()
    tour.look(t, "setup")

    # The therapist's list, after creating a session there.
    _sign_in(t, email, password)
    t.goto("/sessions", wait_until="domcontentloaded")
    t.get_by_test_id("client-label").fill("R.K.")
    t.get_by_test_id("create-session").click()
    expect(t.get_by_test_id("invite-url")).to_contain_text("/join/")
    invite_url = t.get_by_test_id("invite-url").inner_text().strip()
    room_href = t.get_by_test_id("open-created-room").get_attribute("href") or ""
    session_id = room_href.rstrip("/").rsplit("/", 1)[-1]
    tour.look(t, "sessions")

    # The room, nobody there yet.
    t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
    expect(stage_in(t, "waiting")).to_be_visible()
    wait_video(t, "self", SELF, min_frames=3)
    tour.look(t, "room-empty")

    # The client's device check, then the waiting room; the therapist sees them waiting.
    c.goto(invite_url, wait_until="domcontentloaded")
    expect(c.get_by_test_id("join-button")).to_be_enabled()
    wait_video(c, "self", SELF, min_frames=3)
    tour.look(c, "join-device-check")
    c.get_by_test_id("display-name").fill("Robin")
    c.get_by_test_id("join-button").click()
    expect(c.get_by_test_id("waiting-message")).to_contain_text("Waiting for your therapist")
    tour.look(c, "join-waiting")
    expect(t.get_by_test_id("lobby-entry")).to_have_count(1)
    tour.look(t, "room-client-waiting")

    # In the call, both sides.
    t.get_by_test_id("admit-button").click()
    wait_video(t, "call", REMOTE)
    wait_video(c, "call", REMOTE)
    tour.look(t, "room-in-call")
    tour.look(c, "join-in-call")

    # On a phone the therapist's video stays on screen while a long agenda scrolls.
    for i in range(8):
        c.get_by_test_id("agenda-input").fill(f"Something to talk about, number {i + 1}")
        c.get_by_test_id("agenda-add").click()
    expect(c.get_by_test_id("agenda-list").locator("li")).to_have_count(8)
    c.set_viewport_size(PHONE)
    scrolled = c.evaluate(SCROLL_MAIN_TO_END_JS)
    assert scrolled > 100, f"the page did not scroll ({scrolled} px): nothing to test"
    box = c.get_by_test_id("remote-video").bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], box
    shoot(c, tour.artifacts, "page-join-in-call-agenda-scrolled-390")
    c.set_viewport_size(DESKTOP)

    # The admin's page during the call: live calls first, health levels in words, the call's
    # charts with their threshold lines, staff named in the audit log; it fits a phone.
    _sign_in(m, *server.users["admin"])
    m.goto("/admin", wait_until="domcontentloaded")
    row = m.locator(f'[data-testid="call-row"][data-session-id="{session_id}"]')
    expect(row).to_be_visible()
    calls_y = m.locator("#calls-h").bounding_box()
    health_y = m.locator("#health-h").bounding_box()
    assert calls_y and health_y and calls_y["y"] < health_y["y"], (calls_y, health_y)
    for testid in ("health-cpu", "health-lag-p99", "health-database"):
        level = m.get_by_test_id(f"{testid}-level")
        expect(level).to_have_text(re.compile(r"^(Fine|Watch|Problem)$"))
    expect(m.get_by_test_id("health-database-level")).to_have_text("Fine")
    row.get_by_test_id("call-details").click()
    for key in ("rtt_ms", "loss", "jitter_ms"):
        expect(m.get_by_test_id(f"detail-{key}").locator("line.threshold-line")).to_have_count(1)
    expect(m.get_by_test_id("audit-rows")).to_contain_text("Dr. Ellis Moreau")
    expect(m.get_by_test_id("audit-rows")).not_to_contain_text("user:")
    expect(m.get_by_test_id("audit-rows")).not_to_contain_text("R.K.")
    m.wait_for_load_state("networkidle")
    tour.look(m, "admin")
    m.set_viewport_size(PHONE)
    overflow = m.evaluate("() => document.scrollingElement.scrollWidth")
    assert overflow <= PHONE["width"], (
        f"the admin page is {overflow} px wide on a phone: {m.evaluate(WIDE_ELEMENTS_JS)}"
    )
    expect(row.locator("td").first).to_have_attribute("data-label", "Session")
    m.set_viewport_size(DESKTOP)

    # A stranger on the same link is turned away.
    o.goto(invite_url, wait_until="domcontentloaded")
    expect(o.get_by_test_id("join-button")).to_be_enabled()
    o.get_by_test_id("join-button").click()
    expect(t.get_by_test_id("deny-button")).to_be_visible()
    t.get_by_test_id("deny-button").click()
    expect(stage_in(o, "denied")).to_be_visible()
    tour.look(o, "join-denied")

    # The end: the therapist's end panel, the client's check-in, then its thanks.
    # Someone still in the waiting room when it ends was never let in: no thanks for them.
    late_ctx, late = new_page(o.context.browser, server.base_url, console_log, "late")
    late.goto(invite_url, wait_until="domcontentloaded")
    expect(late.get_by_test_id("join-button")).to_be_enabled()
    late.get_by_test_id("join-button").click()
    expect(late.get_by_test_id("waiting-message")).to_be_visible()
    t.get_by_test_id("end-button").click()
    # The therapist's page may ask first ("End for both" / "Leave for now").
    confirm = t.get_by_test_id("end-confirm-both")
    ended = stage_in(t, "ended")
    confirm.or_(ended).first.wait_for()
    if confirm.is_visible():
        confirm.click()
    expect(ended).to_be_visible()
    expect(stage_in(late, "ended").get_by_test_id("end-detail")).to_contain_text(
        "before you were let in"
    )
    tour.look(late, "join-ended-while-waiting")
    late_ctx.close()
    tour.look(t, "room-ended")
    expect(c.get_by_test_id("checkin-title")).to_be_visible()
    tour.look(c, "join-checkin")
    c.get_by_test_id("checkin-skip").click()
    expect(c.get_by_test_id("checkin-done")).to_be_visible()
    tour.look(c, "join-checkin-done")

    # The link after the end, for the stranger who was turned away and for someone new.
    o.goto(invite_url, wait_until="domcontentloaded")
    tour.look(o, "join-after-end-denied")

    # The summary.
    t.goto(f"/sessions/{session_id}/summary", wait_until="domcontentloaded")
    expect(t.locator("main")).to_be_visible()
    t.wait_for_load_state("load")
    tour.look(t, "summary")

    # The account page.
    t.goto("/account", wait_until="domcontentloaded")
    expect(t.locator("main")).to_be_visible()
    tour.look(t, "account")

    # Dead ends: a link that never was, an expired one, a therapist page for an admin.
    fresh_ctx, fresh = new_page(contexts["other"][0].browser, server.base_url, console_log, "fresh")
    try:
        fresh.goto("/join/not-a-real-link", wait_until="domcontentloaded")
        tour.look(fresh, "join-unknown-link")
        _, expired_url = _new_session(t, "Expired", ttl_hours=0.0002)  # under a second
        expired_path = "/join/" + expired_url.rstrip("/").rsplit("/", 1)[-1]

        def expired() -> bool:
            return httpx.get(server.base_url + expired_path, timeout=5).status_code == 410

        from tests.support import eventually_sync

        eventually_sync(expired, timeout=10, interval=0.2, message="the link to expire")
        fresh.goto(expired_path, wait_until="domcontentloaded")
        tour.look(fresh, "join-expired-link")
    finally:
        fresh_ctx.close()

    admin_email, admin_password = server.users["admin"]
    _sign_in(m, admin_email, admin_password)
    m.goto("/sessions", wait_until="domcontentloaded")
    tour.look(m, "message-therapists-only")

    assert not page_errors(console_log), page_errors(console_log)
    assert not tour.problems, "axe found WCAG 2.1 A/AA violations:\n" + "\n".join(tour.problems)
    assert re.search(r"summary", " ".join(tour.seen))


def test_join_button_above_the_fold(
    rapport_server: Any, contexts: dict[str, tuple[BrowserContext, Page]]
) -> None:
    """Preview, name and Join on the first view at desktop and phone sizes, without scrolling
    (the device pickers are folded away)."""
    _, t = contexts["therapist"]
    _, c = contexts["client"]
    _sign_in(t, *rapport_server.users["therapist"])
    _, invite_url = _new_session(t, "Fold")
    for label, size in SIZES:
        c.set_viewport_size(size)
        c.goto(invite_url, wait_until="domcontentloaded")
        join = c.get_by_test_id("join-button")
        expect(join).to_be_enabled()
        wait_video(c, f"self-{label}", SELF, min_frames=3)
        scrolled = c.evaluate(SCROLLED_JS)
        assert scrolled == [0, 0], (label, scrolled)
        for testid in ("self-video", "display-name", "join-button"):
            box = c.get_by_test_id(testid).bounding_box()
            assert box is not None, (label, testid)
            inside = (
                box["x"] >= 0
                and box["y"] >= 0
                and box["x"] + box["width"] <= size["width"]
                and box["y"] + box["height"] <= size["height"]
            )
            assert inside, f"{testid} at {label} is outside the {size} viewport: {box}"
        expect(c.get_by_test_id("camera-select")).to_be_hidden()
        c.get_by_test_id("device-details").locator("summary").click()
        expect(c.get_by_test_id("camera-select")).to_be_visible()


def _admitted_call(server: Any, t: Page, c: Page, label: str, name: str) -> tuple[str, str]:
    """A session with the client admitted and both videos playing."""
    _sign_in(t, *server.users["therapist"])
    session_id, invite_url = _new_session(t, label)
    t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
    expect(stage_in(t, "waiting")).to_be_visible()
    c.goto(invite_url, wait_until="domcontentloaded")
    expect(c.get_by_test_id("join-button")).to_be_enabled()
    c.get_by_test_id("display-name").fill(name)
    c.get_by_test_id("join-button").click()
    t.get_by_test_id("admit-button").click()
    wait_video(t, "call", REMOTE)
    wait_video(c, "call", REMOTE)
    return session_id, invite_url


def test_mute_tiles_and_badges(
    rapport_server: Any,
    contexts: dict[str, tuple[BrowserContext, Page]],
    console_log: list[str],
    artifacts_dir: Path,
) -> None:
    """A camera that is off shows the person's name tile to the other side (not a black
    rectangle), a muted microphone a badge on both sides; the buttons say what they do."""
    _, t = contexts["therapist"]
    _, c = contexts["client"]
    _admitted_call(rapport_server, t, c, "M.T.", "Robin")
    for page in (t, c):
        for testid in ("remote-tile", "remote-mic-off", "self-tile", "self-mic-off"):
            expect(page.get_by_test_id(testid)).to_be_hidden()
        expect(page.get_by_test_id("mute-audio")).to_have_text("Mute")
        expect(page.get_by_test_id("mute-video")).to_have_text("Stop video")

    # The client turns both off.
    c.get_by_test_id("mute-audio").click()
    c.get_by_test_id("mute-video").click()
    expect(c.get_by_test_id("mute-audio")).to_have_attribute("aria-pressed", "true")
    expect(c.get_by_test_id("mute-audio")).to_have_text("Unmute")
    expect(c.get_by_test_id("mute-video")).to_have_attribute("aria-pressed", "true")
    expect(c.get_by_test_id("mute-video")).to_have_text("Start video")
    expect(c.get_by_test_id("self-mic-off")).to_be_visible()
    expect(c.get_by_test_id("self-tile")).to_be_visible()
    tile = t.get_by_test_id("remote-tile")
    expect(tile).to_be_visible()
    expect(tile).to_contain_text("M.T.")
    expect(tile).to_contain_text("Camera off")
    expect(tile.locator(".tile-avatar")).to_have_text("MT")
    expect(t.get_by_test_id("remote-mic-off")).to_be_visible()
    expect(t.get_by_test_id("remote-mic-off")).to_contain_text("microphone off")
    # The tile covers the (black) video: it is on top at the stage's centre.
    covered = t.evaluate(
        """() => {
          const r = document.querySelector('[data-testid="remote-video"]').getBoundingClientRect();
          const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
          return Boolean(top && top.closest('[data-testid="remote-tile"]'));
        }"""
    )
    assert covered
    for page, who in ((t, "therapist"), (c, "client")):
        violations = axe_violations(page)
        assert not violations, f"{who}: {describe_violations(violations)}"
    shoot(t, artifacts_dir, "mute-therapist-sees-client-off-1280")
    shoot(c, artifacts_dir, "mute-client-off-1280")

    # The therapist's camera off: the client sees their name and initials.
    t.get_by_test_id("mute-video").click()
    ctile = c.get_by_test_id("remote-tile")
    expect(ctile).to_be_visible()
    expect(ctile).to_contain_text("Dr. Ellis Moreau")
    expect(ctile.locator(".tile-avatar")).to_have_text("EM")
    expect(c.get_by_test_id("remote-mic-off")).to_be_hidden()
    c.set_viewport_size(PHONE)
    shoot(c, artifacts_dir, "mute-client-sees-therapist-off-390")
    c.set_viewport_size(DESKTOP)

    # Back on: every tile and badge goes.
    c.get_by_test_id("mute-audio").click()
    c.get_by_test_id("mute-video").click()
    t.get_by_test_id("mute-video").click()
    for page in (t, c):
        for testid in ("remote-tile", "remote-mic-off", "self-tile", "self-mic-off"):
            expect(page.get_by_test_id(testid)).to_be_hidden()
    assert not page_errors(console_log), page_errors(console_log)


LOAD_FLAG_JS = """
window.__loadFired = false;
window.addEventListener("load", () => { window.__loadFired = true; });
"""


def test_load_event_fires_before_admission(
    rapport_server: Any,
    browsers: Any,
    contexts: dict[str, tuple[BrowserContext, Page]],
    console_log: list[str],
) -> None:
    """The tab stops "loading" while the client waits to be let in (and while the therapist
    waits for them): no <video> holds the page's load event until media arrives."""
    _, t = contexts["therapist"]
    _sign_in(t, *rapport_server.users["therapist"])
    session_id, invite_url = _new_session(t, "Load")
    t_ctx, t2 = new_page(
        browsers.therapist,
        rapport_server.base_url,
        console_log,
        "therapist-load",
        init_script=LOAD_FLAG_JS,
    )
    c_ctx, c = new_page(
        browsers.client,
        rapport_server.base_url,
        console_log,
        "client-load",
        init_script=LOAD_FLAG_JS,
    )
    try:
        _sign_in(t2, *rapport_server.users["therapist"])
        t2.goto(f"/sessions/{session_id}", wait_until="commit")
        expect(stage_in(t2, "waiting")).to_be_visible()
        wait_video(t2, "self", SELF, min_frames=3)
        t2.wait_for_function("() => window.__loadFired", timeout=20_000)

        c.goto(invite_url, wait_until="commit")
        expect(c.get_by_test_id("join-button")).to_be_enabled()
        c.get_by_test_id("join-button").click()
        expect(c.get_by_test_id("waiting-message")).to_be_visible()
        c.wait_for_function("() => window.__loadFired", timeout=20_000)
        # Still waiting: nobody admitted the client, so no remote media has arrived.
        expect(stage_in(c, "waiting")).to_be_visible()
        assert c.evaluate("() => document.readyState") == "complete"

        # Admission then brings the therapist's video as before.
        t2.get_by_test_id("admit-button").click()
        wait_video(c, "after-load", REMOTE)
        wait_video(t2, "after-load", REMOTE)
    finally:
        t_ctx.close()
        c_ctx.close()


UNLABELLED_FORM = """<!doctype html><html lang="en"><head><title>Form</title></head>
<body><main><h1>Form</h1><input id="name" type="text"><p id="note">A note.</p></main>
</body></html>"""


def test_the_axe_check_names_a_problem_and_sees_the_page_as_it_is_now(browsers: Any) -> None:
    """The checker every page test relies on: axe is injected once per document, so this
    proves a repeat check reads the live page (not the first result) and that a new document
    gets axe again; ``include`` narrows the check to the named elements."""
    context = browsers.therapist.new_context()
    try:
        page = context.new_page()
        page.set_content(UNLABELLED_FORM)
        assert [v["id"] for v in axe_violations(page)] == ["label"]
        assert axe_violations(page, ["#note"]) == []
        page.evaluate("() => document.querySelector('#name').setAttribute('aria-label', 'Name')")
        assert axe_violations(page) == []
        page.set_content(UNLABELLED_FORM)
        assert [v["id"] for v in axe_violations(page, ["#name"])] == ["label"]
    finally:
        context.close()
