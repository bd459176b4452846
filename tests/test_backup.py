"""`rapport backup` of a live server, and the README's restore, give back the same sessions.

A real `rapport serve` process on SQLite (WAL), therapist and client on real WebSockets: one
session ends with an agenda and a check-in, a second is in progress when the backup is taken.
The backup is restored as the README says (the file becomes the database of a fresh server on
the same address) and the summaries read back through the API are identical.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx

from tests.server_process import (
    NO_MEDIA,
    THERAPIST_EMAIL,
    THERAPIST_PASSWORD,
    RapportServer,
    rapport_server_process,
)
from tests.signaling_helpers import invite_token, open_room
from tests.support import eventually

SCORES = {"bond": 8, "goals": 7, "tasks": 9, "overall": 8}


async def _agenda(t: Any, text: str, homework: str) -> None:
    await t.send({"type": "agenda_add", "text": text})
    await t.send({"type": "homework", "text": homework})
    while True:
        state = await t.expect("agenda")
        if state["homework"] == homework and state["items"]:
            return


async def test_backup_of_a_live_server_restores_the_same_summaries(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.mkdir()
    with rapport_server_process(original, env=NO_MEDIA) as server:
        log = server.log_path.read_text()
        assert f"Database: SQLite {original / 'rapport.db'}" in log
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as therapist:
            login = await therapist.post(
                "/api/login", json={"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
            )
            assert login.status_code == 200
            first, t, c, cookie = await open_room(server.ws_url, therapist, "Robin")
            await _agenda(t, "How the week went", "One walk a day")
            await t.send({"type": "end"})
            await c.expect("ended")
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Cookie": cookie}, timeout=20
            ) as client_http:
                token = invite_token(first["invite_url"])
                done = await client_http.post(f"/api/join/{token}/checkin", json=SCORES)
                assert done.status_code == 201, done.text
            await t.close()
            await c.close()

            second, t2, c2, _ = await open_room(server.ws_url, therapist, "Robin")
            await _agenda(t2, "Sleep", "Keep a diary")
            assert (original / "rapport.db-wal").stat().st_size > 0  # recent writes in the WAL

            backup_path = tmp_path / "nightly.db"
            made = server.cli("backup", str(backup_path))
            assert made.returncode == 0, made.stderr
            assert "integrity ok" in made.stdout and "2 sessions" in made.stdout
            assert oct(backup_path.stat().st_mode & 0o777) == "0o600"
            assert not os.path.exists(f"{backup_path}-wal")  # noqa: ASYNC240 (one file)

            async def summary(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
                response = await client.get(f"/api/sessions/{sid}/summary")
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            ended_before = await summary(therapist, first["id"])
            live_before = await summary(therapist, second["id"])
            assert ended_before["checkin"]["total"] == sum(SCORES.values())
            assert ended_before["agenda"]["homework"] == "One walk a day"
            await t2.close()
            await c2.close()
        port, env = server.port, dict(server.env)

    # Restore (README, "Backups and restore"): the backup file becomes the database of a
    # fresh server; here a new data directory, on the same address so links read the same.
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    shutil.copy2(backup_path, restored_dir / "rapport.db")
    env["RAPPORT_DATABASE_URL"] = f"sqlite+aiosqlite:///{restored_dir / 'rapport.db'}"
    restored = RapportServer(
        base_url=f"http://127.0.0.1:{port}",
        env=env,
        log_path=restored_dir / "server.log",
        port=port,
    )
    restored.log_path.write_bytes(b"")
    try:
        restored.start()
        async with httpx.AsyncClient(base_url=restored.url, timeout=20) as therapist:

            async def signed_in() -> bool:
                response = await therapist.post(
                    "/api/login", json={"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
                )
                return response.status_code == 200

            await eventually(signed_in, timeout=30, interval=0.5, message="sign in restored")
            assert await summary(therapist, first["id"]) == ended_before
            after = await summary(therapist, second["id"])
            # The session in progress: what it had stored when the backup was taken (its live
            # signals were only in the original server's memory).
            assert after["session"] == live_before["session"]
            assert after["agenda"] == live_before["agenda"]
            assert after["session"]["status"] == "live"
    finally:
        restored.stop()
