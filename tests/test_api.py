"""HTTP API: sign-in, roles, sessions, invites, setup, pages (served in-process: no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select, update

from server.app import first_run_setup_link
from server.db import Database
from server.models import AuditEvent, LoginSession, TherapySession, UserRole
from tests.conftest import PASSWORD, InProcessApp, add_user


async def test_login_sets_httponly_samesite_cookie(api: InProcessApp) -> None:
    await add_user(api.settings, "a@example.org", UserRole.THERAPIST)
    async with api.client() as http:
        response = await http.post(
            "/api/login", json={"email": "A@example.org", "password": PASSWORD}
        )
        assert response.status_code == 200
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert (await http.get("/api/me")).json()["user"]["role"] == "therapist"
        assert (await http.post("/api/logout")).status_code == 204
        assert (await http.get("/api/me")).status_code == 401


async def test_wrong_password_and_unknown_email_look_the_same(api: InProcessApp) -> None:
    await add_user(api.settings, "b@example.org", UserRole.THERAPIST)
    async with api.client() as http:
        wrong = await http.post("/api/login", json={"email": "b@example.org", "password": "nope"})
        unknown = await http.post("/api/login", json={"email": "x@example.org", "password": "no"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_idle_login_expires(api: InProcessApp, therapist: httpx.AsyncClient) -> None:
    database = Database(api.settings.database_url)
    async with database.session() as db:
        old = datetime.now(UTC) - timedelta(minutes=api.settings.login_idle_minutes + 1)
        await db.execute(update(LoginSession).values(last_seen_at=old))
        await db.commit()
    await database.dispose()
    assert (await therapist.get("/api/sessions")).status_code == 401


async def test_create_session_returns_unguessable_invite(therapist: httpx.AsyncClient) -> None:
    response = await therapist.post("/api/sessions", json={"client_label": "Client A"})
    assert response.status_code == 201
    body = response.json()
    token = body["invite_url"].rsplit("/join/", 1)[1]
    assert len(token) >= 43  # 32 random bytes, base64url: 256 bits
    assert body["id"] and body["status"] == "scheduled"
    listed = (await therapist.get("/api/sessions")).json()["sessions"]
    assert [s["id"] for s in listed] == [body["id"]]
    page = await therapist.get(body["invite_url"])
    assert page.status_code == 200 and 'data-testid="join-button"' in page.text
    assert "rapport_client" in page.headers.get("set-cookie", "")


async def test_roles_are_enforced(
    api: InProcessApp, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    assert (await admin.post("/api/sessions", json={})).status_code == 403
    assert (await admin.get("/api/sessions")).status_code == 403
    assert (await therapist.get("/api/admin/audit")).status_code == 403
    assert (await admin.get("/api/admin/audit")).status_code == 200
    async with api.client() as anonymous:
        assert (await anonymous.get("/api/sessions")).status_code == 401
        redirect = await anonymous.get("/sessions/abc")
        assert redirect.status_code == 303 and "/login?next=" in redirect.headers["location"]


async def test_other_therapists_session_is_not_found(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    created = (await therapist.post("/api/sessions", json={})).json()
    await add_user(api.settings, "other@example.org", UserRole.THERAPIST)
    async with api.client() as other:
        await other.post("/api/login", json={"email": "other@example.org", "password": PASSWORD})
        assert (await other.get(f"/api/sessions/{created['id']}")).status_code == 404
        assert (await other.get(f"/sessions/{created['id']}")).status_code == 404


async def test_expired_unknown_and_renewed_invites(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    created = (await therapist.post("/api/sessions", json={})).json()
    async with api.client() as browser:
        unknown = await browser.get(api.url + "/join/not-a-real-token")
        assert unknown.status_code == 404 and "does not open a session" in unknown.text
        renewed = (await therapist.post(f"/api/sessions/{created['id']}/invite")).json()
        old = await browser.get(created["invite_url"])
        assert old.status_code == 404  # the previous link stops working
        assert (await browser.get(renewed["invite_url"])).status_code == 200
        database = Database(api.settings.database_url)
        async with database.session() as db:
            await db.execute(
                update(TherapySession).values(
                    invite_expires_at=datetime.now(UTC) - timedelta(minutes=1)
                )
            )
            await db.commit()
        await database.dispose()
        expired = await browser.get(renewed["invite_url"])
        assert expired.status_code == 410 and "expired" in expired.text


async def test_invite_ttl_is_configurable(therapist: httpx.AsyncClient) -> None:
    body = (await therapist.post("/api/sessions", json={"invite_ttl_hours": 2})).json()
    expires = datetime.fromisoformat(body["invite_expires_at"].replace("Z", "+00:00"))
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert timedelta(hours=1.9) < expires - created < timedelta(hours=2.1)
    default = (await therapist.post("/api/sessions", json={})).json()
    expires = datetime.fromisoformat(default["invite_expires_at"].replace("Z", "+00:00"))
    assert expires - datetime.now(UTC) > timedelta(hours=23)


async def test_first_run_setup_link_creates_one_account_once(api: InProcessApp) -> None:
    database = Database(api.settings.database_url)
    link = await first_run_setup_link(database, api.settings)
    assert link is not None
    token = link.rsplit("/", 1)[1]
    async with api.client() as http:
        assert (await http.get(f"/api/setup/{token}")).json() == {"valid": True}
        short = await http.post(
            "/api/setup", json={"token": token, "email": "f@example.org", "password": "short"}
        )
        assert short.status_code == 422
        made = await http.post(
            "/api/setup",
            json={
                "token": token,
                "email": "f@example.org",
                "password": "a long enough one",
                "role": "admin",
            },
        )
        assert made.status_code == 201 and made.json()["user"]["role"] == "admin"
        assert (await http.get("/api/me")).status_code == 200
        again = await http.post(
            "/api/setup",
            json={"token": token, "email": "g@example.org", "password": "a long enough one"},
        )
        assert again.status_code == 410
    assert await first_run_setup_link(database, api.settings) is None
    async with database.session() as db:
        actions = (await db.scalars(select(AuditEvent.action))).all()
    assert "user_created" in actions
    await database.dispose()


async def test_health_and_security_headers(api: InProcessApp) -> None:
    async with api.client() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "media": True}
        page = await http.get("/login")
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-frame-options"] == "DENY"
