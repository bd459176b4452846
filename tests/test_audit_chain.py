"""The tamper-evident audit log (issue 12, "Also build"): a hash chain that `rapport audit
verify` checks, that concurrent writers in several processes cannot fork, that seals entries an
older version wrote, and that anonymous traffic cannot grow without bound."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.audit import ANONYMOUS_PER_SESSION_HOUR, GENESIS, record, record_now, verify_chain
from server.db import Database
from signaling.room import knock_limiter
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
)

ROOT = Path(__file__).resolve().parents[1]


def db_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def rapport(db: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    url = db if isinstance(db, str) else db_url(db)
    env = {**os.environ, "RAPPORT_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(db: Path) -> list[tuple[int, str, str | None, str | None, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT id, action, prev_hash, hash, at FROM audit_log ORDER BY id"
        ).fetchall()


async def write_entries(db: Path, count: int) -> None:
    database = Database(db_url(db))
    await database.create_schema()
    for i in range(count):
        await record_now(database, "session_created", "user:1", f"s{i}", f"entry {i}")
    async with database.session() as session:  # several staged in one transaction
        record(session, "invite_renewed", "user:1", "s0")
        record(session, "login", "user:2")
        await session.commit()
    await database.dispose()


async def test_chain_is_written_and_verified(tmp_path: Path) -> None:
    db = tmp_path / "rapport.db"
    await write_entries(db, 8)
    entries = rows(db)
    assert len(entries) == 10
    assert entries[0][2] == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after[2] == before[3], f"entry {after[0]} does not point at entry {before[0]}"
    result = rapport(db, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "OK: 10 audit entries" in result.stdout
    head = entries[-1][3]
    assert head is not None
    assert head in result.stdout  # the head, to be noted down elsewhere


async def test_tampering_is_reported_at_exactly_that_entry(tmp_path: Path) -> None:
    db = tmp_path / "rapport.db"
    await write_entries(db, 8)
    at5 = rows(db)[4][4]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET actor = 'user:9' WHERE id = 5")
    result = rapport(db, "audit", "verify")
    assert result.returncode == 1
    assert "BROKEN: audit entry 5 (" in result.stderr
    assert at5.replace(" ", "T")[:19] in result.stderr
    assert "contents were changed" in result.stderr
    assert "the 4 entries before it are intact" in result.stderr


async def test_a_rehashed_or_removed_entry_breaks_the_next_link(tmp_path: Path) -> None:
    """Recomputing the changed entry's own hash does not help: the next entry points at the
    old one. Removing an entry shows at the one after it."""
    db = tmp_path / "rapport.db"
    await write_entries(db, 8)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET hash = ? WHERE id = 3", ("f" * 64,))
    result = rapport(db, "audit", "verify")
    assert result.returncode == 1
    assert "BROKEN: audit entry 3 (" in result.stderr

    db2 = tmp_path / "second.db"
    await write_entries(db2, 8)
    with sqlite3.connect(db2) as conn:
        conn.execute("DELETE FROM audit_log WHERE id = 6")
    result = rapport(db2, "audit", "verify")
    assert result.returncode == 1
    assert "BROKEN: audit entry 7 (" in result.stderr
    assert "does not follow the entry before it" in result.stderr


WRITER = """
import asyncio, sys, time
from server.audit import record, record_now
from server.db import Database
from server.models import User, UserRole

async def main(url: str, name: str, count: int, start: float) -> None:
    database = Database(url)
    while time.time() < start:
        await asyncio.sleep(0.001)
    for i in range(count):
        await asyncio.sleep(0.002)  # let the other process in between, both ways
        if i % 2:
            await record_now(database, "login", name, None, str(i))
        else:  # staged beside another write, as the routes do
            async with database.session() as db:
                db.add(User(email=f"{name}-{i}@example.org", role=UserRole.THERAPIST,
                            password_hash="x"))
                record(db, "user_created", name, None, str(i))
                await db.commit()
    await database.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


async def create_schema(url: str) -> None:
    database = Database(url)
    await database.create_schema()
    await database.dispose()


async def actors_in_order(url: str) -> list[tuple[str, str | None]]:
    database = Database(url)
    async with database.engine.connect() as conn:
        result = await conn.exec_driver_sql("SELECT actor, prev_hash FROM audit_log ORDER BY id")
        found = [(row["actor"], row["prev_hash"]) for row in result.mappings()]
    await database.dispose()
    return found


@pytest.mark.both_databases  # SQLite's write lock, or PostgreSQL's advisory lock
def test_two_processes_keep_a_single_chain(empty_db_url: str) -> None:
    db = empty_db_url
    asyncio.run(create_schema(db))
    per_writer = 60
    start = time.time() + 2.0  # both processes are up and importing by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db, f"proc:{n}", str(per_writer), str(start)],
            env=env,
        )
        for n in range(2)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    entries = asyncio.run(actors_in_order(db))
    assert len(entries) == 2 * per_writer
    prevs = [prev for _, prev in entries]
    assert len(set(prevs)) == len(prevs), "two entries were appended after the same entry"
    result = rapport(db, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert f"OK: {2 * per_writer} audit entries" in result.stdout
    # The two writers really interleaved (otherwise this proved nothing about concurrency).
    actors = [a for a, _ in entries]
    switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
    assert switches >= 5, actors


@pytest.mark.both_databases
async def test_two_engines_in_one_process_keep_a_single_chain(empty_db_url: str) -> None:
    first, second = Database(empty_db_url), Database(empty_db_url)
    await first.create_schema()
    await asyncio.gather(
        *(record_now(d, "login", f"user:{n}") for n in range(40) for d in (first, second))
    )
    result = await verify_chain(second)
    assert result.ok, result
    assert result.entries == 80
    await first.dispose()
    await second.dispose()


async def test_entries_from_before_the_chain_are_sealed_once_on_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "rapport.db"
    with sqlite3.connect(db) as conn:  # the table as the previous version created it
        conn.execute(
            "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, at DATETIME, session_id VARCHAR(32),"
            " actor VARCHAR(64), action VARCHAR(64), detail TEXT)"
        )
        conn.executemany(
            "INSERT INTO audit_log (at, session_id, actor, action, detail) VALUES (?,?,?,?,?)",
            [(f"2025-01-0{i} 10:00:00.000000", None, "user:1", "login", "") for i in range(1, 4)],
        )
    for _ in range(2):  # two starts: sealed once
        database = Database(db_url(db))
        await database.create_schema()
        await database.dispose()
    database = Database(db_url(db))
    await record_now(database, "login", "user:1")
    await database.dispose()
    entries = rows(db)
    assert [e[1] for e in entries] == ["login"] * 3 + ["audit_chain_sealed", "login"]
    result = rapport(db, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "OK: 5 audit entries" in result.stdout
    assert "The first 3 entries were written before the chain" in result.stdout
    with sqlite3.connect(db) as conn:
        names = {r[1] for r in conn.execute("PRAGMA index_list(audit_log)")}
    assert "ix_audit_log_prev_hash" in names  # the fork guard reaches upgraded databases too


async def test_an_unchained_entry_after_the_chain_is_a_break_not_resealed(tmp_path: Path) -> None:
    db = tmp_path / "rapport.db"
    await write_entries(db, 3)
    with sqlite3.connect(db) as conn:  # e.g. an older version still writing to the database
        conn.execute(
            "INSERT INTO audit_log (at, actor, action, detail) "
            "VALUES ('2025-01-01 10:00:00.000000', 'user:1', 'login', '')"
        )
    database = Database(db_url(db))
    await database.create_schema()  # a restart does not quietly seal it
    await database.dispose()
    result = rapport(db, "audit", "verify")
    assert result.returncode == 1
    assert "BROKEN: audit entry 6 (" in result.stderr
    assert "not chained" in result.stderr


@NO_MEDIA_WORKER
async def test_knocking_on_an_invite_link_cannot_grow_the_audit_log(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    # The per-address knock budget (tests/test_revocation.py) would stop this loop first:
    # lift it here so the audit log's own bound is what is tested.
    app: Any = live_server.app
    app.state.rooms.knocks_by_address = knock_limiter(100_000, 1000.0)
    session = (await therapist.post("/api/sessions", json={})).json()
    ws = live_server.ws_url
    t = await Participant.connect(f"{ws}/ws/sessions/{session['id']}", login_cookie(therapist))
    await t.send({"type": "join"})
    await t.expect("joined")
    knocks = ANONYMOUS_PER_SESSION_HOUR  # each knock writes two entries: waiting, left waiting
    url = f"{ws}/ws/join/{invite_token(session['invite_url'])}"
    for _ in range(knocks):
        c = await Participant.connect(url, new_client_cookie())
        await c.send({"type": "join"})
        await c.expect("waiting")
        await c.send({"type": "leave"})
        await c.expect("left")
        await c.close()
    await t.close()
    db = Path(live_server.settings.database_url.split("///", 1)[1])
    with sqlite3.connect(db) as conn:
        anonymous = conn.execute(
            "SELECT count(*) FROM audit_log WHERE actor LIKE 'client:%' AND session_id = ?",
            (session["id"],),
        ).fetchone()[0]
        capped = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'audit_capped' AND session_id = ?",
            (session["id"],),
        ).fetchone()[0]
    assert anonymous == ANONYMOUS_PER_SESSION_HOUR
    assert capped == 1
    database = Database(live_server.settings.database_url)
    assert (await verify_chain(database)).ok
    await database.dispose()
