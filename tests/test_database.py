"""Migrations, UTC times and the database's location (issue 14), on SQLite and PostgreSQL.

Databases are real: a SQLite file, or a database in the run's throwaway PostgreSQL cluster. A
database "made by main 1f34663" is built with that version's frozen models and its
add-missing-columns step (tests/fixtures/legacy_1f34663.py), as an operator's would be.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from server.db import Database
from server.migrations import BASELINE, current, head_revision, upgrade
from server.models import Base, TherapySession
from server.settings import default_data_dir
from tests.conftest import PASSWORD, InProcessApp
from tests.fixtures import legacy_1f34663 as legacy
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[1]
BOTH = pytest.mark.both_databases


def rapport(*args: str, env: dict[str, str], cwd: Path | None = None, stdin: str = "") -> Any:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd or ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def on_connection(url: str, fn: Any) -> Any:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _model_diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _schema(conn: Connection) -> dict[str, Any]:
    """Everything about the tables that a migration could get wrong, comparable as data."""
    insp = inspect(conn)
    tables: dict[str, Any] = {}
    for name in sorted(insp.get_table_names()):
        tables[name] = {
            # By name: PostgreSQL appends re-added columns at the end, and no query depends
            # on column positions (SQLite's rebuilt tables are in model order anyway).
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(name)
            ),
            "pk": insp.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(name)
            ),
            "fks": sorted(
                (
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    (f.get("options") or {}).get("ondelete"),
                )
                for f in insp.get_foreign_keys(name)
            ),
            "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(name)),
        }
    return tables


# --------------------------------------------------------------------------- fresh databases
@BOTH
async def test_a_fresh_database_migrates_to_exactly_the_models(empty_db_url: str) -> None:
    assert await current(empty_db_url) == (None, False)
    result = await upgrade(empty_db_url)
    assert (result.before, result.after, result.unversioned) == (None, head_revision(), False)
    assert await on_connection(empty_db_url, _model_diff) == []
    assert await current(empty_db_url) == (head_revision(), False)
    again = await upgrade(empty_db_url)
    assert again.before == again.after == head_revision()
    assert "already at" in again.describe()


async def test_times_come_back_utc_with_an_offset(
    api: InProcessApp, therapist: httpx.AsyncClient
) -> None:
    """Both engines answer the same, explicit UTC: no naive times from SQLite."""
    created = (await therapist.post("/api/sessions", json={"client_label": "T"})).json()
    stored = (await therapist.get(f"/api/sessions/{created['id']}")).json()
    for key in ("created_at", "invite_expires_at"):
        text = stored[key]
        assert re.search(r"(Z|[+-]\d\d:\d\d)$", text), (key, text)
        parsed = datetime.fromisoformat(text)
        assert parsed.utcoffset() == timedelta(0), (key, text)
        assert abs(parsed - datetime.now(UTC)) < timedelta(days=2)
    database = Database(api.settings.database_url)
    async with database.session() as db:
        row = await db.get(TherapySession, created["id"])
        assert row is not None
        assert row.created_at.utcoffset() == timedelta(0)
        # Comparable with aware times in SQL too: the invite is not yet expired.
        found = await db.scalar(
            select(TherapySession.id).where(TherapySession.invite_expires_at > datetime.now(UTC))
        )
        assert found == created["id"]
    await database.dispose()


# --------------------------------------------------------------------------- old databases
# Columns an older version did not have: main's add-column step re-added them without NOT
# NULL (and one index went missing), so rows written before it hold NULLs there.
OLDER_VERSION_LACKS = [
    ("participants", "denied"),
    ("checkins", "comment"),
    ("audit_log", "detail"),
    ("users", "login_epoch"),
]
LOST_INDEX = "ix_participants_identity_hash"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _build_legacy(conn: Connection) -> None:
    """A database as main 1f34663 left it after upgrading one an older version made."""
    legacy.Base.metadata.create_all(conn)
    for table, column in OLDER_VERSION_LACKS:
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    # Rows the older version wrote (without those columns).
    conn.exec_driver_sql(
        "INSERT INTO users (id, email, display_name, role, password_hash, created_at) "
        "VALUES (1, 'old@example.org', 'Dr Old', 'THERAPIST', 'h1', '2026-01-05 10:00:00')"
    )
    conn.exec_driver_sql(
        "INSERT INTO sessions (id, therapist_id, client_label, status, invite_token_hash, "
        "invite_expires_at, created_at, started_at, ended_at, metrics, agenda) VALUES "
        "('s-old', 1, 'Robin', 'ENDED', 'a' || repeat('0', 63), '2026-01-06 10:00:00', "
        "'2026-01-05 10:00:00', '2026-01-05 11:00:00', '2026-01-05 11:50:00', "
        '\'{"client_share": 0.55}\', \'{"items": [{"id": 1, "text": "sleep"}], '
        '"homework": "walk"}\')'.replace(
            "repeat('0', 63)",
            "'" + "0" * 63 + "'",
        )
    )
    conn.exec_driver_sql(
        "INSERT INTO participants (id, session_id, role, identity_hash, admitted, "
        "first_seen_at, last_seen_at) VALUES (1, 's-old', 'therapist', NULL, TRUE, "
        "'2026-01-05 11:00:00', '2026-01-05 11:50:00'), (2, 's-old', 'client', "
        f"'{'c' * 64}', TRUE, '2026-01-05 11:00:00', '2026-01-05 11:50:00')"
    )
    conn.exec_driver_sql(
        "INSERT INTO checkins (id, session_id, participant_id, skipped, bond, goals, tasks, "
        "overall, created_at) VALUES (1, 's-old', 2, FALSE, 7, 8, 6, 9, '2026-01-05 11:55:00')"
    )
    conn.exec_driver_sql(
        "INSERT INTO audit_log (id, at, session_id, actor, action) VALUES "
        "(1, '2026-01-05 11:00:00', 's-old', 'user:1', 'session_created')"
    )
    # The version after it (main) added the columns back, its way, and went on writing.
    legacy._migrate(conn)
    # An index that failed to be created (e.g. duplicates at the time) stays missing.
    conn.exec_driver_sql(f'DROP INDEX "{LOST_INDEX}"')
    _write_main_rows(conn)
    conn.commit()


def _write_main_rows(conn: Connection) -> None:
    from sqlalchemy.orm import Session

    with Session(bind=conn) as db:
        db.add(
            legacy.User(
                id=2,
                email="new@example.org",
                display_name="Dr New",
                role=legacy.UserRole.ADMIN,
                password_hash="h2",
                preferences={"panel": "open"},
                created_at=T0,
                totp_secret="S" * 32,
                totp_enabled_at=T0,
                totp_last_step=58_000_000,
                login_epoch=3,
            )
        )
        db.flush()
        db.add(legacy.LoginSession(token_hash="l" * 64, user_id=2, created_at=T0, last_seen_at=T0))
        db.add(legacy.RecoveryCode(id=1, user_id=2, code_hash="r" * 64, used_at=None))
        db.add(legacy.AppSetting(key="require_two_factor", value=True, updated_at=T0))
        db.add(legacy.SetupToken(token_hash="u" * 64, expires_at=T0, used_at=T0))
        db.add(
            legacy.TherapySession(
                id="s-new",
                therapist_id=1,
                client_label="Sam",
                status=legacy.SessionStatus.LIVE,
                invite_token_hash="b" * 64,
                invite_expires_at=T0 + timedelta(hours=24),
                kept_invite_hashes=["k" * 64],
                created_at=T0,
                started_at=T0,
                timeline=[[0, 3]],
                signal_input=[[1, 2]],
            )
        )
        db.flush()
        db.add(
            legacy.Participant(
                id=3,
                session_id="s-new",
                role="client",
                identity_hash="d" * 64,
                admitted=True,
                denied=False,
                first_seen_at=T0,
                last_seen_at=T0,
            )
        )
        db.add(
            legacy.AuditEvent(
                id=2,
                at=T0,
                session_id="s-new",
                actor="user:1",
                action="session_created",
                detail="",
                prev_hash="p" * 64,
                hash="q" * 64,
            )
        )
        db.commit()


def _rows(metadata: Any) -> Any:
    def read(conn: Connection) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for table in metadata.sorted_tables:
            rows = conn.execute(select(table)).mappings().all()
            found[table.name] = sorted(
                ({k: _plain(v) for k, v in row.items()} for row in rows), key=repr
            )
        return found

    return read


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value


# What revisions after the baseline add: new tables start empty, new columns NULL.
ADDED_TABLES = {"incidents"}
ADDED_COLUMNS = {"sessions": ("planned_start", "planned_minutes", "invite_salt")}

BACKFILLED = {
    ("participants", "denied"): False,
    ("checkins", "comment"): "",
    ("audit_log", "detail"): "",
}


@BOTH
async def test_upgrading_a_database_made_by_main_keeps_every_row(
    empty_db_url: str, db_engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    await on_connection(empty_db_url, _build_legacy)
    before = await on_connection(empty_db_url, _rows(legacy.Base.metadata))
    assert all(before[t] for t in before), "every table has rows"
    assert await current(empty_db_url) == (None, True)

    result = rapport("db", "upgrade", env={"RAPPORT_DATABASE_URL": empty_db_url})
    assert result.returncode == 0, result.stderr
    assert "Unversioned database" in result.stdout
    for table, column in BACKFILLED:
        assert f"{table}.{column} NOT NULL" in result.stdout
    assert f"indexes of participants: {LOST_INDEX}" in result.stdout

    after = await on_connection(empty_db_url, _rows(Base.metadata))
    assert set(after) == set(before) | ADDED_TABLES
    assert all(after[table] == [] for table in ADDED_TABLES)
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table
        expected = [
            {
                **{
                    k: (BACKFILLED[(table, k)] if v is None and (table, k) in BACKFILLED else v)
                    for k, v in row.items()
                },
                **dict.fromkeys(ADDED_COLUMNS.get(table, ()), None),
            }
            for row in rows
        ]
        assert sorted(expected, key=repr) == after[table], table

    fresh = (
        f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        if db_engine == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    await upgrade(fresh)
    upgraded_schema = await on_connection(empty_db_url, _schema)
    assert upgraded_schema == await on_connection(fresh, _schema)
    assert await on_connection(empty_db_url, _model_diff) == []
    assert await current(empty_db_url) == (head_revision(), False)

    # The server starts on it: the old audit entries are sealed into the chain.
    database = Database(empty_db_url)
    await database.create_schema()
    await database.dispose()
    verify = rapport("audit", "verify", env={"RAPPORT_DATABASE_URL": empty_db_url})
    assert verify.returncode == 1 and "BROKEN" in verify.stderr  # "q"*64 is not a real hash


@BOTH
async def test_an_unversioned_database_with_unfillable_nulls_is_left_untouched(
    empty_db_url: str,
) -> None:
    """A NULL the application could never have written (a participant's role) is not
    invented: the upgrade stops, says where, and changes nothing — not even the tables it had
    already repaired (users, rebuilt on SQLite) before it got there."""

    def build(conn: Connection) -> None:
        legacy.Base.metadata.create_all(conn)
        conn.exec_driver_sql('ALTER TABLE "participants" DROP COLUMN "role"')
        conn.exec_driver_sql(
            "INSERT INTO users (id, email, display_name, role, password_hash, created_at) "
            "VALUES (1, 'a@example.org', '', 'ADMIN', 'h', '2026-01-05 10:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO sessions (id, therapist_id, client_label, status, invite_token_hash, "
            f"invite_expires_at, created_at) VALUES ('s1', 1, '', 'LIVE', '{'a' * 64}', "
            "'2026-01-06 10:00:00', '2026-01-05 10:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO participants (id, session_id, identity_hash, admitted, denied, "
            "first_seen_at, last_seen_at) VALUES (1, 's1', NULL, TRUE, FALSE, "
            "'2026-01-05 11:00:00', '2026-01-05 11:50:00')"
        )
        legacy._migrate(conn)
        # users needs only an index back: the first repair is DDL, with no write before it.
        conn.exec_driver_sql('DROP INDEX "ix_users_email"')
        conn.commit()

    await on_connection(empty_db_url, build)
    before = await on_connection(empty_db_url, _schema)
    result = rapport("db", "upgrade", env={"RAPPORT_DATABASE_URL": empty_db_url})
    assert result.returncode == 1
    assert "participants.role must not be empty but 1 rows have no value" in result.stderr
    assert await on_connection(empty_db_url, _schema) == before
    assert await current(empty_db_url) == (None, True)


# --------------------------------------------------------------------------- concurrency
async def test_ten_concurrent_first_starts_on_an_empty_postgresql_all_succeed(
    postgres: Any,
) -> None:
    url = postgres.new_database()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAPPORT_DATABASE_URL": url}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            "db",
            "upgrade",
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(10)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 240)
    codes = [p.returncode for p in procs]
    assert codes == [0] * 10, [err.decode()[-1500:] for _, err in outputs]
    said = [out.decode() for out, _ in outputs]
    assert sum(f"upgraded from empty to {head_revision()}" in s for s in said) == 1, said
    assert sum("already at" in s for s in said) == 9, said
    assert await on_connection(url, _model_diff) == []


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
async def test_concurrent_first_starts_on_one_sqlite_file_all_succeed(
    empty_db_url: str,
) -> None:
    """The file lock queues them: servers (and CLI commands) starting at once on a new file."""
    results = await asyncio.gather(*(Database(empty_db_url).create_schema() for _ in range(6)))
    assert len(results) == 6
    assert await current(empty_db_url) == (head_revision(), False)
    assert await on_connection(empty_db_url, _model_diff) == []


# --------------------------------------------------------------------------- location
def test_default_data_dir_does_not_depend_on_the_current_directory(tmp_path: Path) -> None:
    assert default_data_dir({"RAPPORT_DATA_DIR": str(tmp_path)}, euid=0) == tmp_path
    assert default_data_dir({}, euid=0) == Path("/var/lib/rapport")
    home = tmp_path / "home"
    assert default_data_dir({"HOME": str(home)}, euid=1000) == home / ".local/share/rapport"
    xdg = tmp_path / "xdg"
    assert default_data_dir({"HOME": str(home), "XDG_DATA_HOME": str(xdg)}, euid=1000) == (
        xdg / "rapport"
    )


def test_commands_from_two_directories_share_one_database(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"RAPPORT_DATA_DIR": str(store)}
    env_without_url = {k: v for k, v in os.environ.items() if k != "RAPPORT_DATABASE_URL"}
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    for cwd, email in ((here, "a@example.org"), (there, "b@example.org")):
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "user", "add", email, "--role", "admin"],
            env={**env_without_url, "PYTHONPATH": str(ROOT), **env},
            cwd=cwd,
            input=f"{PASSWORD}\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    assert list(here.iterdir()) == [] and list(there.iterdir()) == []
    assert (store / "rapport.db").exists()
    current_out = subprocess.run(
        [sys.executable, "-m", "server.cli", "db", "current"],
        env={**env_without_url, "PYTHONPATH": str(ROOT), **env},
        cwd=there,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert f"Database: SQLite {store / 'rapport.db'}" in current_out.stdout
    assert f"Revision: {head_revision()} (head)" in current_out.stdout

    async def users() -> int:
        database = Database(f"sqlite+aiosqlite:///{store / 'rapport.db'}")
        async with database.engine.connect() as conn:
            count = await conn.exec_driver_sql("SELECT count(*) FROM users")
            n = int(count.scalar_one())
        await database.dispose()
        return n

    assert asyncio.run(users()) == 2


__all__ = ["BASELINE", "eventually"]


async def test_a_new_file_is_wal_after_migrating_so_a_server_starting_beside_a_writer_connects(
    tmp_path: Path,
) -> None:
    """Switching a file to WAL needs it to itself, and SQLite refuses at once (no busy wait)
    while another connection writes. Every connection the server opens asks for WAL, so on a
    file the migration left in rollback-journal mode a server starting beside another one's
    write failed with "database is locked" at connect (six first starts at once, under load).
    The migration, under its lock, leaves the file in WAL mode; a later connection finds it so.
    """
    path = tmp_path / "rapport.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.execute("BEGIN IMMEDIATE")  # another server's write, in progress
        database = Database(url)
        try:
            async with database.engine.connect() as conn:
                busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
                users = (await conn.exec_driver_sql("SELECT count(*) FROM users")).scalar_one()
            assert (busy, users) == (5000, 0)
        finally:
            await database.dispose()
        other.execute("COMMIT")
    finally:
        other.close()
