"""The client's dead ends (server-rendered): what happened in plain words, by the therapist's
name, and what to do next, in the room's theme; nobody is thanked who never got in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from server.auth import CLIENT_COOKIE
from server.db import Database
from server.models import Checkin, Participant, SessionStatus, TherapySession
from server.security import token_hash
from tests.conftest import InProcessApp

THERAPIST = "dr.t"  # the therapist fixture's display name


async def _browser_was(
    api: InProcessApp, session_id: str, cookie: str, *, admitted: bool, denied: bool
) -> int:
    database = Database(api.settings.database_url)
    async with database.session() as db:
        participant = Participant(
            session_id=session_id,
            role="client",
            identity_hash=token_hash(cookie),
            admitted=admitted,
            denied=denied,
        )
        db.add(participant)
        await db.commit()
        participant_id = participant.id
    await database.dispose()
    return participant_id


async def _change_session(api: InProcessApp, session_id: str, **values: object) -> None:
    database = Database(api.settings.database_url)
    async with database.session() as db:
        await db.execute(
            update(TherapySession).where(TherapySession.id == session_id).values(**values)
        )
        await db.commit()
    await database.dispose()


async def test_join_page_names_the_therapist(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    created = (await therapist.post("/api/sessions", json={})).json()
    async with api.client() as browser:
        page = await browser.get(created["invite_url"])
    assert page.status_code == 200
    assert f"Your session with {THERAPIST}" in page.text
    assert f'data-therapist-name="{THERAPIST}"' in page.text


async def test_unknown_and_expired_links_say_what_to_do(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    created = (await therapist.post("/api/sessions", json={})).json()
    async with api.client() as browser:
        unknown = await browser.get("/join/not-a-real-token")
        assert unknown.status_code == 404
        # Not "not valid, please check it": nothing there blames the client.
        assert "not valid" not in unknown.text and "check it" not in unknown.text
        assert "does not open a session" in unknown.text
        assert "ask your therapist for a new one" in unknown.text
        assert 'class="room message-room"' in unknown.text

        await _change_session(
            api, created["id"], invite_expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        expired = await browser.get(created["invite_url"])
    assert expired.status_code == 410
    assert "This link has expired" in expired.text
    assert f"Please ask {THERAPIST} for a new link." in expired.text
    assert f"Your session with {THERAPIST}" in expired.text
    assert 'class="room message-room"' in expired.text


async def test_ended_session_thanks_only_who_took_part(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    created = (await therapist.post("/api/sessions", json={})).json()
    sid = created["id"]
    denied = await _browser_was(api, sid, "denied-browser", admitted=False, denied=True)
    admitted = await _browser_was(api, sid, "admitted-browser", admitted=True, denied=False)
    assert denied != admitted
    await _change_session(api, sid, status=SessionStatus.ENDED)
    # The admitted client's check-in is done, so the link shows the end rather than the form.
    database = Database(api.settings.database_url)
    async with database.session() as db:
        db.add(Checkin(session_id=sid, participant_id=admitted, skipped=True))
        await db.commit()
    await database.dispose()

    pages = {}
    for who in ("denied-browser", "admitted-browser", None):
        cookies = {CLIENT_COOKIE: who} if who else {}
        async with api.client(cookies=cookies) as browser:
            pages[who] = await browser.get(created["invite_url"])
    for page in pages.values():
        assert page.status_code == 410
        assert "This session has ended" in page.text
        assert f"Your session with {THERAPIST}" in page.text
    assert "Thank you for joining" in pages["admitted-browser"].text
    for who in ("denied-browser", None):
        assert "Thank you" not in pages[who].text, who
        assert f"please contact {THERAPIST}" in pages[who].text, who


async def test_staff_dead_end_offers_a_way_back(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/sessions")
    assert page.status_code == 403
    assert "Therapists only" in page.text
    assert 'data-testid="message-action" href="/"' in page.text
    assert "message-room" not in page.text
