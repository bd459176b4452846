"""After sign-in the browser only ever goes to a page of this site (issue 12, item 4).

``/login?next=/%09/evil.example`` used to land on evil.example: the script accepted "/\\t/..."
as a local path and the browser's URL parser then dropped the tab, leaving "//evil.example".
Checked in three places: the server's ``safe_next``, the login page's redirect, and the page's
own ``safeNext`` running in chromium, where the URL parsing that matters happens (that one in
tests/browser/test_sign_in_redirect.py, on the browser tests' shared server).
"""

from __future__ import annotations

from urllib.parse import quote

from server.security import safe_next
from tests.conftest import InProcessApp

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
