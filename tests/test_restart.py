"""A server crash mid-session loses at most the last persistence interval of signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from media.alliance.engine import Role
from media.alliance.live import LiveSignals
from server.alliance_hub import pack_timeline
from server.db import Database
from server.models import TherapySession
from tests.conftest import PASSWORD, free_port
from tests.media_helpers import FakeBrowser, PcmTrack, speech
from tests.signaling_helpers import Participant, invite_token, login_cookie, open_room
from tests.support import eventually, eventually_sync


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


def _serve(db: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RAPPORT_DATABASE_URL": db,
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

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually_sync(healthy, timeout=60, interval=0.1, message="server /healthz")
    except TimeoutError:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(
            f"server did not start: {err.decode(errors='replace')[-2000:]}"
        ) from None
    return proc


async def _metrics_until(
    http: httpx.AsyncClient,
    session_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The first metrics matching ``predicate``; every response polled is added to ``seen``."""

    async def poll() -> dict[str, Any] | None:
        response = await http.get(f"/api/sessions/{session_id}/metrics")
        if response.status_code != 200:
            return None
        if seen is not None:
            seen.append(response.json())
        return response.json() if predicate(response.json()) else None

    return await eventually(poll, timeout=timeout, interval=0.25, message="metrics condition")


async def _stored(db: str, session_id: str) -> TherapySession:
    database = Database(db)
    try:
        async with database.session() as dbs:
            row = await dbs.get(TherapySession, session_id)
            assert row is not None
            return row
    finally:
        await database.dispose()


async def _stored_talk_at_least(db: str, session_id: str, seconds: float) -> bool:
    row = await _stored(db, session_id)
    talk_s: float = (row.metrics or {}).get("client_talk_s", 0.0)
    return talk_s >= seconds


@pytest.mark.both_databases
async def test_signals_survive_a_killed_server(db_url: str) -> None:
    db, port = db_url, free_port()
    env = {**os.environ, "RAPPORT_DATABASE_URL": db}
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
            await eventually(
                lambda: _stored_talk_at_least(db, session["id"], 3.0),
                timeout=15,
                interval=0.5,
                message="a persisted round with 3 s of client talk",
            )
            server.send_signal(signal.SIGKILL)  # a crash: no shutdown hooks run
            server.wait(timeout=10)
            await t.close()
            await c.close()
        # What the killed server left behind: the only source the new one can resume from.
        crashed = await _stored(db, session["id"])
        assert crashed.signal_input and crashed.metrics and crashed.timeline

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
            seen: list[dict[str, Any]] = []
            more = await _metrics_until(
                http,
                session["id"],
                lambda s: s["client_talk_s"] >= resumed["client_talk_s"] + 2,
                seen=seen,
            )
            assert more["duration_s"] > resumed["duration_s"]
            # Only the replayed engine continues the totals: a fresh engine (the database
            # fallback answers /metrics until it has a snapshot) would restart them near zero.
            durations = [s["duration_s"] for s in seen]
            assert all(d >= crashed.metrics["duration_s"] for d in durations), durations
            assert durations == sorted(durations), durations
            # ...and its timeline is the crashed one, continued: the replay rebuilt every
            # second from the run-length encoded input (the last seconds may still be revised
            # by later audio, e.g. a pause that turns out to be bridged).
            live = (await http.get(f"/api/sessions/{session['id']}/timeline")).json()["seconds"]
            before = crashed.timeline[:-2]
            assert pack_timeline(live)[: len(before)] == before
            assert len(live) > len(crashed.timeline)
            await t.send({"type": "end"})
            await c.expect("ended")
            await t.close()
            await c.close()
    finally:
        server.kill()
        server.wait(timeout=10)
