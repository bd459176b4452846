"""Issue 13 in two real browsers, the therapist's side: the session clock with its planned
length, the arrival notice (tab title count) and the waiting room's "whom and when", copying
the client link again after a reload, the end confirmation (both buttons, and Escape keeps
the call), the check-in with no default answers, and (own session) the desktop notification,
the chime switched off and the planned time in the client's waiting room.

The tests share one session and run in order; every wait is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .helpers import (
    axe_violations,
    close_contexts,
    describe_violations,
    end_title,
    new_page,
    page_errors,
    shoot,
    stage_in,
    wait_for,
    wait_video,
)

pytestmark = pytest.mark.browser
expect.set_options(timeout=20_000)

REMOTE = '[data-testid="remote-video"]'
# What sticks out of a 390 px page, to name it in a failure.
WIDER_THAN_390_JS = """() => [...document.querySelectorAll('body *')]
  .filter((e) => { const r = e.getBoundingClientRect(); return r.right > 391 && r.width > 0; })
  .slice(0, 10)
  .map((e) => `${e.tagName.toLowerCase()}.${e.className} `
    + `${Math.round(e.getBoundingClientRect().right)}`)"""
HOMEWORK = "Write down one kind thing you did each day."


@dataclass
class Room:
    server: Any
    artifacts: Path
    t_ctx: BrowserContext
    t: Page
    c_ctx: BrowserContext
    c: Page
    session_id: str
    invite_url: str
    http: httpx.Client
    log: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def room(rapport_server: Any, browsers: Any, artifacts_dir: Path) -> Iterator[Room]:
    server = rapport_server
    log: list[str] = []
    email, password = server.users["therapist"]
    http = httpx.Client(base_url=server.base_url, timeout=10)
    assert http.post("/api/login", json={"email": email, "password": password}).status_code == 200
    # A label of its own: this client's first check-in has nothing to be "lower" than.
    res = http.post("/api/sessions", json={"client_label": "A.N.", "planned_minutes": 50})
    assert res.status_code == 201, res.text
    t_ctx, t = new_page(browsers.therapist, server.base_url, log, "therapist")
    t_ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    c_ctx, c = new_page(browsers.client, server.base_url, log, "client")
    try:
        assert t.request.post("/api/login", data={"email": email, "password": password}).ok
        yield Room(
            server=server,
            artifacts=artifacts_dir,
            t_ctx=t_ctx,
            t=t,
            c_ctx=c_ctx,
            c=c,
            session_id=res.json()["id"],
            invite_url=res.json()["invite_url"],
            http=http,
            log=log,
        )
    finally:
        close_contexts(t_ctx, c_ctx)
        http.close()


def test_arrival_notice_and_session_clock(room: Room) -> None:
    t, c = room.t, room.c
    t.goto(f"/sessions/{room.session_id}", wait_until="domcontentloaded")
    expect(stage_in(t, "waiting")).to_be_visible()
    base_title = t.title()
    assert not base_title.startswith("("), base_title
    clock = t.get_by_test_id("session-clock")
    expect(clock).to_contain_text("50 min planned")

    c.goto(room.invite_url, wait_until="domcontentloaded")
    expect(c.get_by_test_id("join-button")).to_be_enabled()
    c.get_by_test_id("display-name").fill("Ana")
    c.get_by_test_id("join-button").click()
    # The waiting room says whom the client is meeting (the therapist's display name).
    expect(c.get_by_test_id("waiting-about")).to_contain_text("Dr. Ellis Moreau")

    # The therapist's tab title counts who is waiting; a soft chime was played.
    t.wait_for_function("() => document.title.startsWith('(1) ')", timeout=20_000)
    assert t.title() == f"(1) {base_title}"
    expect(t.get_by_test_id("lobby-section")).to_have_attribute(
        "data-chimes", re.compile(r"^[1-9]")
    )
    t.get_by_test_id("admit-button").click()
    wait_video(t, "call", REMOTE)
    wait_video(c, "call", REMOTE)
    t.wait_for_function("(title) => document.title === title", arg=base_title, timeout=20_000)

    # Elapsed since both were in the call, against the planned length.
    expect(clock).to_have_text(re.compile(r"\d+:\d\d / 50 min"))
    first = t.get_by_test_id("clock-elapsed").inner_text()
    wait_for(
        lambda: t.get_by_test_id("clock-elapsed").inner_text() != first,
        10,
        "the session clock to tick",
    )
    expect(clock).to_have_attribute("data-state", "running")
    shoot(t, room.artifacts, "therapist-room-glance-1280")
    assert not page_errors(room.log), room.log


def test_client_link_copied_after_a_reload(room: Room) -> None:
    t = room.t
    t.reload(wait_until="domcontentloaded")
    expect(t.get_by_test_id("peer-status")).to_contain_text("In the room")
    # A reload forgets everything in the page: the link comes from the server again.
    t.evaluate("() => sessionStorage.clear()")
    t.get_by_test_id("copy-link").click()
    expect(t.get_by_test_id("invite-url")).to_have_text(room.invite_url)
    expect(t.get_by_test_id("invite-status")).to_contain_text("Link copied")
    copied = t.evaluate("() => navigator.clipboard.readText()")
    assert copied == room.invite_url
    expect(t.get_by_test_id("link-expiry")).to_contain_text("works until")
    # The client's copy still works: the same link opens the join page, and the client's
    # call went on.
    page = room.http.get(room.invite_url)
    assert page.status_code == 200 and 'data-testid="join-button"' in page.text
    expect(room.c.get_by_test_id("connection-status")).to_have_text("Connected")
    assert not page_errors(room.log), room.log


def test_end_asks_leave_for_now_keeps_the_session_then_end_for_both(room: Room) -> None:
    t, c = room.t, room.c
    # The client's header names the therapist's *connection*, not the therapist.
    expect(c.get_by_test_id("quality-peer")).to_contain_text(
        "Therapist's connection:", use_inner_text=True
    )
    t.get_by_test_id("homework").fill(HOMEWORK)
    expect(c.get_by_test_id("homework")).to_have_text(HOMEWORK)
    dialog = t.get_by_test_id("end-dialog")
    t.get_by_test_id("end-button").click()
    expect(dialog).to_be_visible()
    expect(t.get_by_test_id("end-cancel")).to_be_focused()
    shoot(t, room.artifacts, "therapist-end-dialog-1280")
    violations = axe_violations(t)
    assert not violations, describe_violations(violations)
    # Escape keeps the call; focus goes back to "End session".
    t.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(t.get_by_test_id("end-button")).to_be_focused()
    expect(stage_in(t, "call")).to_be_visible()

    # "Leave for now": the therapist is out, the session is not over.
    t.get_by_test_id("end-button").click()
    t.get_by_test_id("end-confirm-leave").click()
    expect(end_title(t, "left")).to_have_text("You left the session")
    assert room.http.get(f"/api/sessions/{room.session_id}").json()["status"] != "ended"
    expect(c.get_by_test_id("checkin-title")).to_be_hidden()

    # Back in, then "End for both": both see the end, the client gets the check-in.
    t.get_by_test_id("rejoin-button").click()
    expect(t.get_by_test_id("peer-status")).to_contain_text("In the room")
    t.get_by_test_id("end-button").click()
    t.get_by_test_id("end-confirm-both").click()
    expect(end_title(t, "ended")).to_have_text("Session ended")
    expect(c.get_by_test_id("checkin-title")).to_be_visible()
    assert room.http.get(f"/api/sessions/{room.session_id}").json()["status"] == "ended"
    # The homework stays in front of the client once the call is over, also after a reload.
    expect(c.get_by_test_id("checkin-homework")).to_contain_text(HOMEWORK)
    c.reload(wait_until="domcontentloaded")
    expect(c.get_by_test_id("checkin-homework")).to_contain_text(HOMEWORK)


def test_checkin_has_no_default_answers(room: Room) -> None:
    c = room.c
    submit = c.get_by_test_id("checkin-submit")
    expect(c.get_by_test_id("checkin-bond")).to_be_visible()
    # Nothing is chosen, so nothing could be sent as an answer; Skip is always possible.
    assert c.locator('[data-testid="checkin"] input:checked').count() == 0
    expect(submit).to_be_disabled()
    expect(c.get_by_test_id("checkin-skip")).to_be_enabled()
    expect(c.get_by_test_id("checkin-submit-hint")).to_have_text(
        "4 questions still to answer, or skip."
    )
    answers = {"bond": 6, "goals": 5, "tasks": 4, "overall": 5}
    for key, value in list(answers.items())[:3]:
        c.get_by_test_id(f"checkin-{key}-{value}").click()
    expect(submit).to_be_disabled()
    expect(c.get_by_test_id("checkin-submit-hint")).to_have_text(
        "1 question still to answer, or skip."
    )
    # The last one by keyboard: Tab into the row, Space chooses 0, arrows move the choice.
    c.get_by_test_id("checkin-overall-0").focus()
    c.keyboard.press("Space")
    for _ in range(answers["overall"]):
        c.keyboard.press("ArrowRight")
    expect(c.get_by_test_id("checkin-overall-value")).to_have_text("5")
    expect(submit).to_be_enabled()
    for size, suffix in (
        ({"width": 1280, "height": 800}, "1280"),
        ({"width": 390, "height": 844}, "390"),
    ):
        c.set_viewport_size(size)  # type: ignore[arg-type]
        shoot(c, room.artifacts, f"checkin-answered-{suffix}")
    submit.click()
    expect(c.get_by_test_id("checkin-done")).to_be_visible()
    expect(c.get_by_test_id("checkin-homework")).to_contain_text(HOMEWORK)

    summary = room.http.get(f"/api/sessions/{room.session_id}/summary").json()
    assert {k: summary["checkin"][k] for k in answers} == answers
    # Total 20 of 40, but it is this client's first check-in: nothing to be lower than.
    assert summary["checkin"]["total"] == 20 and summary["checkin"]["low"] is False
    assert not page_errors(room.log), room.log


def test_summary_fits_a_phone(room: Room) -> None:
    t = room.t
    t.goto(f"/sessions/{room.session_id}/summary", wait_until="domcontentloaded")
    expect(t.get_by_test_id("summary-content")).to_be_visible()
    chart = t.get_by_test_id("summary-timeline").locator("svg")
    expect(chart).to_be_visible()
    for size, suffix in (
        ({"width": 1280, "height": 800}, "1280"),
        ({"width": 390, "height": 844}, "390"),
    ):
        t.set_viewport_size(size)  # type: ignore[arg-type]
        shoot(t, room.artifacts, f"summary-{suffix}")
    box = chart.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    # Nothing on the page needs sideways scrolling on a phone.
    width = t.evaluate("() => document.documentElement.scrollWidth")
    wide = t.evaluate(WIDER_THAN_390_JS)
    assert width <= 390, f"the summary is {width} px wide at 390 px: {wide}"
    t.set_viewport_size({"width": 1280, "height": 800})


def test_expired_link_says_so_and_a_new_link_is_one_click(room: Room) -> None:
    t = room.t
    res = room.http.post(
        "/api/sessions", json={"client_label": "E.X.", "invite_ttl_hours": 0.0003}
    )  # about one second
    assert res.status_code == 201, res.text
    sid = res.json()["id"]
    wait_for(
        lambda: room.http.get(f"/api/sessions/{sid}").json()["invite_expired"],
        15,
        "the one-second link to expire",
    )
    t.goto("/sessions", wait_until="domcontentloaded")
    item = t.locator(f'[data-testid="session-item"][data-session-id="{sid}"]')
    expect(item.get_by_test_id("session-status")).to_have_text("Link expired")
    item.get_by_test_id("new-link").click()
    item = t.locator(f'[data-testid="session-item"][data-session-id="{sid}"]')
    expect(item.get_by_test_id("session-status")).to_have_text("Scheduled")
    fresh = room.http.get(f"/api/sessions/{sid}/invite").json()
    assert fresh["invite_expired"] is False
    assert t.evaluate("() => navigator.clipboard.readText()") == fresh["invite_url"]
    expect(item.get_by_test_id("copy-session-link")).to_be_focused()
    expect(item.get_by_test_id("link-status")).to_contain_text("Link copied")
    for size, suffix in (
        ({"width": 1280, "height": 800}, "1280"),
        ({"width": 390, "height": 844}, "390"),
    ):
        t.set_viewport_size(size)  # type: ignore[arg-type]
        shoot(t, room.artifacts, f"sessions-planned-{suffix}")
    t.set_viewport_size({"width": 1280, "height": 800})
    width = t.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280


def test_new_session_form_sets_the_planned_time(room: Room) -> None:
    t = room.t
    t.goto("/sessions", wait_until="domcontentloaded")
    t.get_by_test_id("client-label").fill("P.F.")
    t.get_by_test_id("planned-date").fill("2030-01-15")
    t.get_by_test_id("planned-time").fill("14:30")
    t.get_by_test_id("planned-minutes").select_option("60")
    t.get_by_test_id("create-session").click()
    expect(t.get_by_test_id("invite-url")).to_contain_text("/join/")
    sid = t.get_by_test_id("open-created-room").get_attribute("data-session-id")
    session = room.http.get(f"/api/sessions/{sid}").json()
    # The therapist's local 14:30, as the browser reads it, is what the server keeps.
    local = t.evaluate("() => new Date('2030-01-15T14:30').toISOString()")
    assert session["planned_minutes"] == 60
    assert datetime.fromisoformat(session["planned_start"]) == datetime.fromisoformat(local)
    item = t.locator(f'[data-testid="session-item"][data-session-id="{sid}"]')
    expect(item).to_contain_text("Planned")
    expect(item).to_contain_text("60 min")
    # The room shows the plan before the session starts.
    t.goto(f"/sessions/{sid}", wait_until="domcontentloaded")
    expect(t.get_by_test_id("session-clock")).to_contain_text("60 min planned")


# The operating system's notification is the edge: the page's own Notification calls are
# recorded (and still passed to the browser's), and the therapist's tab is "in the background"
# (another tab has focus), which is when the page says it notifies.
RECORD_NOTIFICATIONS_JS = """(() => {
  const Native = window.Notification;
  if (!Native) return;
  const notes = [];
  function Recording(title, options) {
    notes.push({ title, body: (options && options.body) || "" });
    try { return new Native(title, options); } catch { return { close() {} }; }
  }
  Object.defineProperty(Recording, "permission", { get: () => Native.permission });
  Recording.requestPermission = (...args) => Native.requestPermission(...args);
  window.Notification = Recording;
  Object.defineProperty(window, "__notes", { value: notes });
  document.hasFocus = () => false;
})()"""


def test_arrival_with_the_chime_off_notifies_and_the_client_sees_whom_and_when(
    rapport_server: Any, browsers: Any
) -> None:
    """The arrival notice's other two parts: a desktop notification when the therapist has
    allowed them, and a chime that stays silent once switched off (the title still counts);
    and the waiting client reads the therapist's name with the planned time and length."""
    server = rapport_server
    log: list[str] = []
    email, password = server.users["therapist"]
    http = httpx.Client(base_url=server.base_url, timeout=10)
    assert http.post("/api/login", json={"email": email, "password": password}).status_code == 200
    prefs_before = http.get("/api/me/preferences").json()
    planned = datetime.now().astimezone().replace(second=0, microsecond=0)
    res = http.post(
        "/api/sessions",
        json={"client_label": "N.O.", "planned_start": planned.isoformat(), "planned_minutes": 45},
    )
    assert res.status_code == 201, res.text
    session_id, invite_url = res.json()["id"], res.json()["invite_url"]
    t_ctx, t = new_page(
        browsers.therapist, server.base_url, log, "therapist", init_script=RECORD_NOTIFICATIONS_JS
    )
    t_ctx.grant_permissions(["notifications"], origin=server.base_url)
    c_ctx, c = new_page(browsers.client, server.base_url, log, "client")
    try:
        assert t.request.post("/api/login", data={"email": email, "password": password}).ok
        t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
        expect(stage_in(t, "waiting")).to_be_visible()
        assert t.evaluate("() => Notification.permission") == "granted"
        chime = t.get_by_test_id("arrival-chime")
        expect(chime).to_be_checked()
        chime.uncheck()
        wait_for(
            lambda: http.get("/api/me/preferences").json().get("arrival_chime") is False,
            10,
            "the chime setting to be saved",
        )
        lobby = t.get_by_test_id("lobby-section")
        chimes_before = lobby.get_attribute("data-chimes")  # None: never chimed here

        c.goto(invite_url, wait_until="domcontentloaded")
        expect(c.get_by_test_id("join-button")).to_be_enabled()
        c.get_by_test_id("display-name").fill("Noor")
        c.get_by_test_id("join-button").click()
        about = c.get_by_test_id("waiting-about")
        expect(about).to_contain_text("Your session with Dr. Ellis Moreau is planned for")
        expect(about).to_contain_text("(45 minutes)")

        t.wait_for_function("() => document.title.startsWith('(1) ')", timeout=20_000)
        notes = wait_for(
            lambda: t.evaluate("() => window.__notes.slice()") or None, 10, "a notification"
        )
        assert notes == [
            {
                "title": "Rapport: someone is in the waiting room",
                "body": "Noor is waiting to be admitted.",
            }
        ], notes
        assert lobby.get_attribute("data-chimes") == chimes_before  # silent
        assert not page_errors(log), log
    finally:
        http.put("/api/me/preferences", json=prefs_before)
        close_contexts(t_ctx, c_ctx)
        http.close()
