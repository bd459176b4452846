"""The audit log: append-only, hash-chained, bounded for anonymous writers.

Every entry carries ``prev_hash`` (the hash of the entry before it, or ``GENESIS`` for the
first) and ``hash`` = SHA-256 over a canonical encoding of its own fields and ``prev_hash``.
Changing any field of an entry, or removing or inserting one, breaks the chain exactly there,
and ``rapport audit verify`` says where. What a chain cannot show on its own is the loss of the
newest entries or a wholesale rewrite by someone holding the database: ``verify`` prints the
head hash so an operator can keep it elsewhere (a ticket, a printed report) and compare.

Callers keep staging entries in their own transaction with ``record``; the chain is computed
at flush time, where the entry is about to be written. Appends are serialised twice: an
in-process lock queues this process's writers on the event loop, and the database's own lock
(SQLite's single writer, taken before the tail is read; a transaction-scoped advisory lock on
PostgreSQL) keeps every process on one database from reading the same tail. The unique index on
``prev_hash`` is the backstop: were both locks bypassed (an older version writing to the same
database), the second append fails instead of forking the chain, and ``record_now`` retries it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, event, func, insert, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction
from sqlalchemy.util import await_only

from .models import AuditEvent, utcnow

if TYPE_CHECKING:
    from .db import Database

GENESIS = "0" * 64
SEALED_ACTION = "audit_chain_sealed"

# Entries written by anonymous callers (anyone holding an invite link: knocking, leaving the
# waiting room, rejoining) per session and hour. A real session writes a dozen; past the budget
# one ``audit_capped`` entry says so and the rest are dropped, so a script knocking on a link
# cannot grow the database without limit. Failed sign-ins have their own budget
# (server/throttle.py).
ANONYMOUS_PER_SESSION_HOUR = 60
_ANONYMOUS_PREFIX = "client:"

# How long a writer waits for this process's audit lock before relying on the database's lock
# alone. The wait only ever ends this way when the holder is itself waiting for a row this
# writer's transaction holds; correctness never depends on the in-process lock.
_PROCESS_LOCK_WAIT_S = 1.0
_LOCK_HELD = "rapport_audit_lock"
_PG_LOCK_KEY = 0x52415050  # "RAPP": one application-wide advisory lock for the chain


def _utc(at: datetime) -> datetime:
    """Every time read from the database is aware UTC (models.UTCDateTime); a naive one here
    is a bug whose hash would depend on how it is read, so it is refused, not guessed."""
    if at.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return at.astimezone(UTC)


def canonical(
    prev_hash: str, at: datetime, session_id: str | None, actor: str, action: str, detail: str
) -> bytes:
    """The bytes an entry's hash covers: fixed order, UTC time to the microsecond (what both
    SQLite and PostgreSQL keep), so the same entry read back from either hashes the same."""
    stamp = _utc(at).replace(tzinfo=None).isoformat(timespec="microseconds")
    fields = ["rapport-audit-1", prev_hash, stamp, session_id, actor, action, detail]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def entry_hash(
    prev_hash: str, at: datetime, session_id: str | None, actor: str, action: str, detail: str
) -> str:
    return hashlib.sha256(canonical(prev_hash, at, session_id, actor, action, detail)).hexdigest()


# --------------------------------------------------------------------------- anonymous budget
_anonymous_counts: dict[tuple[str | None, int], int] = {}


def _anonymous_allowed(session_id: str | None) -> bool | None:
    """True within the budget, None for the first entry over it (write the notice), else
    False. Fixed hourly windows in process memory: the bound is what matters, not precision."""
    hour = int(time.time() // 3600)
    for key in [k for k in _anonymous_counts if k[1] != hour]:
        del _anonymous_counts[key]
    count = _anonymous_counts.get((session_id, hour), 0) + 1
    _anonymous_counts[(session_id, hour)] = count
    if count <= ANONYMOUS_PER_SESSION_HOUR:
        return True
    return None if count == ANONYMOUS_PER_SESSION_HOUR + 1 else False


def record(
    db: AsyncSession, action: str, actor: str, session_id: str | None = None, detail: str = ""
) -> None:
    """Stage an audit row in the caller's transaction; it is chained when flushed."""
    if actor.startswith(_ANONYMOUS_PREFIX):
        allowed = _anonymous_allowed(session_id)
        if allowed is None:
            action, actor = "audit_capped", "system"
            detail = f"over {ANONYMOUS_PER_SESSION_HOUR} anonymous entries this hour"
        elif not allowed:
            return
    db.add(AuditEvent(action=action, actor=actor, session_id=session_id, detail=detail[:500]))
    db.sync_session.info.setdefault(_TO_LOG, []).append((action, actor, session_id))


# --------------------------------------------------------------------------- the log
# Every audited event (session created, client knocked/admitted, session ended, a failed sign-in)
# is also one log line, written once its transaction commits: an operator's log then tells a
# session's story by its id, with the actors as ids, without the details (which can be free text).
_TO_LOG = "rapport_audit_to_log"
event_log = logging.getLogger("rapport.events")


@event.listens_for(Session, "after_commit")
def _log_committed(session: Session) -> None:
    for action, actor, session_id in session.info.pop(_TO_LOG, ()):
        fields: dict[str, Any] = {"event": action, "actor": actor}
        if session_id is not None:
            fields["session_id"] = session_id
        event_log.info(action.replace("_", " "), extra=fields)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_TO_LOG, None)


async def record_now(
    database: Database, action: str, actor: str, session_id: str | None = None, detail: str = ""
) -> None:
    """Write one audit row in its own transaction, retrying if another writer took the tail."""
    for attempt in range(3):
        try:
            async with database.session() as db:
                record(db, action, actor, session_id, detail)
                await db.commit()
            return
        except IntegrityError:
            if attempt == 2:
                raise


# --------------------------------------------------------------------------- chaining
def _sqlite_writing(conn: Connection) -> bool:
    """Whether this SQLite connection already holds the write lock (its transaction wrote)."""
    raw: Any = conn.connection.dbapi_connection
    inner = getattr(raw, "_connection", raw)  # aiosqlite's connection behind SQLAlchemy's adapter
    return bool(getattr(inner, "in_transaction", False))


def _lock_database(conn: Connection) -> None:
    """Make this transaction the chain's only writer until it ends, before reading the tail."""
    if conn.dialect.name == "sqlite":
        # pysqlite begins a transaction only at the first write, and in WAL mode a write
        # transaction is exclusive: a write that changes nothing takes that lock (waiting up to
        # busy_timeout), so no other connection can append between our read and our insert.
        conn.exec_driver_sql("UPDATE audit_log SET id = id WHERE 0")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")


_process_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _lock_process(session: Session, conn: Connection) -> None:
    """Queue this process's appends on the event loop rather than in the database's busy wait.

    Taken before the database lock, never after it: a SQLite transaction that already writes
    holds the database lock, so it skips this one (waiting here could deadlock with a holder
    waiting for it). The lock is released when the transaction ends.
    """
    if session.info.get(_LOCK_HELD) is not None:
        return
    if conn.dialect.name == "sqlite" and _sqlite_writing(conn):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a synchronous session: the database lock alone serialises it
    lock = _process_locks.setdefault(loop, asyncio.Lock())
    try:
        await_only(asyncio.wait_for(lock.acquire(), _PROCESS_LOCK_WAIT_S))
    except MissingGreenlet:
        return
    except TimeoutError:
        return
    session.info[_LOCK_HELD] = lock


@event.listens_for(Session, "after_transaction_end")
def _release_process_lock(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        lock = session.info.pop(_LOCK_HELD, None)
        if lock is not None and lock.locked():
            lock.release()


def _tail(conn: Connection) -> str:
    last = conn.scalar(
        select(AuditEvent.hash)
        .where(AuditEvent.hash.is_not(None))
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    return last or GENESIS


@event.listens_for(Session, "before_flush")
def _chain_new_entries(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    entries = [obj for obj in session.new if isinstance(obj, AuditEvent)]
    if not entries:
        return
    # The unit of work inserts rows of one table in the order they were added.
    entries.sort(key=lambda obj: inspect(obj).insert_order or 0)
    conn = session.connection()
    _lock_process(session, conn)
    _lock_database(conn)
    prev = _tail(conn)
    for entry in entries:
        entry.at = _utc(entry.at) if entry.at is not None else utcnow()
        entry.detail = entry.detail or ""
        entry.prev_hash = prev
        entry.hash = entry_hash(
            prev, entry.at, entry.session_id, entry.actor, entry.action, entry.detail
        )
        prev = entry.hash


def seal_unchained(conn: Connection) -> int:
    """Chain the entries an older version wrote, once, when a database is first upgraded.

    They are sealed rather than left outside the chain: from now on changing them is as
    visible as changing any other entry, and ``verify`` still says they were written before the
    chain (an ``audit_chain_sealed`` entry records how many and when), so nobody reads the
    seal as proof about what happened to them before the upgrade. Only a database with no
    chained entry at all is sealed: once the chain exists, an unchained entry is a break that
    ``verify`` reports, never something a restart quietly seals. Returns how many were sealed.
    """
    _lock_database(conn)
    if conn.scalar(select(func.count()).where(AuditEvent.hash.is_not(None))):
        return 0
    rows = conn.execute(
        select(
            AuditEvent.id,
            AuditEvent.at,
            AuditEvent.session_id,
            AuditEvent.actor,
            AuditEvent.action,
            AuditEvent.detail,
        ).order_by(AuditEvent.id)
    ).all()
    if not rows:
        return 0
    prev = GENESIS
    sealed: list[dict[str, Any]] = []
    for row in rows:
        digest = entry_hash(prev, row.at, row.session_id, row.actor, row.action, row.detail or "")
        sealed.append({"row_id": row.id, "prev": prev, "digest": digest})
        prev = digest
    conn.execute(
        update(AuditEvent)
        .where(AuditEvent.id == bindparam("row_id"))
        .values(prev_hash=bindparam("prev"), hash=bindparam("digest")),
        sealed,
    )
    at = utcnow()
    detail = f"{len(rows)} entries (ids {rows[0].id}-{rows[-1].id}) written before the chain"
    conn.execute(
        insert(AuditEvent).values(
            at=at,
            session_id=None,
            actor="system",
            action=SEALED_ACTION,
            detail=detail,
            prev_hash=prev,
            hash=entry_hash(prev, at, None, "system", SEALED_ACTION, detail),
        )
    )
    return len(rows)


# --------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class Verification:
    entries: int
    head: str
    broken_id: int | None = None
    broken_at: datetime | None = None
    problem: str = ""
    sealed_before_chain: int = 0
    sealed_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.broken_id is None


async def verify_chain(database: Database, batch: int = 2000) -> Verification:
    """Walk the log in id order and stop at the first entry whose link or hash is wrong."""
    prev = GENESIS
    count = 0
    last_id = 0
    sealed, sealed_at = 0, None
    async with database.session() as db:
        while True:
            rows = (
                (
                    await db.execute(
                        select(AuditEvent)
                        .where(AuditEvent.id > last_id)
                        .order_by(AuditEvent.id)
                        .limit(batch)
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                break
            for row in rows:
                if row.prev_hash != prev:
                    problem = (
                        "not chained (hash missing)"
                        if row.prev_hash is None
                        else "does not follow the entry before it (an entry before it was "
                        "changed, removed or inserted)"
                    )
                    return Verification(count, prev, row.id, row.at, problem, sealed, sealed_at)
                digest = entry_hash(
                    prev, row.at, row.session_id, row.actor, row.action, row.detail or ""
                )
                if row.hash != digest:
                    problem = "its contents were changed after it was written"
                    return Verification(count, prev, row.id, row.at, problem, sealed, sealed_at)
                if row.action == SEALED_ACTION and row.actor == "system" and sealed == 0:
                    sealed, sealed_at = count, row.at
                prev = digest
                count += 1
                last_id = row.id
            db.expunge_all()
    return Verification(count, prev, sealed_before_chain=sealed, sealed_at=sealed_at)
