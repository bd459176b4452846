"""Issue 13, the therapist's side: planned time, a client link that can be copied again, the
waiting room's "whom and when", and "lower than usual" judged against the client's own
earlier check-ins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from server import checkins
from server.db import Database
from server.models import Checkin, Participant, SessionStatus, TherapySession
from tests.conftest import InProcessApp


async def test_planned_time_is_stored_listed_and_validated(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    planned = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
    res = await therapist.post(
        "/api/sessions",
        json={
            "client_label": "P.T.",
            "planned_start": planned.isoformat(),
            "planned_minutes": 50,
        },
    )
    assert res.status_code == 201, res.text
    body = res.json()
    assert datetime.fromisoformat(body["planned_start"]) == planned
    assert body["planned_minutes"] == 50
    # The link made now still works at the planned time (the default would be one day).
    expires = datetime.fromisoformat(body["invite_expires_at"])
    assert expires > planned + timedelta(minutes=50)
    listed = (await therapist.get("/api/sessions")).json()["sessions"]
    assert listed[0]["planned_minutes"] == 50 and listed[0]["invite_expired"] is False
    got = (await therapist.get(f"/api/sessions/{body['id']}")).json()
    assert datetime.fromisoformat(got["planned_start"]) == planned

    # The client's waiting room: the therapist's display name and the plan, nothing more.
    token = body["invite_url"].rsplit("/join/", 1)[1]
    async with api.client() as anonymous:
        about = await anonymous.get(f"/api/join/{token}/about")
        assert about.status_code == 200, about.text
        assert about.json()["therapist_name"] == "dr.t"
        assert about.json()["planned_minutes"] == 50
        assert set(about.json()) == {"therapist_name", "planned_start", "planned_minutes"}
        assert (await anonymous.get("/api/join/not-a-token/about")).status_code == 404

    # A time without a zone would be read in the server's zone: refused, precisely.
    naive = await therapist.post("/api/sessions", json={"planned_start": "2030-01-01T10:00:00"})
    assert naive.status_code == 422 and "timezone" in naive.text.lower()
    short = await therapist.post("/api/sessions", json={"planned_minutes": 2})
    assert short.status_code == 422 and "planned_minutes" in short.text
    unknown = await therapist.post("/api/sessions", json={"planned_length": 50})
    assert unknown.status_code == 422


async def test_client_link_copied_again_is_the_same_working_link(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    created = (await therapist.post("/api/sessions", json={"client_label": "L.C."})).json()
    sid = created["id"]
    again = await therapist.get(f"/api/sessions/{sid}/invite")
    assert again.status_code == 200, again.text
    assert again.json()["invite_url"] == created["invite_url"]
    assert again.json()["invite_expired"] is False
    assert again.json()["invite_expires_at"] == created["invite_expires_at"]
    async with api.client() as client:
        page = await client.get(created["invite_url"])
        assert page.status_code == 200 and 'data-testid="join-button"' in page.text

    # Only a hash is stored: the raw token appears in no column of the session row.
    token = created["invite_url"].rsplit("/join/", 1)[1]
    database = Database(api.settings.database_url)
    async with database.session() as db:
        row = await db.get(TherapySession, sid)
        assert row is not None
        assert token not in repr({c.name: getattr(row, c.key) for c in row.__mapper__.columns})

        # Expired: the list and the copy both say so; a new link works again.
        await db.execute(
            update(TherapySession)
            .where(TherapySession.id == sid)
            .values(invite_expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        await db.commit()
    await database.dispose()
    listed = (await therapist.get("/api/sessions")).json()["sessions"]
    assert listed[0]["invite_expired"] is True and listed[0]["status"] == "scheduled"
    assert (await therapist.get(f"/api/sessions/{sid}/invite")).json()["invite_expired"] is True
    renewed = (await therapist.post(f"/api/sessions/{sid}/invite", json={})).json()
    assert renewed["invite_url"] != created["invite_url"]
    copied = (await therapist.get(f"/api/sessions/{sid}/invite")).json()
    assert copied["invite_url"] == renewed["invite_url"] and copied["invite_expired"] is False


def _checkin(**scores: int) -> Checkin:
    return Checkin(session_id="s", participant_id=1, skipped=False, comment="", **scores)


def test_lower_than_usual_needs_a_usual() -> None:
    low_first = _checkin(bond=5, goals=5, tasks=5, overall=5)
    scored = checkins.checkin_out(low_first)
    assert scored is not None and scored["low"] is False and scored["total"] == 20
    assert checkins.lower_than_usual(low_first, []) is False

    usual = [
        _checkin(bond=9, goals=8, tasks=9, overall=9),
        _checkin(bond=8, goals=8, tasks=8, overall=9),
    ]
    # The same 20 after two sessions around 34: lower than usual.
    assert checkins.lower_than_usual(low_first, usual) is True
    # A client who always answers around 20 is not flagged for answering 20 again.
    steady = [
        _checkin(bond=5, goals=6, tasks=5, overall=5),
        _checkin(bond=5, goals=5, tasks=4, overall=6),
    ]
    assert checkins.lower_than_usual(low_first, steady) is False
    # One sharp drop (feeling heard) is flagged even when the total holds.
    drop = _checkin(bond=5, goals=10, tasks=10, overall=10)
    assert checkins.lower_than_usual(drop, usual) is True
    # Skipped check-ins are not part of the usual.
    skipped = Checkin(session_id="s", participant_id=1, skipped=True, comment="")
    assert checkins.lower_than_usual(low_first, [skipped]) is False


async def test_first_checkin_is_not_flagged_in_the_summary(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    ids = []
    for _ in range(2):
        ids.append(
            (await therapist.post("/api/sessions", json={"client_label": "F.C."})).json()["id"]
        )
    database = Database(api.settings.database_url)
    async with database.session() as db:
        for sid, score in zip(ids, (4, 9), strict=True):
            await db.execute(
                update(TherapySession)
                .where(TherapySession.id == sid)
                .values(status=SessionStatus.ENDED, ended_at=datetime.now(UTC))
            )
            participant = Participant(session_id=sid, role="client", admitted=True)
            db.add(participant)
            await db.flush()
            db.add(
                Checkin(
                    session_id=sid,
                    participant_id=participant.id,
                    bond=score,
                    goals=score,
                    tasks=score,
                    overall=score,
                )
            )
        await db.commit()
    await database.dispose()
    first = (await therapist.get(f"/api/sessions/{ids[0]}/summary")).json()
    assert first["checkin"]["total"] == 16 and first["checkin"]["low"] is False
    assert first["checkin"]["compared_with"] == 0
    second = (await therapist.get(f"/api/sessions/{ids[1]}/summary")).json()
    assert second["checkin"]["low"] is False and second["checkin"]["compared_with"] == 1
    assert [p["checkin_low"] for p in second["trend"]] == [False, False]
