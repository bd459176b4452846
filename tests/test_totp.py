"""Two-factor sign-in with TOTP (issue 12, item 6): enrolment, the two-step sign-in, one-time
codes, recovery codes, the admins' requirement and the CLI reset. Codes come from pyotp, as an
authenticator app would make them; everything else is the real app and its SQLite database.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
from sqlalchemy import select

from server.auth import LOGIN_COOKIE
from server.db import Database
from server.models import AuditEvent, RecoveryCode, User
from server.settings import Settings
from tests.conftest import NO_MEDIA_WORKER, PASSWORD, InProcessApp, LiveServer
from tests.signaling_helpers import Participant, login_cookie

REPO = Path(__file__).resolve().parent.parent
THERAPIST = "dr.t@example.org"
ADMIN = "ops@example.org"


def code_at(secret: str, offset_s: float = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + offset_s)


async def enrol(client: httpx.AsyncClient) -> tuple[str, list[str]]:
    """Set up two-factor for the signed-in client; the secret and the recovery codes."""
    setup = await client.post("/api/account/two-factor/setup")
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    confirmed = await client.post("/api/account/two-factor/confirm", json={"code": code_at(secret)})
    assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()["recovery_codes"]


async def audit_actions(settings: Settings) -> list[tuple[str, str, str]]:
    database = Database(settings.database_url)
    async with database.session() as db:
        rows = await db.scalars(select(AuditEvent).order_by(AuditEvent.id))
        actions = [(e.action, e.actor, e.detail) for e in rows]
    await database.dispose()
    return actions


async def password_step(client: httpx.AsyncClient, email: str = THERAPIST) -> str:
    """Pass the password step in a fresh browser: a pending token, no cookie."""
    r = await client.post("/api/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code_required"] is True and body["user"] is None
    assert LOGIN_COOKIE not in client.cookies
    return str(body["pending_token"])


async def test_enrol_then_sign_in_with_a_code(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    status = (await therapist.get("/api/account/two-factor")).json()
    assert status["enabled"] is False and status["required"] is False

    setup = (await therapist.post("/api/account/two-factor/setup")).json()
    secret = setup["secret"]
    assert len(secret) >= 16
    assert setup["otpauth_uri"].startswith("otpauth://totp/Rapport:dr.t%40example.org?")
    assert f"secret={secret}" in setup["otpauth_uri"]
    # Shown but not confirmed: it does not take effect.
    assert (await therapist.get("/api/account/two-factor")).json()["enabled"] is False
    wrong = await therapist.post("/api/account/two-factor/confirm", json={"code": "000000"})
    assert wrong.status_code == 422
    code = code_at(secret)
    confirmed = await therapist.post("/api/account/two-factor/confirm", json={"code": code})
    assert confirmed.status_code == 200, confirmed.text
    recovery = confirmed.json()["recovery_codes"]
    assert len(recovery) == 10 and len(set(recovery)) == 10
    status = (await therapist.get("/api/account/two-factor")).json()
    assert status["enabled"] is True and status["recovery_codes_left"] == 10

    # Only hashes are stored.
    database = Database(api.settings.database_url)
    async with database.session() as db:
        stored = list(await db.scalars(select(RecoveryCode.code_hash)))
    await database.dispose()
    assert len(stored) == 10 and not set(stored) & set(recovery)

    async with api.client(timeout=10) as client:
        pending = await password_step(client)
        assert (await client.get("/api/me")).status_code == 401
        # The code that confirmed enrolment was used: it cannot sign in too.
        reused = await client.post("/api/login/code", json={"pending_token": pending, "code": code})
        assert reused.status_code == 401
        assert "work once" in reused.json()["detail"]
        next_code = code_at(secret, 30)  # the following step: inside the +/- 1 step window
        ok = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": next_code}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["user"]["email"] == THERAPIST
        assert LOGIN_COOKIE in client.cookies
        assert (await client.get("/api/me")).status_code == 200
        # The pending token was single-use.
        again = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": code_at(secret, -30)}
        )
        assert again.status_code == 401 and "already used" in again.json()["detail"]

    # A code that signed in once does not sign in again, even with a new password step.
    async with api.client(timeout=10) as client:
        pending = await password_step(client)
        replay = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": next_code}
        )
        assert replay.status_code == 401
        far = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": code_at(secret, 120)}
        )
        assert far.status_code == 401  # four steps ahead: outside the window
    actions = [a for a, _, _ in await audit_actions(api.settings)]
    assert "two_factor_enabled" in actions
    assert actions.count("login_code_failed") >= 1


async def test_forged_or_tampered_pending_token_is_refused(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    secret, _ = await enrol(therapist)
    async with api.client(timeout=10) as client:
        pending = await password_step(client)
        payload, signature = pending.split(".")
        forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
        for token in (forged, "nonsense", f"{payload}.{signature[::-1]}"):
            r = await client.post(
                "/api/login/code", json={"pending_token": token, "code": code_at(secret, 30)}
            )
            assert r.status_code == 401, token
        assert LOGIN_COOKIE not in client.cookies


async def test_recovery_code_works_once(api: InProcessApp, therapist: httpx.AsyncClient) -> None:
    _, recovery = await enrol(therapist)
    async with api.client(timeout=10) as client:
        pending = await password_step(client)
        # Typed as people type: upper case, without the dash, with spaces around.
        typed = f"  {recovery[3].replace('-', '').upper()} "
        r = await client.post("/api/login/code", json={"pending_token": pending, "code": typed})
        assert r.status_code == 200, r.text
        assert (await client.get("/api/me")).status_code == 200
    async with api.client(timeout=10) as client:
        pending = await password_step(client)
        r = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": recovery[3]}
        )
        assert r.status_code == 401
        assert LOGIN_COOKIE not in client.cookies
        r = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": recovery[4]}
        )
        assert r.status_code == 200
    assert (await therapist.get("/api/account/two-factor")).json()["recovery_codes_left"] == 8
    used = [d for a, _, d in await audit_actions(api.settings) if a == "recovery_code_used"]
    assert used == ["9 left", "8 left"]


async def test_wrong_codes_are_throttled_like_passwords(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    secret, _ = await enrol(therapist)
    # The account allows 10 attempts in 10 minutes (RAPPORT_LOGIN_ATTEMPTS_PER_ACCOUNT); the
    # fixture's sign-in, the enrolment's code and the password step below used three.
    async with api.client(timeout=10) as client:
        pending = await password_step(client)
        answers = []
        for _ in range(8):
            r = await client.post(
                "/api/login/code", json={"pending_token": pending, "code": "123456"}
            )
            answers.append(r.status_code)
        assert answers == [401] * 7 + [429]
        # Even the right code waits now.
        r = await client.post(
            "/api/login/code", json={"pending_token": pending, "code": code_at(secret, 30)}
        )
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # Failures are audited within the per-account budget (5 an hour), not one row per guess.
    failed = [a for a, _, _ in await audit_actions(api.settings) if a == "login_code_failed"]
    assert len(failed) == 5


async def test_disable_needs_a_code_or_the_password(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    secret, _ = await enrol(therapist)
    r = await therapist.post("/api/account/two-factor/disable", json={})
    assert r.status_code == 422
    r = await therapist.post(
        "/api/account/two-factor/disable", json={"password": "not the password"}
    )
    assert r.status_code == 422
    r = await therapist.post("/api/account/two-factor/disable", json={"password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is False and r.json()["recovery_codes_left"] == 0
    # Password alone signs in again.
    async with api.client() as client:
        r = await client.post("/api/login", json={"email": THERAPIST, "password": PASSWORD})
        assert r.json()["user"]["email"] == THERAPIST and LOGIN_COOKIE in client.cookies
    # And with a code instead of the password.
    secret, _ = await enrol(therapist)
    r = await therapist.post("/api/account/two-factor/disable", json={"code": code_at(secret, 30)})
    assert r.status_code == 200, r.text
    actions = [a for a, _, _ in await audit_actions(api.settings)]
    assert actions.count("two_factor_disabled") == 2


async def test_admin_requirement_sends_staff_to_enrolment(
    api: InProcessApp, admin: httpx.AsyncClient, therapist: httpx.AsyncClient
) -> None:
    assert (await admin.get("/api/admin/settings")).json() == {"require_two_factor": False}
    # An admin without two-factor would lock themself out first.
    r = await admin.put("/api/admin/settings", json={"require_two_factor": True})
    assert r.status_code == 409
    await enrol(admin)
    r = await admin.put("/api/admin/settings", json={"require_two_factor": True})
    assert r.status_code == 200 and r.json() == {"require_two_factor": True}
    assert (await admin.get("/api/admin/settings")).json() == {"require_two_factor": True}

    # The therapist, already signed in without two-factor, can do nothing but enrol.
    for method, path in (("GET", "/api/sessions"), ("POST", "/api/sessions"), ("GET", "/api/me")):
        r = await therapist.request(method, path, json={} if method == "POST" else None)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["detail"]["code"] == "two_factor_enrolment_required"
    status = (await therapist.get("/api/account/two-factor")).json()
    assert status["required"] is True and status["enabled"] is False
    # A fresh sign-in says so too.
    async with api.client() as client:
        r = await client.post("/api/login", json={"email": THERAPIST, "password": PASSWORD})
        assert r.status_code == 200 and r.json()["enrolment_required"] is True
    await enrol(therapist)
    assert (await therapist.get("/api/sessions")).status_code == 200
    assert (await therapist.post("/api/sessions", json={})).status_code == 201
    changes = [d for a, _, d in await audit_actions(api.settings) if a == "setting_changed"]
    assert changes == ["require_two_factor on"]


def test_cli_reset_two_factor(tmp_path: Path) -> None:
    """``rapport user reset-2fa`` for a locked-out user: secret and codes gone, audited."""
    import asyncio

    from server.models import UserRole
    from tests.conftest import add_user

    url = f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}"
    settings = Settings(database_url=url)

    async def prepare() -> None:
        database = Database(url)
        await database.create_schema()
        await database.dispose()
        await add_user(settings, THERAPIST, UserRole.THERAPIST)
        database = Database(url)
        async with database.session() as db:
            user = await db.scalar(select(User))
            assert user is not None
            user.totp_secret = pyotp.random_base32()
            user.totp_enabled_at = user.created_at
            db.add(RecoveryCode(user_id=user.id, code_hash="0" * 64))
            await db.commit()
        await database.dispose()

    asyncio.run(prepare())
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAPPORT_DATABASE_URL": url}
    command = [sys.executable, "-m", "server.cli", "user", "reset-2fa"]
    unknown = subprocess.run(
        [*command, "nobody@example.org"], env=env, capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 1 and "No user" in unknown.stderr
    done = subprocess.run(
        [*command, THERAPIST.upper()], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "rapport.db") as conn:
        row = conn.execute("SELECT totp_secret, totp_enabled_at FROM users").fetchone()
        codes = conn.execute("SELECT count(*) FROM recovery_codes").fetchone()[0]
        audit = conn.execute("SELECT action, actor, detail FROM audit_log").fetchall()
    assert row == (None, None) and codes == 0
    assert ("two_factor_reset", "cli", "user:1") in audit


async def test_a_database_from_before_two_factor_keeps_working(tmp_path: Path) -> None:
    """Columns added by db._migrate have no default: NULL must read as "not enrolled", and a
    pending sign-in must work for a user whose ``login_epoch`` is NULL."""
    from server.app import create_app
    from server.security import hash_password
    from tests.conftest import make_settings

    with sqlite3.connect(tmp_path / "rapport.db") as conn:
        conn.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(320) UNIQUE, "
            "display_name VARCHAR(200), role VARCHAR(20), password_hash VARCHAR(200), "
            "preferences JSON, created_at DATETIME)"
        )
        conn.execute(
            "INSERT INTO users VALUES (1, ?, 'T', 'THERAPIST', ?, NULL, '2025-01-01 00:00:00')",
            (THERAPIST, hash_password(PASSWORD)),
        )
    settings = make_settings(tmp_path, 8000, media_workers=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        api = InProcessApp(settings.public_url, settings, app)
        async with api.client(timeout=10) as client:
            r = await client.post("/api/login", json={"email": THERAPIST, "password": PASSWORD})
            assert r.status_code == 200 and r.json()["user"]["email"] == THERAPIST
            secret, _ = await enrol(client)
        async with api.client(timeout=10) as client:
            pending = await password_step(client)
            r = await client.post(
                "/api/login/code", json={"pending_token": pending, "code": code_at(secret, 30)}
            )
            assert r.status_code == 200, r.text
    with sqlite3.connect(tmp_path / "rapport.db") as conn:
        assert conn.execute("SELECT login_epoch FROM users").fetchone() == (1,)


@NO_MEDIA_WORKER
async def test_required_enrolment_also_closes_the_session_socket(
    live_server: LiveServer, admin: httpx.AsyncClient, therapist: httpx.AsyncClient
) -> None:
    created = await therapist.post("/api/sessions", json={"client_label": "C"})
    assert created.status_code == 201
    url = f"{live_server.ws_url}/ws/sessions/{created.json()['id']}"
    await enrol(admin)
    r = await admin.put("/api/admin/settings", json={"require_two_factor": True})
    assert r.status_code == 200
    socket = await Participant.connect(url, login_cookie(therapist))
    error = await socket.error()
    assert error["code"] == "forbidden" and "two-factor" in error["message"]
    await socket.close()
    # Once enrolled, the same sign-in opens the room.
    await enrol(therapist)
    socket = await Participant.connect(url, login_cookie(therapist))
    assert (await socket.expect("welcome"))["type"] == "welcome"
    await socket.close()
