"""Async engine and session factory; the schema is migrated (Alembic) on start-up.

SQLite is the embedded default. ``create_schema`` runs ``server.migrations.upgrade`` under its
lock, so a start on an empty, old or current database, alone or beside other starting
processes, ends at the newest revision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from .audit import seal_unchained


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            _private_files(Path(parsed.database))
        # Bound parameters carry clinical text (agenda items, labels): never into exception
        # messages, and so never into logs.
        self.engine: AsyncEngine = create_async_engine(
            url, pool_pre_ping=not self.is_sqlite, hide_parameters=True
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_schema(self) -> None:
        from .migrations import upgrade

        await upgrade(self.url)
        async with self.engine.begin() as conn:
            await conn.run_sync(seal_unchained)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as db:
            yield db

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def _private_files(path: Path) -> None:
    """The database holds clinical notes: readable by the server's user only. SQLite gives its
    -wal and -shm files the main file's mode, so creating that one 0600 covers all three;
    files an older version created world-readable are tightened."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: object) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
