"""In a real browser: the therapist removes the admitted client with the room's button (after
a confirmation), and the client's page says so clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from .helpers import end_detail, end_title
from .test_session_flow import Browsers, RapportServer, _open, audit_actions, client_joins

pytestmark = pytest.mark.browser


def test_therapist_removes_the_client_after_confirming(
    rapport_server: RapportServer, browsers: Browsers, console_log: list[str], artifacts_dir: Path
) -> None:
    server = rapport_server
    t_ctx, t = _open(browsers.therapist, server, console_log, "therapist")
    c_ctx, c = _open(browsers.client, server, console_log, "client")
    try:
        # Its own account: test_session_flow counts the shared therapist's sessions.
        email, password = server.add_user("remove.therapist@example.test", "still-harbor-6603")
        assert t.request.post("/api/login", data={"email": email, "password": password}).ok
        created = t.request.post("/api/sessions", data={"client_label": "Remove test"}).json()
        t.goto(f"/sessions/{created['id']}", wait_until="domcontentloaded")
        client_joins(c, created["invite_url"], "Robin")
        t.get_by_test_id("admit-button").click()

        remove = t.get_by_test_id("remove-button")
        expect(remove).to_be_visible()
        remove.click()
        expect(remove).to_have_attribute("aria-expanded", "true")
        t.get_by_test_id("remove-cancel-button").click()  # nothing happens without confirming
        expect(t.get_by_test_id("remove-confirm")).to_be_hidden()
        expect(end_title(c, "denied")).to_have_count(0)

        remove.click()
        t.get_by_test_id("remove-confirm-button").click()
        expect(end_title(c, "denied")).to_contain_text("removed")
        expect(end_detail(c, "denied")).to_contain_text("removed you")
        expect(t.get_by_test_id("peer-status")).to_have_attribute("data-present", "false")
        expect(remove).to_be_hidden()
        events = audit_actions(server, created["id"], {"client_removed"})
        assert "client_removed" in {e["action"] for e in events}
        assert not [line for line in console_log if "pageerror" in line], console_log
    finally:
        t_ctx.close()
        c_ctx.close()
