"""A server crash mid-session loses at most the last persistence interval of signals."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from media.alliance.engine import Role
from media.alliance.live import LiveSignals
from server.db import Database
from server.models import TherapySession
from tests.conftest import PASSWORD, free_port
from tests.media_helpers import FakeBrowser, PcmTrack, speech
from tests.signaling_helpers import Participant, invite_token, login_cookie, open_room


def test_replaying_recorded_input_rebuilds_the_engine_exactly() -> None:
    rng = random.Random(7)
    live = LiveSignals("s")
    state: dict[Role, bool | None] = {Role.THERAPIST: None, Role.CLIENT: None}
    for _ in range(6000):
        if rng.random() < 0.03:
            role = rng.choice(list(Role))
            state[role] = rng.choice([None, False, True, True])
        live.engine.advance(dict(state))
        live._record(dict(state))
    restored = LiveSignals.restore("s", live.input_runs())
    assert restored.engine.snapshot() == live.engine.snapshot()
    assert restored.timeline() == live.timeline()
    assert len(live.input_runs()) < 600  # run-length encoding keeps it small


def _serve(db: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "RAPPORT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "RAPPORT_MEDIA_ADDRESSES": "127.0.0.1",
        "RAPPORT_ALLOW_LOOPBACK_CANDIDATES": "true",
        "RAPPORT_LOG_JSON": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise RuntimeError(f"server did not start: {err.decode(errors='replace')[-2000:]}")


async def _metrics_until(
    http: httpx.AsyncClient,
    session_id: str,
    predicate,  # type: ignore[no-untyped-def]
    timeout: float = 20.0,
) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await http.get(f"/api/sessions/{session_id}/metrics")
        if response.status_code == 200 and predicate(response.json()):
            return response.json()
        await asyncio.sleep(0.25)
    raise TimeoutError("metrics condition not reached")


async def test_signals_survive_a_killed_server(tmp_path: Path) -> None:
    db, port = tmp_path / "rapport.db", free_port()
    env = {**os.environ, "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "user",
            "add",
            "t@example.test",
            "--role",
            "therapist",
        ],
        input=f"{PASSWORD}\n".encode(),
        env=env,
        check=True,
        capture_output=True,
    )
    base = f"http://127.0.0.1:{port}"
    server = _serve(db, port)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await http.post("/api/login", json={"email": "t@example.test", "password": PASSWORD})
            session, t, c, cookie = await open_room(f"ws://127.0.0.1:{port}", http)
            await t.start_media()
            await c.start_media(FakeBrowser(audio=PcmTrack(speech(30.0, voice="en+f3"), loop=True)))
            await _metrics_until(http, session["id"], lambda s: s["client_talk_s"] >= 4.0)
            # Wait for a persistence round that includes at least 3 s of client talk.
            stored_talk = 0.0
            deadline = time.monotonic() + 15
            database = Database(f"sqlite+aiosqlite:///{db}")
            while stored_talk < 3.0 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                async with database.session() as dbs:
                    row = await dbs.get(TherapySession, session["id"])
                    assert row is not None
                    stored_talk = (row.metrics or {}).get("client_talk_s", 0.0)
            await database.dispose()
            server.send_signal(signal.SIGKILL)  # a crash: no shutdown hooks run
            server.wait(timeout=10)
            await t.close()
            await c.close()

        port = free_port()  # a fresh port: nothing to wait for from the killed process
        base = f"http://127.0.0.1:{port}"
        server = _serve(db, port)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await http.post("/api/login", json={"email": "t@example.test", "password": PASSWORD})
            stored = (await http.get(f"/api/sessions/{session['id']}/metrics")).json()
            assert stored["client_talk_s"] >= 3.0
            t = await Participant.connect(
                f"ws://127.0.0.1:{port}/ws/sessions/{session['id']}", login_cookie(http)
            )
            await t.send({"type": "join"})
            await t.expect("joined")
            resumed = (await http.get(f"/api/sessions/{session['id']}/metrics")).json()
            # The engine was rebuilt from the stored input: nothing lost, nothing reset.
            assert resumed["client_talk_s"] >= stored["client_talk_s"]
            assert resumed["duration_s"] >= stored["duration_s"]
            c = await Participant.connect(
                f"ws://127.0.0.1:{port}/ws/join/{invite_token(session['invite_url'])}", cookie
            )
            await c.send({"type": "join"})
            await c.expect("admitted")  # same browser: straight back in after the restart
            await t.start_media()
            await c.start_media(FakeBrowser(audio=PcmTrack(speech(30.0, voice="en+f3"), loop=True)))
            more = await _metrics_until(
                http, session["id"], lambda s: s["client_talk_s"] >= resumed["client_talk_s"] + 2
            )
            assert more["duration_s"] > resumed["duration_s"]
            await t.send({"type": "end"})
            await c.expect("ended")
            await t.close()
            await c.close()
    finally:
        server.kill()
        server.wait(timeout=10)
