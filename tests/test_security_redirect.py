"""After sign-in the browser only ever goes to a page of this site (issue 12, item 4).

``/login?next=/%09/evil.example`` used to land on evil.example: the script accepted "/\\t/..."
as a local path and the browser's URL parser then dropped the tab, leaving "//evil.example".
Checked in three places: the server's ``safe_next``, the login page's redirect, and the page's
own ``safeNext`` running in chromium, where the URL parsing that matters happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Route

from server.security import safe_next
from tests.conftest import InProcessApp
from tests.server_process import NO_MEDIA, rapport_server_process

CHROMIUM = "/usr/bin/chromium"

OFF_SITE = [
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "//evil.example",
    "/\\evil.example",
    "/\\/evil.example",
    "\\\\evil.example",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "evil.example",
    " /\t/evil.example",
    "/\x00/evil.example",
    "/\x1f/evil.example",
    "/\u0085/evil.example",
    "/login?next=//evil.example",
]
ON_SITE = ["/sessions", "/sessions/abc123/summary?tab=agenda#top", "/admin", "/%2F/evil.example"]


def test_server_safe_next() -> None:
    assert [safe_next(v) for v in OFF_SITE] == [None] * len(OFF_SITE)
    assert [safe_next(v) for v in ON_SITE] == ON_SITE


async def test_login_page_drops_an_off_site_next(api: InProcessApp) -> None:
    async with api.client() as client:
        for value in OFF_SITE:
            r = await client.get(f"/login?next={quote(value, safe='')}")
            assert r.status_code == 303, (value, r.status_code)
            assert r.headers["location"] == "/login", value
        for value in ON_SITE:
            r = await client.get(f"/login?next={quote(value, safe='')}")
            assert r.status_code == 200, (value, r.status_code)


@pytest.mark.browser
def test_browser_never_leaves_the_site_after_sign_in(pw: Any, tmp_path: Path) -> None:
    with rapport_server_process(tmp_path, NO_MEDIA) as server:
        email, password = server.users["therapist"]
        blocked: list[str] = []

        def only_this_server(route: Route) -> None:
            if route.request.url.startswith(server.url + "/"):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            page.route("**/*", only_this_server)
            page.goto(f"{server.url}/login?next=/sessions")
            # The page's own function, in the browser, on every case.
            verdicts = page.evaluate(
                """async (values) => {
                    const { safeNext } = await import("/static/js/api.js");
                    return values.map((v) => {
                        const next = safeNext(v);
                        return next === null ? null
                            : new URL(next, location.origin).origin === location.origin;
                    });
                }""",
                OFF_SITE + ON_SITE,
            )
            assert verdicts[: len(OFF_SITE)] == [None] * len(OFF_SITE), verdicts
            assert verdicts[len(OFF_SITE) :] == [True] * len(ON_SITE), verdicts

            # The reported attack, end to end: sign in from the crafted link.
            page.goto(f"{server.url}/login?next=/%09/evil.example")
            page.get_by_test_id("login-email").fill(email)
            page.get_by_test_id("login-password").fill(password)
            page.get_by_test_id("login-submit").click()
            page.wait_for_url(f"{server.url}/sessions", timeout=15_000)
        finally:
            browser.close()
        assert blocked == []
