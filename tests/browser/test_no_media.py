"""A call whose media never connects, in real browsers: `no_media`, never "excellent".

Issues 14 and 16 ("honest states"): a participant in the call whose media has not connected
within ~10 s is `no_media` on both pages and on the admin page, and the page says what to try.
tests/test_faults.py checks the server's messages, the admin API and /metrics; this checks
what the people see. The client's browser is cut off from media the way a strict firewall
would: it may only use relays and has none, so it gathers no candidate and sends no check
(the server cannot learn its address either), while its signalling works.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import expect

from .helpers import close_contexts, new_page, open_and_admit, page_errors

pytestmark = pytest.mark.browser

NO_MEDIA_DEADLINE_MS = 25_000  # the room says no_media 9 s after admission; slack for load

# Every peer connection the client's page makes may use relays only, and it is given none.
NO_ROUTE_JS = """(() => {
  const Native = window.RTCPeerConnection;
  const cut = (config) => ({ ...(config || {}), iceServers: [], iceTransportPolicy: "relay" });
  window.RTCPeerConnection = class extends Native {
    constructor(config, ...rest) { super(cut(config), ...rest); }
    setConfiguration(config) { return super.setConfiguration(cut(config)); }
  };
})()"""

# Every quality label either indicator ever shows (testid:label), from the first moment.
RECORD_LABELS_JS = """(() => {
  const seen = new Set();
  Object.defineProperty(window, "__labels", { get: () => [...seen] });
  new MutationObserver((records) => {
    for (const r of records) {
      const t = r.target;
      if (t.dataset && t.dataset.label && (t.dataset.testid || "").startsWith("quality-")) {
        seen.add(`${t.dataset.testid}:${t.dataset.label}`);
      }
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-label"] });
})()"""


def test_a_client_whose_media_never_connects_is_no_media_on_both_pages_and_the_admin_page(
    rapport_server: Any, browsers: Any
) -> None:
    server = rapport_server
    log: list[str] = []
    email, password = server.users["therapist"]
    t_ctx, t = new_page(browsers.therapist, server.base_url, log, "therapist",
                        init_script=RECORD_LABELS_JS)  # fmt: skip
    c_ctx, c = new_page(browsers.client, server.base_url, log, "client",
                        init_script=NO_ROUTE_JS + ";" + RECORD_LABELS_JS)  # fmt: skip
    m_ctx, m = new_page(browsers.therapist, server.base_url, log, "admin")
    try:
        login = {"email": email, "password": password}
        assert t.request.post("/api/login", data=login).ok
        created = t.request.post("/api/sessions", data={"client_label": "N.M."})
        assert created.status == 201, created.text()
        session_id, invite_url = created.json()["id"], created.json()["invite_url"]
        open_and_admit(t, c, session_id, invite_url, name="Nico")
        admitted = time.monotonic()

        # The client's own indicator: no media, and what to try, in words.
        you = c.get_by_test_id("quality-you")
        expect(you).to_have_attribute("data-label", "no_media", timeout=NO_MEDIA_DEADLINE_MS)
        expect(you).to_contain_text("no media")
        advice = c.get_by_test_id("quality-advice")
        expect(advice).to_be_visible()
        expect(advice).to_contain_text("check your network")
        client_after = time.monotonic() - admitted
        # The therapist's view of the client.
        peer = t.get_by_test_id("quality-peer")
        expect(peer).to_have_attribute("data-label", "no_media", timeout=NO_MEDIA_DEADLINE_MS)
        expect(peer).to_contain_text("no media")

        # The admin's live calls.
        admin_email, admin_password = server.users["admin"]
        assert m.request.post(
            "/api/login", data={"email": admin_email, "password": admin_password}
        ).ok
        m.goto("/admin", wait_until="domcontentloaded")
        row = m.locator(f'[data-testid="call-row"][data-session-id="{session_id}"]')
        expect(row.get_by_test_id("call-quality")).to_have_attribute(
            "data-label", "no_media", timeout=NO_MEDIA_DEADLINE_MS
        )
        expect(row.get_by_test_id("call-quality")).to_contain_text("no media")
        print(f"\nno_media on the client's page {client_after:.1f} s after admission")

        # Never "excellent" (or any score) for a call that never carried media.
        # (The therapist's own media is fine: only what each page says about the client.)
        for page, about_client in ((t, "quality-peer"), (c, "quality-you")):
            labels = page.evaluate("() => window.__labels")
            scored = [x for x in labels if x.startswith(f"{about_client}:")]
            assert scored and not {x.split(":")[1] for x in scored} - {"none", "unknown",
                "no_media", "lost"}, labels  # fmt: skip
        assert not page_errors(log), log
    finally:
        close_contexts(t_ctx, c_ctx, m_ctx)
