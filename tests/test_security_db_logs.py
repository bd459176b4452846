"""A failing database write never puts clinical text into logs (issue 12, item 2)."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from server.db import Database
from server.hooks import DatabaseRoomHooks
from server.logs import JsonFormatter
from server.models import TherapySession, User, UserRole

AGENDA_TEXT = "Talk about the miscarriage and Tom's drinking"


async def test_database_error_does_not_log_agenda_text(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}")
    await database.create_schema()
    async with database.session() as db:
        user = User(email="t@example.org", role=UserRole.THERAPIST, password_hash="x")
        db.add(user)
        await db.flush()
        db.add(
            TherapySession(
                id="s1",
                therapist_id=user.id,
                invite_token_hash="h" * 64,
                invite_expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        await db.commit()
    async with database.engine.begin() as conn:
        # A disk-full or locked database, reproducibly: every update of a session fails.
        await conn.exec_driver_sql(
            "CREATE TRIGGER fail_updates BEFORE UPDATE ON sessions "
            "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
        )

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("rapport.test_db_logs")
    log.addHandler(handler)
    hooks = DatabaseRoomHooks(database)
    try:
        with pytest.raises(DBAPIError) as caught:
            await hooks.save_agenda("s1", {"items": [{"text": AGENDA_TEXT, "done": False}]})
        # What the room's handler does with a failure: log.exception(...).
        try:
            raise caught.value
        except DBAPIError:
            log.exception("handling agenda failed in session %s", "s1")
    finally:
        log.removeHandler(handler)
        await database.dispose()

    logged = stream.getvalue()
    print(f"\nlogged: {logged[:400]}")
    assert "simulated failure" in logged  # the failure itself is logged...
    assert "miscarriage" not in str(caught.value)  # ...without the parameters
    assert "miscarriage" not in logged
    assert "drinking" not in logged
