"""The login page's own ``safeNext``, run in chromium where the URL parsing that matters
happens, and the reported attack end to end (issue 12, item 4; tests/test_security_redirect.py
holds the cases and the server-side checks). On the browser tests' shared server: a server of
its own cost a start and two CLI runs, and a chromium of its own a launch.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Route

from tests.server_process import RapportServer
from tests.test_security_redirect import OFF_SITE, ON_SITE

from .conftest import Browsers

pytestmark = pytest.mark.browser


def test_browser_never_leaves_the_site_after_sign_in(
    rapport_server: RapportServer, browsers: Browsers
) -> None:
    server = rapport_server
    email, password = server.users["therapist"]
    blocked: list[str] = []

    def only_this_server(route: Route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context = browsers.therapist.new_context()  # type: ignore[attr-defined]
    try:
        page = context.new_page()
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
        context.close()
    assert blocked == []
