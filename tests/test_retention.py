"""Retention and erasure (issue 12, "Also build"): `rapport purge` and a therapist's "delete
this client's data" remove sessions and every row derived from them, audit it without the
label, and touch nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select, text

from server.audit import verify_chain
from server.db import Database
from server.models import Base, Checkin, Participant, SessionStatus, TherapySession, User, UserRole
from server.retention import label_digest
from tests.conftest import PASSWORD, InProcessApp, add_user, http_client

ROOT = Path(__file__).resolve().parents[1]
AGENDA = "Talk about the divorce"
COMMENT = "felt unheard today"


async def add_session(
    database: Database,
    therapist_id: int,
    sid: str,
    label: str,
    *,
    ended_days_ago: float | None,
) -> None:
    """A session with everything a real one leaves: signals, timeline, agenda, the replay
    input, the invite's hash, the therapist's and a client's participant rows, a check-in."""
    now = datetime.now(UTC)
    async with database.session() as db:
        session = TherapySession(
            id=sid,
            therapist_id=therapist_id,
            client_label=label,
            invite_token_hash=sid.ljust(64, "0"),
            invite_expires_at=now + timedelta(hours=1),
            created_at=now - timedelta(days=(ended_days_ago or 0) + 1),
            metrics={"client_share": 0.6},
            timeline=[[0, 1]],
            agenda={"items": [{"id": "a", "text": AGENDA}], "homework": "walk"},
            signal_input=[[1, 2]],
        )
        if ended_days_ago is not None:
            session.status = SessionStatus.ENDED
            session.started_at = now - timedelta(days=ended_days_ago, hours=1)
            session.ended_at = now - timedelta(days=ended_days_ago)
        db.add(session)
        await db.flush()
        db.add(Participant(session_id=sid, role="therapist", admitted=True))
        client = Participant(session_id=sid, role="client", identity_hash="c" * 64, admitted=True)
        db.add(client)
        await db.flush()
        if ended_days_ago is not None:
            db.add(
                Checkin(
                    session_id=sid,
                    participant_id=client.id,
                    bond=7,
                    goals=7,
                    tasks=7,
                    overall=7,
                    comment=COMMENT,
                )
            )
        await db.commit()


async def counts(url: str, sids: list[str]) -> dict[str, int]:
    """Rows per table, read on a connection of its own (SQLite or PostgreSQL)."""
    database = Database(url)
    found: dict[str, int] = {}
    async with database.engine.connect() as conn:
        for table, column in (
            ("sessions", "id"),
            ("participants", "session_id"),
            ("checkins", "session_id"),
        ):
            marks = ",".join(f":p{i}" for i in range(len(sids)))
            found[table] = int(
                await conn.scalar(
                    text(f"SELECT count(*) FROM {table} WHERE {column} IN ({marks})"),
                    {f"p{i}": sid for i, sid in enumerate(sids)},
                )
                or 0
            )
    await database.dispose()
    return found


async def audit_rows(url: str, action: str) -> list[tuple[str, str]]:
    database = Database(url)
    async with database.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT actor, detail FROM audit_log WHERE action = :a"), {"a": action}
        )
        found = [(row[0], row[1]) for row in rows]
    await database.dispose()
    return found


async def everything_stored(url: str) -> str:
    """Every row of every table as text: what a dump of the database would show."""
    database = Database(url)
    parts: list[str] = []
    async with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            parts.extend(repr(tuple(row)) for row in await conn.execute(table.select()))
    await database.dispose()
    return "\n".join(parts)


async def therapist_id(database: Database, email: str) -> int:
    async with database.session() as db:
        found = await db.scalar(select(User.id).where(User.email == email))
        assert found is not None
        return found


def rapport(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "RAPPORT_RETENTION_DAYS"}
    full.update(RAPPORT_DATABASE_URL=url, PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_purge_counts_in_a_dry_run_then_removes_only_old_sessions(
    api: InProcessApp,
) -> None:
    url = api.settings.database_url
    await add_user(api.settings, "dr.p@example.org", UserRole.THERAPIST)
    database = Database(url)
    tid = await therapist_id(database, "dr.p@example.org")
    await add_session(database, tid, "old1", "Robin", ended_days_ago=40)
    await add_session(database, tid, "old2", "Sam", ended_days_ago=31)
    await add_session(database, tid, "recent", "Robin", ended_days_ago=5)
    await add_session(database, tid, "booked", "Robin", ended_days_ago=None)  # never held
    everything = ["old1", "old2", "recent", "booked"]
    before = await counts(url, everything)
    assert before == {"sessions": 4, "participants": 8, "checkins": 3}

    dry = rapport(url, "purge", RAPPORT_RETENTION_DAYS="30")
    assert dry.returncode == 0, dry.stderr
    assert "Would delete" in dry.stdout
    assert "sessions 2, participants 4, check-ins 2" in dry.stdout
    assert await counts(url, everything) == before  # a dry run deletes nothing
    assert await audit_rows(url, "sessions_purged") == []

    real = rapport(url, "purge", "--yes", RAPPORT_RETENTION_DAYS="30")
    assert real.returncode == 0, real.stderr
    assert "sessions 2, participants 4, check-ins 2" in real.stdout
    assert await counts(url, ["old1", "old2"]) == {
        "sessions": 0,
        "participants": 0,
        "checkins": 0,
    }
    assert await counts(url, ["recent", "booked"]) == {
        "sessions": 2,
        "participants": 4,
        "checkins": 1,
    }
    dump = await everything_stored(url)  # nothing of the old sessions' content anywhere
    assert dump.count(AGENDA) == 2 and dump.count(COMMENT) == 1  # the two kept sessions'
    [(actor, detail)] = await audit_rows(url, "sessions_purged")
    assert actor == "system"
    assert "older than 30 days" in detail and "sessions 2" in detail
    assert (await verify_chain(database)).ok
    await database.dispose()


async def test_purge_without_a_retention_period_deletes_nothing(api: InProcessApp) -> None:
    url = api.settings.database_url
    await add_user(api.settings, "dr.p@example.org", UserRole.THERAPIST)
    database = Database(url)
    await add_session(
        database, await therapist_id(database, "dr.p@example.org"), "old", "R", ended_days_ago=900
    )
    await database.dispose()
    result = rapport(url, "purge", "--yes")
    assert result.returncode == 2
    assert "RAPPORT_RETENTION_DAYS" in result.stderr
    assert (await counts(url, ["old"]))["sessions"] == 1


async def test_a_therapist_deletes_one_clients_data_and_nothing_else(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    url = api.settings.database_url
    await add_user(api.settings, "dr.other@example.org", UserRole.THERAPIST)
    database = Database(url)
    mine = await therapist_id(database, "dr.t@example.org")
    theirs = await therapist_id(database, "dr.other@example.org")
    await add_session(database, mine, "r1", "Robin", ended_days_ago=3)
    await add_session(database, mine, "r2", "Robin", ended_days_ago=1)
    await add_session(database, mine, "r3", "Robin", ended_days_ago=None)
    await add_session(database, mine, "s1", "Sam", ended_days_ago=2)
    await add_session(database, theirs, "o1", "Robin", ended_days_ago=2)  # same pseudonym

    response = await therapist.post("/api/clients/delete", json={"label": "Robin"})
    assert response.status_code == 200, response.text
    assert response.json() == {"sessions": 3, "participants": 6, "checkins": 2}
    gone = {"sessions": 0, "participants": 0, "checkins": 0}
    assert await counts(url, ["r1", "r2", "r3"]) == gone
    assert await counts(url, ["s1"]) == {"sessions": 1, "participants": 2, "checkins": 1}
    assert await counts(url, ["o1"]) == {"sessions": 1, "participants": 2, "checkins": 1}
    listed = (await therapist.get("/api/clients")).json()["clients"]
    assert [c["label"] for c in listed] == ["Sam"]

    [(actor, detail)] = await audit_rows(url, "client_data_deleted")
    assert actor == f"user:{mine}"
    assert "Robin" not in detail
    assert label_digest(mine, "Robin") in detail and "sessions 3" in detail
    assert (await verify_chain(database)).ok

    # Once gone, gone; and another therapist's label of the same name is not reachable.
    again = await therapist.post("/api/clients/delete", json={"label": "Robin"})
    assert again.status_code == 404
    other = await http_client(api, timeout=10).__aenter__()
    login = await other.post(
        "/api/login", json={"email": "dr.other@example.org", "password": PASSWORD}
    )
    assert login.status_code == 200
    assert (await other.post("/api/clients/delete", json={"label": "Sam"})).status_code == 404
    await other.aclose()
    assert (await counts(url, ["s1"]))["sessions"] == 1
    await database.dispose()


async def test_deleting_a_client_in_session_is_refused(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    database = Database(api.settings.database_url)
    mine = await therapist_id(database, "dr.t@example.org")
    await add_session(database, mine, "live1", "Robin", ended_days_ago=None)
    async with database.session() as db:
        session = await db.get(TherapySession, "live1")
        assert session is not None
        session.status = SessionStatus.LIVE
        await db.commit()
    response = await therapist.post("/api/clients/delete", json={"label": "Robin"})
    assert response.status_code == 409
    assert (await counts(api.settings.database_url, ["live1"]))["sessions"] == 1
    assert await audit_rows(api.settings.database_url, "client_data_deleted") == []
    await database.dispose()


async def test_an_admin_cannot_delete_client_data(
    api: InProcessApp, admin: httpx.AsyncClient
) -> None:
    response = await admin.post("/api/clients/delete", json={"label": "Robin"})
    assert response.status_code == 403
