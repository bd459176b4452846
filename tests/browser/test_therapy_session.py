"""One whole therapy session in two real browsers, shared by the tests of this module.

The therapist's and the client's chromium each use a different looped speech script as the
fake microphone (therapist ~30 % talk, client ~60 %; see conftest.py). The tests check, in
order: the live panel against the metrics API, the shared agenda, that the client never gets
metrics (except the balance the therapist chooses to share), connection quality for both and
for an admin, the signals' accuracy against offline ground truth, the panel by keyboard with its
settings and cues, screenshots and axe on the live pages, and finally the end of the session:
the client's check-in by keyboard and the therapist's summary.

Waits are bounded; polling loops only wait for a condition, never stand in for an assertion.
"""

from __future__ import annotations

import re
import time
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
    RECORD_WS_JS,
    axe_violations,
    close_contexts,
    describe_violations,
    end_title,
    new_page,
    page_errors,
    shoot,
    wait_for,
    wait_video,
)

pytestmark = pytest.mark.browser
expect.set_options(timeout=20_000)

REMOTE = '[data-testid="remote-video"]'
LABEL = re.compile(r"\b(excellent|good|poor|lost)\b")
DEFAULT_PREFS = {
    "target_low": 0.5,
    "target_high": 0.8,
    "therapist_monologue": {"on": True, "minutes": 3},
    "share_below_band": {"on": True, "minutes": 5},
    "long_silence_seconds": 3,
    "panel_open": True,
}
ACCURACY_AFTER_S = 40.0


@dataclass
class Call:
    server: Any
    artifacts: Path
    t_ctx: BrowserContext
    t: Page
    c_ctx: BrowserContext
    c: Page
    session_id: str
    invite_url: str
    http: httpx.Client  # signed in as the therapist
    connected_at: float
    precheck: dict[str, str]
    console_lines: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.invite_url.rstrip("/").rsplit("/", 1)[-1]

    def metrics(self) -> dict[str, Any] | None:
        res = self.http.get(f"/api/sessions/{self.session_id}/metrics")
        if res.status_code == 404:
            return None
        assert res.status_code == 200, res.text
        data: dict[str, Any] = res.json()
        return data

    def timeline(self) -> list[dict[str, Any]]:
        res = self.http.get(f"/api/sessions/{self.session_id}/timeline")
        assert res.status_code == 200, res.text
        seconds: list[dict[str, Any]] = res.json()["seconds"]
        return seconds

    def prefs(self) -> dict[str, Any]:
        res = self.http.get("/api/me/preferences")
        assert res.status_code == 200, res.text
        data: dict[str, Any] = res.json()
        return data


def signed_in(server: Any, role: str) -> httpx.Client:
    email, password = server.users[role]
    http = httpx.Client(base_url=server.base_url, timeout=10)
    res = http.post("/api/login", json={"email": email, "password": password})
    assert res.status_code == 200, res.text
    return http


def focused_testid(page: Page) -> str | None:
    value = page.evaluate("() => document.activeElement && document.activeElement.dataset.testid")
    return value if isinstance(value, str) else None


def tab_to(page: Page, testid: str, max_tabs: int = 30, backwards: bool = False) -> None:
    """Move the keyboard focus with Tab (or Shift+Tab) until the element is focused."""
    for _ in range(max_tabs):
        if focused_testid(page) == testid:
            return
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    assert focused_testid(page) == testid, f"Tab never reached {testid}"


def assert_accessible(page: Page, what: str) -> None:
    violations = axe_violations(page)
    assert not violations, f"axe found WCAG A/AA problems on {what}:\n" + describe_violations(
        violations
    )


SCROLL_TOP_JS = """() => {
  const scrollers = '.side-panel, .side-stack, .room-main, .checkin-view';
  for (const el of document.querySelectorAll(scrollers)) el.scrollTop = 0;
  window.scrollTo(0, 0);
}"""


def both_viewports(
    page: Page, artifacts: Path, name: str, *, full_page: bool = False, top: bool = False
) -> None:
    """Pictures at 1280×800 and 390×844 (optionally scrolled back to the top first)."""
    for size, suffix in ((DESKTOP, "1280"), (PHONE, "390")):
        page.set_viewport_size(size)
        if top:
            page.evaluate(SCROLL_TOP_JS)
        page.wait_for_timeout(250)  # let layout settle before the picture (not an assertion)
        page.screenshot(path=str(artifacts / f"{name}-{suffix}.png"), full_page=full_page)
    page.set_viewport_size(DESKTOP)


@pytest.fixture(scope="module")
def call(rapport_server: Any, browsers: Any, artifacts_dir: Path) -> Iterator[Call]:
    server = rapport_server
    log: list[str] = []
    http = signed_in(server, "therapist")
    res = http.put("/api/me/preferences", json=DEFAULT_PREFS)
    assert res.status_code == 200, res.text
    # Same label as the session in test_session_flow, so the summary has a trend to show.
    res = http.post("/api/sessions", json={"client_label": "R.K."})
    assert res.status_code == 201, res.text
    session_id, invite_url = res.json()["id"], res.json()["invite_url"]

    t_ctx, t = new_page(browsers.therapist, server.base_url, log, "therapist")
    c_ctx, c = new_page(browsers.client, server.base_url, log, "client", init_script=RECORD_WS_JS)
    try:
        email, password = server.users["therapist"]
        res_t = t.request.post("/api/login", data={"email": email, "password": password})
        assert res_t.ok, res_t.text()

        # Client: device check with the pre-join connection check, then the waiting room.
        c.goto(invite_url, wait_until="domcontentloaded")
        expect(c.get_by_test_id("join-button")).to_be_enabled()
        expect(c.get_by_test_id("precheck-camera")).to_have_attribute("data-state", "ok")
        expect(c.get_by_test_id("precheck-mic")).to_have_attribute("data-state", "ok")
        network = c.get_by_test_id("precheck-network")
        expect(network).to_have_attribute("data-rtt-ms", re.compile(r"^\d+$"))
        precheck = {
            key: c.get_by_test_id(f"precheck-{key}").inner_text()
            for key in ("camera", "mic", "network")
        }
        precheck["network_state"] = network.get_attribute("data-state") or ""
        precheck["rtt_ms"] = network.get_attribute("data-rtt-ms") or ""
        both_viewports(c, artifacts_dir, "client-precheck")
        c.get_by_test_id("display-name").fill("Robin")
        c.get_by_test_id("join-button").click()
        expect(c.get_by_test_id("waiting-message")).to_be_visible()

        # Therapist opens the room and admits.
        t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
        # No balance while the client is not in the call: signals are not counting yet.
        status = t.get_by_test_id("balance-status")
        expect(status).to_have_attribute("data-state", "waiting")
        expect(status).to_have_text("Waiting for your client")
        expect(t.get_by_test_id("talk-balance")).to_be_hidden()
        t.get_by_test_id("admit-button").click()
        wait_video(t, "call", REMOTE)
        wait_video(c, "call", REMOTE)
        expect(t.get_by_test_id("connection-status")).to_have_text("Connected")
        expect(c.get_by_test_id("connection-status")).to_have_text("Connected")
        expect(status).to_have_attribute("data-state", "together")
        expect(t.get_by_test_id("talk-balance")).to_be_visible()
        yield Call(
            server=server,
            artifacts=artifacts_dir,
            t_ctx=t_ctx,
            t=t,
            c_ctx=c_ctx,
            c=c,
            session_id=session_id,
            invite_url=invite_url,
            http=http,
            connected_at=time.monotonic(),
            precheck=precheck,
            console_lines=log,
        )
    finally:
        close_contexts(t_ctx, c_ctx)
        http.close()


def test_panel_talk_balance_matches_metrics(call: Call) -> None:
    t = call.t
    wait_for(
        lambda: (
            (m := call.metrics()) is not None
            and m["duration_s"] >= 12
            and m["client_share"] is not None
            and m["therapist_talk_s"] > 0
        ),
        45,
        "12 s of signals with both people talking",
    )

    def compare() -> tuple[int, int] | None:
        before = t.get_by_test_id("talk-balance").inner_text()
        m = call.metrics()
        after = t.get_by_test_id("talk-balance").inner_text()
        assert re.fullmatch(r"\d{1,3}%", after), f"talk-balance shows {after!r}"
        assert m is not None
        api = round(100 * m["client_share"])
        panel = int(after[:-1])
        # Sampled at different instants: allow 3 points, and the panel must not be stuck.
        if abs(panel - api) <= 3 and before:
            return panel, api
        return None

    panel, api = wait_for(compare, 10, "the panel's talk balance to match /metrics within 3 points")
    assert abs(panel - api) <= 3

    m = call.metrics()
    assert m is not None
    # The counts are one click away, behind "Details".
    expect(t.get_by_test_id("turns")).to_be_hidden()
    t.get_by_test_id("details-toggle").click()
    expect(t.get_by_test_id("turns")).to_be_visible()
    expect(t.get_by_test_id("talk-balance-5min")).to_have_text(re.compile(r"^\d{1,3}%$"))
    for testid in (
        "turns",
        "long-silences",
        "backchannels",
        "interruptions-therapist",
        "interruptions-client",
    ):
        expect(t.get_by_test_id(testid)).to_have_text(re.compile(r"^\d+$"))
    assert abs(int(t.get_by_test_id("turns").inner_text()) - m["turns"]) <= 3
    for testid in ("monologue-therapist", "monologue-client"):
        expect(t.get_by_test_id(testid)).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(t.get_by_test_id("current-silence")).to_have_text(re.compile(r"^(–|\d+:\d\d)$"))

    # Who is speaking follows the `speaking` messages: both people are seen talking.
    seen: set[str] = set()

    def both_seen_speaking() -> bool:
        seen.add(t.get_by_test_id("speaking-now").inner_text())
        return "Both of you" in seen or {"You", "Client"} <= seen

    wait_for(both_seen_speaking, 25, "the panel to show both people speaking", interval=0.1)

    # The 10-minute timeline shows both speakers, with a text alternative.
    box = t.get_by_test_id("timeline")
    wait_for(
        lambda: (
            float(box.get_attribute("data-therapist-s") or 0) > 1
            and float(box.get_attribute("data-client-s") or 0) > 1
        ),
        15,
        "both speakers on the timeline",
    )
    assert t.locator('[data-testid="timeline"] .lane-therapist .lane-on').count() > 0
    assert t.locator('[data-testid="timeline"] .lane-client .lane-on').count() > 0
    expect(box.locator("svg")).to_have_attribute("role", "img")
    expect(t.get_by_test_id("timeline-text")).to_contain_text("you spoke for")
    expect(t.get_by_test_id("band-note")).to_contain_text("50–80%")
    assert not page_errors(call.console_lines), call.console_lines


def test_agenda_is_shared_live(call: Call) -> None:
    t, c = call.t, call.c
    t_items = t.get_by_test_id("agenda-item")
    c_items = c.get_by_test_id("agenda-item")

    # Therapist adds: the client sees it within a second.
    t.get_by_test_id("agenda-input").fill("How the week went")
    t.get_by_test_id("agenda-add").click()
    expect(c_items.filter(has_text="How the week went")).to_be_visible(timeout=1000)
    expect(t_items.filter(has_text="How the week went")).to_have_attribute("data-accepted", "true")

    # Client proposes; it is a proposal on both sides until the therapist accepts it.
    c.get_by_test_id("agenda-input").fill("My sister's visit")
    c.get_by_test_id("agenda-add").click()
    proposal_c = c_items.filter(has_text="My sister's visit")
    proposal_t = t_items.filter(has_text="My sister's visit")
    expect(proposal_c.get_by_test_id("agenda-proposed")).to_be_visible()
    expect(proposal_t).to_have_attribute("data-accepted", "false")
    expect(proposal_t.get_by_test_id("agenda-proposed")).to_be_visible()
    proposal_t.get_by_test_id("agenda-accept").click()
    expect(proposal_c).to_have_attribute("data-accepted", "true")
    expect(proposal_c.get_by_test_id("agenda-proposed")).to_have_count(0)
    # The client has no controls for changing the agenda.
    expect(c.get_by_test_id("agenda-accept")).to_have_count(0)
    expect(c.get_by_test_id("agenda-remove")).to_have_count(0)

    # Tick.
    t_items.filter(has_text="How the week went").get_by_test_id("agenda-done").check()
    expect(c_items.filter(has_text="How the week went")).to_have_attribute("data-done", "true")

    # Reorder with the keyboard: move the client's item up; focus follows the moved item.
    proposal_t.get_by_test_id("agenda-up").focus()
    t.keyboard.press("Enter")
    expect(c_items).to_contain_text(["My sister's visit", "How the week went"])
    expect(t_items).to_contain_text(["My sister's visit", "How the week went"])
    assert focused_testid(t) in {"agenda-up", "agenda-down"}
    active_item = t.evaluate(
        "() => document.activeElement.closest('[data-testid=agenda-item]').textContent"
    )
    assert "My sister's visit" in active_item

    # Edit the text (Enter saves).
    t_items.filter(has_text="How the week went").get_by_test_id("agenda-edit").click()
    edit = t.get_by_test_id("agenda-edit-input")
    expect(edit).to_be_focused()
    edit.fill("How the week went, briefly")
    # A proposal arriving meanwhile re-renders the list but leaves the edit alone.
    c.get_by_test_id("agenda-input").fill("Sleep")
    c.get_by_test_id("agenda-input").press("Enter")
    expect(t_items.filter(has_text="Sleep")).to_have_attribute("data-accepted", "false")
    expect(edit).to_be_focused()
    expect(edit).to_have_value("How the week went, briefly")
    edit.press("Enter")
    expect(c_items.filter(has_text="How the week went, briefly")).to_be_visible()

    # Remove (here: decline the proposal).
    expect(c_items).to_have_count(3)
    t_items.filter(has_text="Sleep").get_by_test_id("agenda-remove").click()
    expect(c_items).to_have_count(2)
    expect(t_items).to_have_count(2)

    # Homework: saved on blur, read-only for the client.
    t.get_by_test_id("homework").fill("Notice one calm moment each day.")
    t.get_by_test_id("homework").press("Tab")
    expect(c.get_by_test_id("homework")).to_have_text("Notice one calm moment each day.")
    expect(t.get_by_test_id("homework-status")).to_have_text("Homework saved.")
    assert c.get_by_test_id("homework").evaluate("el => el.tagName") == "P"
    assert not page_errors(call.console_lines), call.console_lines


def test_client_never_gets_metrics_but_sees_a_shared_balance(call: Call) -> None:
    t, c = call.t, call.c
    forbidden = {"signals", "speaking"}
    types = c.evaluate("() => window.__wsTypes")
    # The recorder works (it saw the ordinary traffic) and saw no metrics at all.
    assert {"welcome", "admitted", "agenda"} <= set(types), types
    assert not forbidden & set(types), f"the client received {forbidden & set(types)}"
    expect(c.get_by_test_id("shared-balance")).to_be_hidden()
    expect(c.get_by_test_id("talk-balance")).to_have_count(0)

    share = t.get_by_test_id("share-balance")
    expect(share).to_have_attribute("aria-pressed", "false")
    share.click()
    expect(share).to_have_attribute("aria-pressed", "true")
    expect(c.get_by_test_id("shared-balance")).to_be_visible(timeout=5000)
    expect(c.get_by_test_id("shared-you")).to_have_text(re.compile(r"^\d{1,3}%$"))
    you = int(c.get_by_test_id("shared-you").inner_text()[:-1])
    them = int(c.get_by_test_id("shared-them").inner_text()[:-1])
    assert 99 <= you + them <= 101

    share.click()
    expect(share).to_have_attribute("aria-pressed", "false")
    expect(c.get_by_test_id("shared-balance")).to_be_hidden()
    types = c.evaluate("() => window.__wsTypes")
    assert "shared_balance" in types
    assert not forbidden & set(types), f"the client received {forbidden & set(types)}"
    assert not page_errors(call.console_lines), call.console_lines


def test_connection_quality_for_participants_and_admin(call: Call, browsers: Any) -> None:
    t, c = call.t, call.c
    # The pre-join check found the camera, heard the microphone and timed a round trip.
    assert "camera is working" in call.precheck["camera"], call.precheck
    assert "hear your microphone" in call.precheck["mic"], call.precheck
    assert int(call.precheck["rtt_ms"]) >= 1, call.precheck
    assert call.precheck["network_state"] == "ok", call.precheck

    for page in (t, c):
        expect(page.get_by_test_id("quality-you")).to_contain_text(LABEL)
        expect(page.get_by_test_id("quality-peer")).to_contain_text(LABEL)
    expect(t.get_by_test_id("quality-peer")).to_contain_text("Client")
    expect(c.get_by_test_id("quality-peer")).to_contain_text("Therapist")

    admin_http = signed_in(call.server, "admin")
    m_ctx, m = new_page(browsers.therapist, call.server.base_url, call.console_lines, "admin")
    try:
        email, password = call.server.users["admin"]
        m.goto("/login", wait_until="domcontentloaded")
        m.get_by_test_id("login-email").fill(email)
        m.get_by_test_id("login-password").fill(password)
        m.get_by_test_id("login-submit").click()
        m.wait_for_url(re.compile(r"/admin$"), wait_until="domcontentloaded")

        row = m.locator(f'[data-testid="call-row"][data-session-id="{call.session_id}"]')
        expect(row).to_be_visible()
        expect(row.get_by_test_id("call-participants")).to_have_text("2")

        def api_call() -> dict[str, Any]:
            res = admin_http.get("/api/admin/calls")
            assert res.status_code == 200, res.text
            return next(x for x in res.json()["calls"] if x["session_id"] == call.session_id)

        def labels_agree() -> str | None:
            api_label = (api_call()["worst_quality"] or {}).get("label")
            shown = row.get_by_test_id("call-quality").get_attribute("data-label")
            known = {"excellent", "good", "poor", "lost"}
            return shown if shown == api_label and shown in known else None

        label = wait_for(labels_agree, 15, "the admin page's quality label to match the API")
        expect(row.get_by_test_id("call-quality")).to_contain_text(label)
        assert api_call()["participants"] == 2
        # The list refreshes by itself: the duration moves on without a reload.
        duration = row.get_by_test_id("call-duration").inner_text()
        expect(row.get_by_test_id("call-duration")).not_to_have_text(duration, timeout=6000)
        assert "R.K." not in m.content()  # no client labels for admins

        row.get_by_test_id("call-details").click()
        for key in ("rtt_ms", "loss", "jitter_ms", "bitrate_in", "fps"):
            expect(m.get_by_test_id(f"detail-{key}").locator("svg")).to_be_visible()
        expect(m.get_by_test_id("detail-summary")).to_contain_text(LABEL)
        expect(m.get_by_test_id("health-rooms")).to_have_text(re.compile(r"^\d+$"))
        expect(m.get_by_test_id("health-database")).to_have_text("reachable")
        # The server runs its default: one media worker process per core, all running.
        expect(m.get_by_test_id("health-workers")).to_have_text(
            re.compile(r"^(\d+) of \1 running \(CPU ")
        )
        expect(row.get_by_test_id("call-relay")).to_contain_text(re.compile(r"worker \d"))
        expect(m.get_by_test_id("incidents-summary")).not_to_have_text("Loading…")
        m.get_by_test_id("audit-session").fill(call.session_id)
        m.get_by_test_id("audit-action").fill("client_admitted")
        m.get_by_test_id("audit-apply").click()
        expect(m.get_by_test_id("audit-row")).to_have_count(1)
        expect(m.get_by_test_id("audit-summary")).to_contain_text("with action client_admitted")

        m.get_by_text("Latest samples as a table").click()
        # The candidate type comes from the browsers' own getStats() reports.
        expect(m.get_by_test_id("detail-table")).to_contain_text("host")
        both_viewports(m, call.artifacts, "admin", full_page=True)
        assert_accessible(m, "the admin page")

        # Roles stay apart both ways.
        assert admin_http.get("/api/sessions").status_code == 403
        assert admin_http.get(f"/api/sessions/{call.session_id}/metrics").status_code == 403
        assert admin_http.get(f"/sessions/{call.session_id}").status_code == 403
        assert call.http.get("/api/admin/calls").status_code == 403
        assert call.http.get("/admin").status_code == 403
    finally:
        m_ctx.close()
        admin_http.close()
    assert not page_errors(call.console_lines), call.console_lines


def test_signals_accuracy_against_offline_truth(call: Call, dialogue_wavs: Any) -> None:
    # Let the call run long enough (both scripts loop every 20 s).
    m = wait_for(
        lambda: (x := call.metrics()) is not None and x["duration_s"] >= ACCURACY_AFTER_S and x,
        ACCURACY_AFTER_S + 30,
        f"{ACCURACY_AFTER_S:.0f} s of session",
        interval=0.5,
    )
    panel_text = call.t.get_by_test_id("talk-balance").inner_text()
    seconds = call.timeline()
    m = call.metrics() or m

    # Each role's fake microphone loops its script from whenever that browser opened it, so
    # the truth is the script's talk rate (offline, same engine) times the time that role was
    # present; the two browsers' clocks differ, so overlap and silence are not compared.
    present_t = sum(1 for s in seconds if not s["therapist_absent"])
    present_c = sum(1 for s in seconds if not s["client_absent"])
    truth_t = dialogue_wavs.therapist_rate * present_t
    truth_c = dialogue_wavs.client_rate * present_c
    truth_share = truth_c / (truth_c + truth_t)
    report = (
        f"live: therapist {m['therapist_talk_s']:.1f} s, client {m['client_talk_s']:.1f} s, "
        f"share {m['client_share']:.3f}, panel {panel_text}; truth: therapist {truth_t:.1f} s "
        f"({present_t} s present), client {truth_c:.1f} s ({present_c} s present), "
        f"share {truth_share:.3f}; duration {m['duration_s']:.1f} s"
    )
    print(report)
    assert abs(m["client_share"] - truth_share) <= 0.05, report
    assert abs(m["therapist_talk_s"] - truth_t) <= 0.15 * truth_t, report
    assert abs(m["client_talk_s"] - truth_c) <= 0.15 * truth_c, report
    # What the therapist reads on the panel is the same number, rounded to a whole percent.
    assert abs(int(panel_text[:-1]) / 100 - truth_share) <= 0.055, report
    # And the client never received any of it.
    types = call.c.evaluate("() => window.__wsTypes")
    assert not {"signals", "speaking"} & set(types)


def test_panel_by_keyboard_settings_and_cues(call: Call) -> None:
    t = call.t
    t.evaluate("() => document.activeElement && document.activeElement.blur()")

    # Collapse and expand; the state is remembered in the preferences.
    tab_to(t, "panel-toggle")
    t.keyboard.press("Enter")
    expect(t.get_by_test_id("signals-body")).to_be_hidden()
    expect(t.get_by_test_id("panel-toggle")).to_have_attribute("aria-expanded", "false")
    wait_for(lambda: call.prefs()["panel_open"] is False, 5, "panel_open false to be saved")
    t.keyboard.press("Enter")
    expect(t.get_by_test_id("signals-body")).to_be_visible()
    wait_for(lambda: call.prefs()["panel_open"] is True, 5, "panel_open true to be saved")

    # Settings: a band above the current share and a short reminder, all by keyboard.
    tab_to(t, "settings-button", backwards=True)
    t.keyboard.press("Enter")
    dialog = t.get_by_test_id("settings-dialog")
    expect(dialog).to_be_visible()
    expect(t.get_by_test_id("settings-low")).to_be_focused()
    t.keyboard.press("Control+a")
    t.keyboard.type("90")
    tab_to(t, "settings-high")
    t.keyboard.press("Control+a")
    t.keyboard.type("98")
    tab_to(t, "settings-monologue-minutes")
    t.keyboard.press("Control+a")
    t.keyboard.type("0.015")
    tab_to(t, "settings-share-minutes")
    t.keyboard.press("Control+a")
    t.keyboard.type("0.05")
    t.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(t.get_by_test_id("settings-button")).to_be_focused()
    prefs = call.prefs()
    assert prefs["target_low"] == 0.9 and prefs["target_high"] == 0.98, prefs
    assert prefs["share_below_band"] == {"on": True, "minutes": 0.05}, prefs
    assert prefs["therapist_monologue"] == {"on": True, "minutes": 0.015}, prefs
    expect(t.get_by_test_id("band-note")).to_contain_text("90–98%")
    # The glance indicator says it by shape and word too, not by colour alone.
    glance = t.get_by_test_id("balance-glance")
    expect(glance).to_have_attribute("data-band", "below")
    expect(t.get_by_test_id("band-word")).to_have_text("Below your band")
    expect(glance.locator(".band-icon")).to_have_text("▼")

    # The gentle cues: a polite status region, each cue dismissible with the keyboard.
    expect(t.get_by_test_id("cues")).to_have_attribute("role", "status")
    below = t.get_by_test_id("cue").filter(has_text="below your band")
    expect(below).to_be_visible(timeout=15_000)
    expect(below).to_contain_text("Client share has been below your band for 3 seconds")
    # Both scripts have 5 s slots, so the therapist may always talk over the client; with the
    # client's microphone off, the therapist holds the floor and the monologue cue comes.
    call.c.get_by_test_id("mute-audio").click()
    monologue = t.get_by_test_id("cue").filter(has_text="You have been speaking for")
    expect(monologue).to_be_visible(timeout=25_000)
    expect(monologue).to_contain_text("You have been speaking for 1 second")
    shoot(t, call.artifacts, "therapist-cue-1280")
    # One cue slot: the newer cue took the place of the older one, nothing stacks.
    expect(t.get_by_test_id("cue")).to_have_count(1)
    call.c.get_by_test_id("mute-audio").click()
    expect(call.c.get_by_test_id("mute-audio")).to_have_attribute("aria-pressed", "false")
    # Once the client speaks, "You have been speaking…" is no longer true: it goes by itself.
    expect(monologue).to_have_count(0, timeout=25_000)
    while t.get_by_test_id("cue").count():
        tab_to(t, "cue-dismiss")
        t.keyboard.press("Enter")
    expect(t.get_by_test_id("cue")).to_have_count(0)

    # Escape closes without saving; focus returns to the settings button.
    tab_to(t, "settings-button", backwards=True)
    t.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    t.keyboard.press("Control+a")
    t.keyboard.type("10")
    t.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(t.get_by_test_id("settings-button")).to_be_focused()
    assert call.prefs()["target_low"] == 0.9

    # The server's 422 is shown in the dialog.
    t.keyboard.press("Enter")
    t.keyboard.press("Control+a")
    t.keyboard.type("80")
    tab_to(t, "settings-high")
    t.keyboard.press("Control+a")
    t.keyboard.type("60")
    t.keyboard.press("Enter")
    expect(t.get_by_test_id("settings-error")).to_contain_text("lower bound")
    expect(dialog).to_be_visible()
    shoot(t, call.artifacts, "therapist-settings-1280")
    assert_accessible(t, "the therapist room with the settings dialog open")

    # Back to the defaults, by keyboard too.
    tab_to(t, "settings-low", backwards=True)
    t.keyboard.press("Control+a")
    t.keyboard.type("50")
    tab_to(t, "settings-high")
    t.keyboard.press("Control+a")
    t.keyboard.type("80")
    tab_to(t, "settings-monologue-minutes")
    t.keyboard.press("Control+a")
    t.keyboard.type("3")
    tab_to(t, "settings-share-minutes")
    t.keyboard.press("Control+a")
    t.keyboard.type("5")
    t.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    prefs = call.prefs()
    assert (prefs["target_low"], prefs["target_high"]) == (0.5, 0.8), prefs
    assert prefs["share_below_band"]["minutes"] == 5, prefs
    assert prefs["therapist_monologue"]["minutes"] == 3, prefs
    # Cues that fired meanwhile are dismissed (the short reminders were on until now).
    while t.get_by_test_id("cue").count():
        t.get_by_test_id("cue-dismiss").first.click()
    assert not page_errors(call.console_lines), call.console_lines


def test_live_rooms_screenshots_and_accessibility(call: Call) -> None:
    t, c = call.t, call.c
    t.get_by_test_id("share-balance").click()  # so the client's picture shows the shared bar
    expect(c.get_by_test_id("shared-balance")).to_be_visible(timeout=5000)
    expect(t.get_by_test_id("talk-balance")).to_have_text(re.compile(r"^\d{1,3}%$"))

    both_viewports(t, call.artifacts, "therapist-room", top=True)
    t.get_by_test_id("agenda").scroll_into_view_if_needed()
    both_viewports(t, call.artifacts, "therapist-room-agenda")
    both_viewports(c, call.artifacts, "client-room", top=True)
    c.get_by_test_id("agenda").scroll_into_view_if_needed()
    c.set_viewport_size(PHONE)
    c.get_by_test_id("agenda").scroll_into_view_if_needed()
    c.wait_for_timeout(250)  # layout settles before the picture (not an assertion)
    shoot(c, call.artifacts, "client-room-agenda-390")
    c.set_viewport_size(DESKTOP)

    # The panel sits beside the video on a laptop and below it on a phone.
    t.set_viewport_size(DESKTOP)
    stage = t.get_by_test_id("stage").bounding_box()
    side = t.get_by_test_id("side-panel").bounding_box()
    assert stage and side and side["x"] >= stage["x"] + stage["width"], (stage, side)
    t.set_viewport_size(PHONE)
    stage = t.get_by_test_id("stage").bounding_box()
    panel = t.get_by_test_id("live-panel").bounding_box()
    assert stage and panel and panel["y"] >= stage["y"] + stage["height"], (stage, panel)
    t.set_viewport_size(DESKTOP)

    assert_accessible(t, "the therapist room")
    assert_accessible(c, "the client room")
    t.get_by_test_id("share-balance").click()
    expect(c.get_by_test_id("shared-balance")).to_be_hidden()
    assert not page_errors(call.console_lines), call.console_lines


def test_checkin_by_keyboard_and_the_summary(call: Call) -> None:
    t, c = call.t, call.c
    t.get_by_test_id("end-button").click()
    t.get_by_test_id("end-confirm-both").click()
    expect(end_title(t, "ended")).to_have_text("Session ended")
    expect(c.get_by_test_id("checkin-title")).to_be_visible()
    expect(c.get_by_test_id("checkin-title")).to_have_text("The session has ended")
    expect(c.get_by_test_id("checkin-bond")).to_be_visible()

    # The page-load path: the server still serves the page, and the GET says it is open.
    c.reload(wait_until="domcontentloaded")
    expect(c.get_by_test_id("checkin-bond")).to_be_visible()
    status = c.request.get(f"/api/join/{call.token}/checkin").json()
    assert status["open"] is True
    assert set(status["questions"]) == {"bond", "goals", "tasks", "overall"}
    for key, text in status["questions"].items():
        expect(c.get_by_test_id("checkin")).to_contain_text(text)
        expect(c.get_by_role("group", name=text)).to_have_attribute("data-testid", f"checkin-{key}")
    expect(c.get_by_test_id("self-video")).to_be_hidden()
    both_viewports(c, call.artifacts, "checkin", top=True)
    assert_accessible(c, "the check-in")

    # Keyboard only: Tab to each row of choices, Space picks 0, arrows move, Submit, Enter.
    answers = {"bond": 8, "goals": 7, "tasks": 4, "overall": 7}
    for key, value in answers.items():
        tab_to(c, f"checkin-{key}-0")
        c.keyboard.press("Space")
        for _ in range(value):
            c.keyboard.press("ArrowRight")
        expect(c.get_by_test_id(f"checkin-{key}-value")).to_have_text(str(value))
        expect(c.get_by_test_id(f"checkin-{key}-{value}")).to_be_checked()
    tab_to(c, "checkin-comment")
    c.keyboard.type("It helped to talk about my sister.")
    tab_to(c, "checkin-submit")
    c.keyboard.press("Enter")
    expect(c.get_by_test_id("checkin-done")).to_be_visible()
    expect(c.get_by_test_id("checkin-done")).to_contain_text("Thank you")
    both_viewports(c, call.artifacts, "checkin-done")

    # The therapist's summary, from the ended room.
    t.get_by_test_id("summary-link").click()
    t.wait_for_url(
        re.compile(rf"/sessions/{call.session_id}/summary$"), wait_until="domcontentloaded"
    )
    summary = call.http.get(f"/api/sessions/{call.session_id}/summary").json()
    # This client's first check-in: nothing to be lower than, so no flag.
    assert summary["checkin"]["total"] == 26 and summary["checkin"]["low"] is False
    box = t.get_by_test_id("checkin-summary")
    expect(box).to_contain_text("26 of 40")
    expect(t.get_by_test_id("checkin-low")).to_have_count(0)
    expect(box).to_contain_text("It helped to talk about my sister.")
    for key, value in answers.items():
        expect(t.get_by_test_id(f"checkin-score-{key}")).to_contain_text(str(value))
    agenda = summary["agenda"]
    expect(t.get_by_test_id("agenda-outcome")).to_have_text(
        f"{agenda['done']} of {agenda['total']} done"
    )
    expect(t.get_by_test_id("summary-homework")).to_have_text("Notice one calm moment each day.")
    expect(t.get_by_test_id("summary-share")).to_have_text(
        f"{round(100 * summary['metrics']['client_share'])}%"
    )
    assert t.locator('[data-testid="summary-timeline"] .lane-therapist .lane-on').count() > 0
    assert t.locator('[data-testid="summary-timeline"] .lane-client .lane-on').count() > 0
    expect(t.get_by_test_id("trend-share").locator("svg")).to_be_visible()
    expect(t.get_by_test_id("trend-checkin").locator("svg")).to_be_visible()
    for summary_text in ("All signals", "Timeline as a table (per minute)", "Trend as a table"):
        t.get_by_text(summary_text, exact=True).click()
    expect(t.get_by_test_id("signals-all")).to_contain_text("Backchannels")
    expect(t.get_by_test_id("trend-rows").locator("tbody tr")).to_have_count(len(summary["trend"]))
    expect(t.get_by_test_id("timeline-minutes").locator("tbody tr")).to_have_count(
        -(-len(summary["timeline"]) // 60)
    )

    # Exports.
    res = t.request.get(t.get_by_test_id("export-json").get_attribute("href") or "")
    assert res.ok and res.json()["session"]["id"] == call.session_id
    res = t.request.get(t.get_by_test_id("export-csv").get_attribute("href") or "")
    assert res.ok and call.session_id in res.text()
    assert res.headers["content-type"].startswith("text/csv")

    both_viewports(t, call.artifacts, "summary", full_page=True)
    assert_accessible(t, "the summary page")

    # The sessions list links to the summary of an ended session.
    t.goto("/sessions", wait_until="domcontentloaded")
    item = t.locator(f'[data-testid="session-item"][data-session-id="{call.session_id}"]')
    expect(item.get_by_test_id("summary-link")).to_have_attribute(
        "href", f"/sessions/{call.session_id}/summary"
    )
    assert not page_errors(call.console_lines), call.console_lines
