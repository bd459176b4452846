"""Schema migrations (Alembic), shipped inside the package and configured in code.

Every way a database is migrated — ``rapport db upgrade``, ``rapport serve`` at start, the
other commands that open the database — goes through ``upgrade`` here, under one lock per
database: PostgreSQL's session advisory lock, or an exclusive ``flock`` on a file beside the
SQLite database. Ten servers started at once on an empty database therefore migrate it once;
the other nine wait, find it at head and go on.

A database made before migrations existed (tables, no ``alembic_version``) was kept up to date
by adding missing columns on start, which lost their NOT NULL and (for a dropped index) their
indexes. It is repaired to the baseline revision first — missing tables and columns created,
NULLs in NOT NULL columns filled with what the application would have written, NOT NULL and
indexes restored (SQLite: by rebuilding the table, keeping every row) — then stamped, then
upgraded like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Index, MetaData, Table, func, inspect, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateTable

from ..db import _private_files
from ..models import utcnow
from .versions.r0001_baseline import BACKFILL, NOW_BACKFILL, baseline_metadata

HERE = Path(__file__).resolve().parent
BASELINE = "0001_baseline"
# One application-wide advisory lock for schema changes (distinct from the audit chain's).
PG_MIGRATION_LOCK = 0x52415051


# Alembic narrates every step at INFO ("Context impl…", "Will assume transactional DDL"); the
# commands print what was done instead, and the server's log keeps warnings and errors.
logging.getLogger("alembic").setLevel(logging.WARNING)


class RepairError(RuntimeError):
    """An unversioned database that cannot be brought to the baseline without inventing data."""


@dataclass
class UpgradeResult:
    before: str | None  # revision found; None for an empty or unversioned database
    after: str | None
    repaired: list[str] = field(default_factory=list)  # what an unversioned database needed
    unversioned: bool = False

    def describe(self) -> str:
        if self.unversioned:
            done = "; ".join(self.repaired) if self.repaired else "nothing to repair"
            return (
                f"Unversioned database (made before migrations) brought to {BASELINE} "
                f"({done}), now at {self.after}."
            )
        if self.before == self.after:
            return f"Database already at {self.after} (head)."
        return f"Database upgraded from {self.before or 'empty'} to {self.after}."


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@contextlib.asynccontextmanager
async def _file_lock(path: Path | None) -> AsyncIterator[None]:
    """Exclusive flock on ``DB.migrate-lock``: SQLite has no session lock that outlives the
    transactions a migration needs, so processes on one file queue here instead."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


async def upgrade(url: str, revision: str = "head") -> UpgradeResult:
    """Bring the database at ``url`` to ``revision`` under the migration lock."""
    _create_private(url)
    engine = create_async_engine(url, poolclass=NullPool, hide_parameters=True)
    try:
        async with _file_lock(_sqlite_path(url)), engine.connect() as conn:
            await _lock(conn)
            try:
                result = await conn.run_sync(_upgrade_sync, revision)
                await conn.commit()
            finally:
                await _unlock(conn)
            return result
    finally:
        await engine.dispose()


async def current(url: str) -> tuple[str | None, bool]:
    """The database's revision, and whether it has tables but no version (made before
    migrations existed)."""
    _create_private(url)
    engine = create_async_engine(url, poolclass=NullPool, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current_sync)
    finally:
        await engine.dispose()


def _create_private(url: str) -> None:
    """SQLite creates a missing file with the umask's mode; the database holds clinical notes."""
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _private_files(path)


def _current_sync(conn: Connection) -> tuple[str | None, bool]:
    revision = _current(conn)
    return revision, revision is None and _unversioned(conn)


def _unversioned(conn: Connection) -> bool:
    tables = set(inspect(conn).get_table_names())
    return "alembic_version" not in tables and bool(tables & set(baseline_metadata().tables))


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(f"SELECT pg_advisory_lock({PG_MIGRATION_LOCK})")
        await conn.commit()
    elif conn.dialect.name == "sqlite":
        # Rebuilding a table drops it: with foreign keys enforced that would cascade (or fail).
        # The pragma only takes effect outside a transaction, so before anything else.
        await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await conn.exec_driver_sql("PRAGMA busy_timeout=30000")
        # The server's connections each ask for WAL mode, and SQLite refuses that switch at
        # once (no busy wait) while another connection writes: done here, under the lock, a
        # server starting beside another one's write finds the file already switched.
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.commit()
        # One transaction for the whole run, DDL included (the driver would otherwise commit
        # each DDL statement on its own), taking the write lock at once: a repair that stops
        # half-way leaves the database as it was.
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


async def _unlock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        with contextlib.suppress(Exception):
            await conn.rollback()
            await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})")
            await conn.commit()


def _upgrade_sync(conn: Connection, revision: str) -> UpgradeResult:
    before = _current(conn)
    result = UpgradeResult(before=before, after=None)
    config = alembic_config(conn)
    if before is None and _unversioned(conn):
        result.unversioned = True
        result.repaired = repair_to_baseline(conn)
        command.stamp(config, BASELINE)
    command.upgrade(config, revision)
    result.after = _current(conn)
    if conn.dialect.name == "sqlite":
        problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if problems:
            raise RepairError(f"foreign key check failed after the migration: {problems[:5]}")
    return result


# --------------------------------------------------------------------------- repair
def repair_to_baseline(conn: Connection) -> list[str]:
    """Make an unversioned database's schema exactly the baseline's, keeping every row."""
    baseline = baseline_metadata()
    dialect = conn.dialect.name
    changes: list[str] = []
    now = utcnow()
    for table in baseline.sorted_tables:
        insp = inspect(conn)
        if not insp.has_table(table.name):
            table.create(conn)
            changes.append(f"created table {table.name}")
            continue
        have = {col["name"]: col for col in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                ddl = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}')
                changes.append(f"added {table.name}.{column.name}")
        loose = [
            column
            for column in table.columns
            if not column.nullable
            and not column.primary_key
            and have.get(column.name, {"nullable": True})["nullable"]
        ]
        for column in loose:
            filled = _backfill(conn, table, column.name, now)
            changes.append(
                f"{table.name}.{column.name} NOT NULL"
                + (f" ({filled} empty values filled)" if filled else "")
            )
        wrong_indexes = _index_differences(conn, table)
        if not loose and not wrong_indexes:
            continue
        if wrong_indexes:
            changes.append(f"indexes of {table.name}: {', '.join(sorted(wrong_indexes))}")
        if dialect == "sqlite":
            _rebuild_sqlite(conn, table)
        else:
            for column in loose:
                conn.exec_driver_sql(
                    f'ALTER TABLE "{table.name}" ALTER COLUMN "{column.name}" SET NOT NULL'
                )
            existing = {ix["name"] for ix in inspect(conn).get_indexes(table.name)}
            for index in table.indexes:
                if index.name in wrong_indexes:
                    if index.name in existing:
                        conn.exec_driver_sql(f'DROP INDEX "{index.name}"')
                    index.create(conn)
    return changes


def _backfill(conn: Connection, table: Table, name: str, now: Any) -> int:
    column = table.c[name]
    nulls = conn.scalar(select(func.count()).select_from(table).where(column.is_(None))) or 0
    if not nulls:
        return 0
    key = (table.name, name)
    if key in BACKFILL:
        value: Any = BACKFILL[key]
    elif key in NOW_BACKFILL:
        value = now
    else:
        raise RepairError(
            f"{table.name}.{name} must not be empty but {nulls} rows have no value, and there "
            "is no value the application would have written: fill them in, then upgrade again"
        )
    conn.execute(update(table).where(column.is_(None)).values({name: value}))
    return int(nulls)


def _index_signature(columns: list[str], unique: bool) -> tuple[tuple[str, ...], bool]:
    return tuple(columns), bool(unique)


def _index_differences(conn: Connection, table: Table) -> set[str]:
    """Names of the baseline's indexes that are missing or differ (columns, uniqueness)."""
    found = {
        ix["name"]: _index_signature([c for c in ix["column_names"] if c], ix["unique"])
        for ix in inspect(conn).get_indexes(table.name)
    }
    wrong: set[str] = set()
    for index in table.indexes:
        assert isinstance(index, Index) and index.name is not None
        want = _index_signature([c.name for c in index.columns], bool(index.unique))
        if found.get(str(index.name)) != want:
            wrong.add(str(index.name))
    return wrong


def _rebuild_sqlite(conn: Connection, table: Table) -> None:
    """SQLite's documented way to change a table's definition: create the new one under a
    temporary name, copy the rows, drop the old, rename (foreign keys are off meanwhile, and
    references from other tables name the table, so they follow)."""
    copy = MetaData()
    for other in table.metadata.tables.values():
        other.to_metadata(copy)
    temp_name = f"_rebuild_{table.name}"
    temp = table.to_metadata(copy, name=temp_name)
    for index in list(temp.indexes):
        temp.indexes.discard(index)
    for ix in inspect(conn).get_indexes(table.name):
        conn.exec_driver_sql(f'DROP INDEX "{ix["name"]}"')
    conn.execute(CreateTable(temp))
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    conn.exec_driver_sql(f'INSERT INTO "{temp_name}" ({names}) SELECT {names} FROM "{table.name}"')
    conn.exec_driver_sql(f'DROP TABLE "{table.name}"')
    conn.exec_driver_sql(f'ALTER TABLE "{temp_name}" RENAME TO "{table.name}"')
    for index in table.indexes:
        index.create(conn)
