"""`rapport backup PATH`: a consistent copy of a live SQLite database.

Copying the file is not a backup: with write-ahead logging the newest transactions live in
``rapport.db-wal`` until a checkpoint, so a ``cp`` of the main file alone can miss whole
sessions. SQLite's online backup API copies the database as one read transaction sees it,
WAL included, while the server keeps writing. The copy is switched to a rollback journal so it
is one self-contained file, checked with ``PRAGMA integrity_check``, written next to its
destination and renamed into place (never a half-written backup under the final name), and
created 0600 like the database itself (it holds clinical notes).

PostgreSQL has its own tools (pg_dump, or base backups with WAL archiving for point-in-time
recovery); the command says so instead of pretending.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

PG_HELP = (
    "rapport backup copies SQLite databases only; this server uses PostgreSQL. Back it up "
    "with PostgreSQL's own tools: `pg_dump --format=custom --file=rapport.dump DBNAME` "
    "(restore with pg_restore into an empty database), or base backups with WAL archiving "
    'for point-in-time recovery. See README, "Backups and restore".'
)


class BackupError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class BackupDone:
    path: Path
    size: int
    sessions: int
    audit_entries: int

    def describe(self) -> str:
        return (
            f"Backed up to {self.path} ({self.size} bytes; {self.sessions} sessions, "
            f"{self.audit_entries} audit entries; integrity ok)."
        )


def backup(url: str, destination: str | os.PathLike[str]) -> BackupDone:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(PG_HELP, exit_code=2)
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("An in-memory database has nothing to back up.", exit_code=2)
    source = Path(parsed.database)
    if not source.exists():
        raise BackupError(f"No database at {source}: nothing to back up.", exit_code=2)
    target = Path(destination).expanduser()
    if target.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = target / f"rapport-{stamp}.db"
    if target.exists():
        raise BackupError(f"{target} already exists; choose a new file name.", exit_code=2)
    if not target.parent.is_dir():
        raise BackupError(f"No directory {target.parent} to write the backup in.", exit_code=2)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                check = dst.execute("PRAGMA integrity_check").fetchone()
                if not check or check[0] != "ok":
                    raise BackupError(f"The copy failed its integrity check: {check}")
                sessions = _count(dst, "sessions")
                audit = _count(dst, "audit_log")
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise BackupError(f"Backup failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return BackupDone(target, target.stat().st_size, sessions, audit)


def _count(conn: sqlite3.Connection, table: str) -> int:
    try:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    except sqlite3.OperationalError:
        return 0
