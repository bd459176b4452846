"""HTTP hardening (issue 12, item 8's HTTP parts): cross-origin writes, API docs, headers,
/metrics, the one-time setup link, database file modes."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from server.app import create_app, first_run_setup_link
from server.db import Database
from server.models import User
from server.settings import Settings
from tests.conftest import InProcessApp, make_settings


async def test_unsafe_requests_from_another_origin_are_refused(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    evil = "http://127.0.0.1:9999"  # same site, another port: SameSite=Lax cookies still go
    created = await therapist.post("/api/sessions", json={"client_label": "A"})
    assert created.status_code in (200, 201), created.text
    r = await therapist.post("/api/sessions", json={"client_label": "B"}, headers={"Origin": evil})
    assert r.status_code == 403
    assert "Cross-site" in r.json()["detail"]
    r = await therapist.post(
        "/api/logout", headers={"Referer": f"{evil}/page"}
    )  # no Origin: Referer decides
    assert r.status_code == 403
    r = await therapist.post(
        "/api/sessions", json={"client_label": "C"}, headers={"Origin": "null"}
    )
    assert r.status_code == 403
    own = await therapist.post(
        "/api/sessions", json={"client_label": "D"}, headers={"Origin": api.url}
    )
    assert own.status_code in (200, 201)
    # Reads are not writes.
    assert (await therapist.get("/api/me", headers={"Origin": evil})).status_code == 200


async def test_docs_are_off_by_default_and_can_be_enabled(tmp_path: Path) -> None:
    for enabled, expected in ((False, 404), (True, 200)):
        settings = make_settings(tmp_path / str(enabled), 8000, media_workers=0)
        settings.api_docs = enabled
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as c:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (await c.get(path)).status_code == expected, (path, enabled)


async def test_security_headers(api: InProcessApp, therapist: httpx.AsyncClient) -> None:
    me = await therapist.get("/api/me")
    assert me.headers["cache-control"] == "no-store"
    page = await therapist.get("/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "strict-transport-security" not in page.headers  # plain http: no HSTS
    assert "<script>" not in page.text  # nothing inline for the policy to block


async def test_hsts_when_public_url_is_https(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 8000, media_workers=0)
    settings.public_url = "https://rapport.example.org"
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as c:
        r = await c.get("/healthz")
    assert r.headers["strict-transport-security"] == "max-age=31536000"


async def test_metrics_need_a_token_or_loopback(tmp_path: Path) -> None:
    async def get(settings: Settings, address: str, token: str | None = None) -> int:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=(address, 1))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as c:
            return (await c.get("/metrics", headers=headers)).status_code

    open_settings = make_settings(tmp_path / "a", 8000, media_workers=0)
    assert await get(open_settings, "127.0.0.1") == 200
    assert await get(open_settings, "192.0.2.10") == 403
    with_token = make_settings(tmp_path / "b", 8000, media_workers=0)
    with_token.metrics_token = "s3cret-token-value"
    assert await get(with_token, "192.0.2.10", "s3cret-token-value") == 200
    assert await get(with_token, "192.0.2.10", "wrong") == 401
    assert await get(with_token, "127.0.0.1") == 401


async def test_setup_link_makes_exactly_one_account(api: InProcessApp) -> None:
    database = Database(api.settings.database_url)
    link = await first_run_setup_link(database, api.settings)
    assert link is not None
    token = link.rsplit("/", 1)[1]

    async def use(n: int) -> int:
        async with api.client() as client:
            r = await client.post(
                "/api/setup",
                json={
                    "token": token,
                    "email": f"admin{n}@example.org",
                    "password": "a long and unusual passphrase",
                    "role": "admin",
                },
            )
            return r.status_code

    codes = await asyncio.gather(*(use(n) for n in range(5)))
    async with database.session() as db:
        users = await db.scalar(select(func.count()).select_from(User))
    await database.dispose()
    assert sorted(codes)[0] == 201 and codes.count(201) == 1, codes
    assert users == 1


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)  # files only SQLite has
async def test_database_files_are_private(api: InProcessApp, therapist: httpx.AsyncClient) -> None:
    path = Path(api.settings.database_url.split("///", 1)[1])
    await therapist.post("/api/sessions", json={"client_label": "A"})  # WAL in use
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    assert path in files and len(files) >= 2
    modes = {p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files}
    assert set(modes.values()) == {"0o600"}, modes
