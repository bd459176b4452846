"""In-call chat in real browsers (issue 13): from the waiting room to the therapist and back,
both ways in the call, the unread badge, clickable links, typed markup shown as text, the
length cap losing nothing, history after the client reloads, and the panel on a 390 px phone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from .helpers import axe_violations, describe_violations, page_errors, shoot
from .test_session_flow import DESKTOP, PHONE, Browsers, RapportServer, _open, client_joins

pytestmark = pytest.mark.browser

MESSAGES = '[data-testid="chat-log"] [data-testid="chat-message"]'
ENDED_OR_CONFIRM_JS = """
() => {
  const stage = document.querySelector('[data-testid="stage"]');
  const confirm = document.querySelector('[data-testid="end-confirm-both"]');
  const asking = Boolean(confirm && !confirm.closest("[hidden]"));
  return (stage && stage.dataset.state === "ended") || asking;
}
"""
READY_TO_REJOIN_JS = """
() => {
  const shown = (id) => {
    const e = document.querySelector(`[data-testid="${id}"]`);
    return Boolean(e && !e.closest("[hidden]") && !e.disabled);
  };
  return shown("join-button") || shown("controls");
}
"""


def _setup(
    server: RapportServer, t: Page, c: Page, email: str, client_name: str = "Robin"
) -> dict[str, Any]:
    """The therapist (its own account) in a new session's room, the client in its waiting room."""
    email, password = server.add_user(email, "still-harbor-6603", name="Dr. Rey")
    assert t.request.post("/api/login", data={"email": email, "password": password}).ok
    created: dict[str, Any] = t.request.post(
        "/api/sessions", data={"client_label": "Jordan Doe (private label)"}
    ).json()
    t.goto(f"/sessions/{created['id']}", wait_until="domcontentloaded")
    client_joins(c, created["invite_url"], client_name)
    expect(t.get_by_test_id("lobby-entry")).to_have_count(1)
    return created


def _say(page: Page, text: str) -> None:
    """Type into the open chat panel and press Enter."""
    box = page.get_by_test_id("chat-input")
    box.fill(text)
    box.press("Enter")


def _open_chat(page: Page) -> None:
    toggle = page.get_by_test_id("chat-toggle")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    expect(page.get_by_test_id("chat-panel")).to_be_visible()


def _chat_axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe (WCAG 2.1 A/AA) on the chat's own parts: the panel and its toggle."""
    return axe_violations(page, ['[data-testid="chat-dock"]', '[data-testid="chat-toggle"]'])


def _texts(page: Page) -> list[str]:
    return page.locator(f'{MESSAGES} [data-testid="chat-text"]').all_inner_texts()


def test_chat_from_the_waiting_room_then_both_ways_with_links_markup_and_unread(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str], artifacts_dir: Path
) -> None:
    server = rapport_server
    t_ctx, t = _open(browsers.therapist, server, console_log, "therapist")
    c_ctx, c = _open(browsers.client, server, console_log, "client")
    try:
        _setup(server, t, c, "chat.therapist@example.test")

        # The waiting client writes; the therapist sees it in the lobby entry and the badge.
        expect(c.get_by_test_id("chat-toggle")).to_be_visible()
        _open_chat(c)
        expect(c.get_by_test_id("chat-title")).to_have_text("Chat with your therapist")
        _say(c, "Running 5 minutes late, sorry!")
        expect(c.locator(MESSAGES)).to_have_count(1)
        expect(c.get_by_test_id("chat-input")).to_have_value("")
        expect(t.get_by_test_id("lobby-chat")).to_have_text("“Running 5 minutes late, sorry!”")
        expect(t.get_by_test_id("chat-unread")).to_have_text("1")
        shoot(c, artifacts_dir, "chat-client-waiting-room")
        shoot(t, artifacts_dir, "chat-therapist-lobby")
        violations = _chat_axe_violations(c)
        assert not violations, describe_violations(violations)

        # The therapist replies from the lobby entry; only the waiting client gets it.
        t.get_by_test_id("chat-reply").click()
        expect(t.get_by_test_id("chat-panel")).to_be_visible()
        expect(t.get_by_test_id("chat-unread")).to_be_hidden()
        expect(t.get_by_test_id("chat-to")).to_contain_text("Robin")
        name = t.locator(f'{MESSAGES} [data-testid="chat-name"]').first
        expect(name).to_have_text("Robin")  # the name they chose, not the private label
        _say(t, "No problem, see you soon")
        reply = c.locator(MESSAGES).nth(1)
        expect(reply.get_by_test_id("chat-text")).to_have_text("No problem, see you soon")
        expect(reply.get_by_test_id("chat-name")).to_have_text("Dr. Rey")
        expect(reply.get_by_test_id("chat-time")).to_have_text(re.compile(r"\d"))
        assert "Jordan" not in c.get_by_test_id("chat-panel").inner_text()

        # Admitted: the conversation carries on in the call.
        t.get_by_test_id("admit-button").click()
        expect(c.get_by_test_id("controls")).to_be_visible()
        expect(c.get_by_test_id("controls").get_by_test_id("chat-toggle")).to_be_visible()
        expect(c.locator(MESSAGES)).to_have_count(2)
        c.get_by_test_id("chat-close").click()
        expect(c.get_by_test_id("chat-panel")).to_be_hidden()

        # A link (to this test's own server, so clicking it stays on this machine).
        link_url = f"{server.base_url}/healthz"
        _say(t, f"The worksheet: {link_url}. Take a look")
        expect(c.get_by_test_id("chat-unread")).to_have_text("1")
        _say(t, "And one more thing")
        expect(c.get_by_test_id("chat-unread")).to_have_text("2")
        shoot(c, artifacts_dir, "chat-client-unread")
        _open_chat(c)
        expect(c.get_by_test_id("chat-unread")).to_be_hidden()
        link = c.locator(f'{MESSAGES} a[href="{link_url}"]')
        expect(link).to_have_text(link_url)  # the full stop after it is not part of it
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        with c_ctx.expect_page() as popup:
            link.click()
        opened = popup.value
        opened.wait_for_load_state("domcontentloaded")
        assert opened.url == link_url
        assert opened.evaluate("() => window.opener") is None
        opened.close()

        # Typed markup is shown as the text typed, both ways; Shift+Enter is a new line.
        markup = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
        _say(c, markup)
        expect(t.locator(MESSAGES).last.get_by_test_id("chat-text")).to_have_text(markup)
        box = c.get_by_test_id("chat-input")
        box.fill("line one")
        box.press("Shift+Enter")
        box.press_sequentially("line two")
        c.get_by_test_id("chat-send").click()
        lines = t.locator(MESSAGES).last.get_by_test_id("chat-text")
        expect(lines).to_have_text(re.compile("line one.line two", re.S))
        assert lines.inner_text() == "line one\nline two"
        for page in (t, c):
            assert (
                page.locator('[data-testid="chat-log"] img, [data-testid="chat-log"] b').count()
                == 0
            )
            assert page.evaluate("() => window.__pwned") is None
        assert _texts(c) == _texts(t)
        assert len(_texts(c)) == 6

        # Too long: a precise error, and the text stays in the box.
        too_long = "x" * 2001
        box.fill(too_long)
        c.get_by_test_id("chat-send").click()
        expect(c.get_by_test_id("chat-error")).to_contain_text("2001")
        expect(box).to_have_value(too_long)
        expect(c.locator(MESSAGES)).to_have_count(6)
        shoot(t, artifacts_dir, "chat-therapist-panel")
        violations = _chat_axe_violations(t)
        assert not violations, describe_violations(violations)
        assert not page_errors(console_log), console_log
    finally:
        t_ctx.close()
        c_ctx.close()


def test_chat_history_survives_a_client_reload_on_a_phone(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str], artifacts_dir: Path
) -> None:
    server = rapport_server
    t_ctx, t = _open(browsers.therapist, server, console_log, "therapist")
    c_ctx = browsers.client.new_context(viewport=PHONE, base_url=server.base_url)
    c_ctx.set_default_timeout(30_000)
    c = c_ctx.new_page()
    c.on("console", lambda msg: console_log.append(f"[client] {msg.type}: {msg.text}"))
    c.on("pageerror", lambda err: console_log.append(f"[client] pageerror: {err}"))
    try:
        _setup(server, t, c, "chat.reload@example.test", client_name="")
        t.get_by_test_id("admit-button").click()
        expect(c.get_by_test_id("controls")).to_be_visible()
        _open_chat(t)
        _say(t, "Welcome. How was the week?")
        _open_chat(c)
        expect(c.locator(MESSAGES)).to_have_count(1)
        _say(c, "Long, but better than the last one.")
        expect(t.locator(MESSAGES)).to_have_count(2)
        expect(t.locator(MESSAGES).last.get_by_test_id("chat-name")).to_have_text(
            "Jordan Doe (private label)"  # the therapist's own label, for the therapist only
        )
        expect(c.locator(MESSAGES).last.get_by_test_id("chat-name")).to_have_text("You")

        # Fits a 390 px phone: the panel and its send button are on screen.
        for testid in ("chat-panel", "chat-send", "chat-input"):
            box = c.get_by_test_id(testid).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
                testid,
                box,
            )
        shoot(c, artifacts_dir, "chat-client-phone")
        t.set_viewport_size(PHONE)  # the therapist's room on a phone too
        t.get_by_test_id("chat-toggle").scroll_into_view_if_needed()
        for testid in ("chat-toggle", "chat-panel", "chat-send"):
            box = t.get_by_test_id(testid).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
                testid,
                box,
            )
        shoot(t, artifacts_dir, "chat-therapist-phone")

        c.reload(wait_until="domcontentloaded")
        # Back in the call: straight away, or through the Join button of the device check.
        c.wait_for_function(READY_TO_REJOIN_JS)
        join = c.get_by_test_id("join-button")
        if join.is_visible():
            join.click()
        expect(c.get_by_test_id("controls")).to_be_visible()
        toggle = c.get_by_test_id("chat-toggle")
        expect(toggle).to_be_visible()
        expect(c.get_by_test_id("chat-unread")).to_be_hidden()  # already read before the reload
        _open_chat(c)
        expect(c.locator(MESSAGES)).to_have_count(2)
        assert _texts(c) == ["Welcome. How was the week?", "Long, but better than the last one."]
        _say(t, "Good to have you back")
        expect(c.locator(MESSAGES)).to_have_count(3)
        assert "Jordan" not in c.get_by_test_id("chat-panel").inner_text()

        # The session ends: the chat goes from both pages (and from the server).
        t.set_viewport_size(DESKTOP)
        t.get_by_test_id("end-button").click()
        confirm_both = t.get_by_test_id("end-confirm-both")  # if ending asks first
        t.wait_for_function(ENDED_OR_CONFIRM_JS)
        if confirm_both.is_visible():
            confirm_both.click()
        expect(c.get_by_test_id("chat-toggle")).to_be_hidden()
        expect(c.get_by_test_id("chat-panel")).to_be_hidden()
        expect(t.get_by_test_id("chat-toggle")).to_be_hidden()
        assert c.locator(MESSAGES).count() == 0
        assert not page_errors(console_log), console_log
    finally:
        t_ctx.close()
        c_ctx.close()
