"""The client's page while it connects: every text it shows is meant for a person.

A newcomer saw the word "null" on the client page while the call was connecting (a value not
yet known, printed as it was). A MutationObserver installed before any script runs records
every text and title the page ever shows that contains "null", "undefined" or "NaN", from the
device check through the waiting room and admission until the call is connected.
"""

from __future__ import annotations

import re
import wave
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.server_process import RapportServer

from .conftest import CHROMIUM, chromium_args

pytestmark = pytest.mark.browser

WAIT_MS = 30_000

WATCH_JS = """
(() => {
  window.__badText = [];
  const bad = /\\b(null|undefined|NaN)\\b/;
  const check = (text, where) => {
    if (text && bad.test(text)) window.__badText.push(`${where}: ${text.trim().slice(0, 120)}`);
  };
  const scan = (node) => {
    if (node.nodeType === Node.TEXT_NODE) {
      const parent = node.parentElement;
      if (parent && !["SCRIPT", "STYLE"].includes(parent.tagName)) {
        const id = parent.dataset.testid || parent.className || parent.id || "";
        check(node.data, `${parent.tagName}.${id}`);
      }
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    for (const attr of ["title", "aria-label", "placeholder", "value"]) {
      if (node.hasAttribute(attr)) check(node.getAttribute(attr), `${node.tagName}[${attr}]`);
    }
    node.childNodes.forEach(scan);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "characterData") scan(r.target);
      else if (r.type === "attributes") scan(r.target);
      else r.addedNodes.forEach(scan);
    }
  }).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ["title", "aria-label", "placeholder", "value"],
  });
  document.addEventListener("DOMContentLoaded", () => scan(document.body));
})();
"""


def _silence_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(b"\0\0" * 48_000)
    return path


def _bad_text(page: Page) -> list[str]:
    found: list[str] = page.evaluate("() => window.__badText || []")
    return found


def test_the_client_page_never_shows_null_while_connecting(
    pw: Any, rapport_server: RapportServer, tmp_path: Path, console_log: list[str]
) -> None:
    # The run's shared server (a server of its own cost a start and two CLI runs), with an
    # account of its own so that no other test's session list sees this one's session.
    account = rapport_server.add_user("connecting.text@example.test", "amber-window-5150")
    _run(pw, rapport_server, account, _silence_wav(tmp_path / "silence.wav"), console_log)


def _run(
    pw: Any, server: RapportServer, account: tuple[str, str], mic: Path, log: list[str]
) -> None:
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
    try:
        t_ctx = browser.new_context(base_url=server.base_url)
        c_ctx = browser.new_context(base_url=server.base_url)
        for ctx in (t_ctx, c_ctx):
            ctx.set_default_timeout(WAIT_MS)
        c_ctx.add_init_script(WATCH_JS)
        t, c = t_ctx.new_page(), c_ctx.new_page()
        for page, name in ((t, "therapist"), (c, "client")):
            page.on("console", lambda m, n=name: log.append(f"[{n}] {m.type}: {m.text}"))
        email, password = account
        t.goto("/login?next=/sessions", wait_until="domcontentloaded")
        t.get_by_test_id("login-email").fill(email)
        t.get_by_test_id("login-password").fill(password)
        t.get_by_test_id("login-submit").click()
        t.wait_for_url(re.compile(r"/sessions$"), wait_until="domcontentloaded")
        t.get_by_test_id("create-session").click()
        expect(t.get_by_test_id("invite-url")).to_contain_text("/join/")
        invite_url = t.get_by_test_id("invite-url").inner_text().strip()
        t.get_by_test_id("open-created-room").click()
        t.wait_for_url(re.compile(r"/sessions/[^/]+$"), wait_until="domcontentloaded")

        c.goto(invite_url, wait_until="domcontentloaded")
        expect(c.get_by_test_id("join-button")).to_be_enabled()
        c.get_by_test_id("join-button").click()
        expect(c.get_by_test_id("waiting-message")).to_be_visible()
        assert _bad_text(c) == [], _bad_text(c)

        entry = t.get_by_test_id("lobby-entry")
        expect(entry).to_have_count(1)
        entry.get_by_test_id("admit-button").click()
        expect(c.get_by_test_id("connection-status")).to_have_text("Connected", timeout=WAIT_MS)
        expect(t.get_by_test_id("connection-status")).to_have_text("Connected", timeout=WAIT_MS)
        # A quality report or two after connecting (every 2 s): the indicators have rendered.
        c.wait_for_function(
            "() => document.querySelector('[data-testid=quality-you]')?.dataset.label"
            " && document.querySelector('[data-testid=quality-you]').dataset.label !== 'none'",
            polling=200,
            timeout=WAIT_MS,
        )
        assert _bad_text(c) == [], _bad_text(c)
    finally:
        browser.close()
