"""SIGTERM drains `rapport serve` instead of cutting the calls it hosts.

A real server process, real aiortc peers: after the signal the node reports not-ready at once,
refuses new sessions and joins with ``draining``, keeps the running call's media flowing, and
exits by the drain deadline with the session resumable and its agenda and signals stored.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from media.alliance.engine import SignalConfig
from server.db import Database
from server.models import TherapySession
from tests.media_helpers import FakeBrowser
from tests.server_process import RapportServer, rapport_server_process
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    open_room,
)
from tests.support import eventually

DRAIN_TIMEOUT_S = 20
TICKS_PER_S = 1000 // SignalConfig().frame_ms


@pytest.fixture
def draining_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RapportServer]:
    timeout = getattr(request, "param", DRAIN_TIMEOUT_S)
    env = {"RAPPORT_DRAIN_TIMEOUT_S": str(timeout), "RAPPORT_MEDIA_WORKERS": "1"}
    with rapport_server_process(tmp_path, env) as server:
        yield server


async def _therapist(server: RapportServer) -> httpx.AsyncClient:
    email, password = server.users["therapist"]
    client = httpx.AsyncClient(base_url=server.base_url, timeout=10)
    response = await client.post("/api/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return client


async def _stored(server: RapportServer, session_id: str) -> TherapySession:
    database = Database(server.env["RAPPORT_DATABASE_URL"])
    try:
        async with database.session() as db:
            row = await db.get(TherapySession, session_id)
            assert row is not None
            return row
    finally:
        await database.dispose()


def _ticks(row: TherapySession) -> int:
    return sum(int(count) for _, count in row.signal_input or [])


async def _rtp_received(browser: FakeBrowser) -> int:
    """RTP packets this peer has received so far (audio and video)."""
    report = await browser.pc.getStats()
    return sum(
        int(getattr(s, "packetsReceived", 0)) for s in report.values() if s.type == "inbound-rtp"
    )


async def _readyz(server: RapportServer) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=1) as http:
            return await http.get("/readyz")
    except httpx.HTTPError:
        return None


async def _refused(url: str, cookie: str) -> tuple[dict[str, Any], int | None]:
    """Connect a socket the draining server must refuse: its error and its close code."""
    p = await Participant.connect(url, cookie)
    error = await p.error(timeout=5)
    await p.ws.wait_closed()
    return error, p.ws.close_code


async def _closed_with(p: Participant) -> int | None:
    try:
        while True:
            await p.ws.recv()
    except websockets.ConnectionClosed:
        return p.ws.close_code


async def test_sigterm_drains_the_live_call_then_exits_by_the_deadline(
    draining_server: RapportServer,
) -> None:
    server = draining_server
    therapist = await _therapist(server)
    session, t, c, client_cookie = await open_room(server.ws_url, therapist)
    await t.start_media()
    await c.start_media()
    tb, cb = t.browser, c.browser
    assert tb is not None and cb is not None
    await tb.wait_for("audio", 25, timeout=20)
    await cb.wait_for("video", 10, timeout=20)
    await t.send({"type": "agenda_add", "text": "Sleep since last week"})
    agenda_state = await _agenda_with(t, "Sleep since last week")
    created = await therapist.post("/api/sessions", json={"client_label": "later"})
    assert created.status_code == 201, created.text
    other = created.json()["id"]
    # Signals are stored while the call runs (every few seconds).
    before = await eventually(
        lambda: _stored_with_ticks(server, session["id"], 2 * TICKS_PER_S),
        timeout=20,
        interval=0.5,
        message="signals stored before the signal",
    )

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    ready = await eventually(
        lambda: _readyz(server), timeout=1.0, interval=0.05, message="/readyz answers"
    )
    assert ready.status_code == 503, ready.text
    assert ready.json()["draining"] is True

    # The call keeps flowing: RTP still arrives at the therapist's peer seconds later.
    packets = await _rtp_received(tb)
    await eventually(lambda: _rtp_grew(tb, packets, 100), timeout=8, message="RTP after SIGTERM")
    await t.send({"type": "ping", "t": 1})
    await t.expect("pong")

    # New sessions, new clients and rooms not running here are refused; returning is not.
    created = await therapist.post("/api/sessions", json={"client_label": "new"})
    assert created.status_code == 503, created.text
    assert "draining" in created.json()["detail"]
    assert int(created.headers["retry-after"]) > 0
    error, code = await _refused(
        f"{server.ws_url}/ws/join/{invite_token(session['invite_url'])}", new_client_cookie()
    )
    assert (error["code"], error["fatal"], code) == ("draining", True, 1013)
    # A scheduled session of the same therapist has no room here.
    error, code = await _refused(f"{server.ws_url}/ws/sessions/{other}", login_cookie(therapist))
    assert (error["code"], error["fatal"], code) == ("draining", True, 1013)
    again = await Participant.connect(
        f"{server.ws_url}/ws/join/{invite_token(session['invite_url'])}", client_cookie
    )
    assert (await again.expect("welcome"))["role"] == "client"
    await again.ws.close()

    packets = await _rtp_received(tb)
    await eventually(
        lambda: _rtp_grew(tb, packets, 100),
        timeout=8,
        message="RTP still flowing later in the drain",
    )
    assert server.process.poll() is None, "the server exited while its call was live"

    # At the deadline the rooms close with 1012 (reconnect to the next process) and it exits.
    assert await _closed_with(t) == 1012
    assert await _closed_with(c) == 1012
    server.process.wait(timeout=DRAIN_TIMEOUT_S + 15)
    exited_after = time.monotonic() - signalled
    print(f"\ndrain: exit {exited_after:.1f} s after SIGTERM (deadline {DRAIN_TIMEOUT_S} s)")
    assert DRAIN_TIMEOUT_S - 1 <= exited_after <= DRAIN_TIMEOUT_S + 10
    assert server.process.returncode == 0, server.log_tail()
    log = server.log_tail()
    for step in ("drain started: 1 live call", "drain deadline reached", "drain finished"):
        assert step in log, log
    # The lifecycle line an operator searches by session id (issue 14: "drained" logged).
    assert f"event=session_drained session_id={session['id']}" in log, log

    row = await _stored(server, session["id"])
    assert row.status == "live"  # resumable after the restart
    assert [i["text"] for i in (row.agenda or {}).get("items", [])] == [
        i["text"] for i in agenda_state["items"]
    ]
    # The call's signals kept being counted through the drain and were flushed at exit.
    assert _ticks(row) >= _ticks(before) + (DRAIN_TIMEOUT_S - 5) * TICKS_PER_S
    assert row.metrics is not None and row.timeline
    await therapist.aclose()
    await tb.close()
    await cb.close()


@pytest.mark.parametrize("draining_server", [600], indirect=True)
async def test_a_second_sigterm_exits_at_once(draining_server: RapportServer) -> None:
    server = draining_server
    therapist = await _therapist(server)
    session, t, c, _ = await open_room(server.ws_url, therapist)
    await t.send({"type": "agenda_add", "text": "Plan for the holidays"})
    await _agenda_with(t, "Plan for the holidays")

    server.process.send_signal(signal.SIGTERM)
    ready = await eventually(
        lambda: _readyz(server), timeout=1.0, interval=0.05, message="/readyz answers"
    )
    assert ready.status_code == 503
    await t.send({"type": "ping", "t": 1})
    await t.expect("pong")
    assert server.process.poll() is None  # a live call: the first signal only drains

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await _closed_with(t) == 1012
    assert await _closed_with(c) == 1012
    server.process.wait(timeout=15)
    print(f"\nsecond SIGTERM: exit {time.monotonic() - signalled:.1f} s later (deadline 600 s)")
    assert "received again: exiting now" in server.log_tail()
    row = await _stored(server, session["id"])
    assert row.status == "live"
    assert [i["text"] for i in (row.agenda or {})["items"]] == ["Plan for the holidays"]
    await therapist.aclose()


async def _agenda_with(p: Participant, text: str) -> dict[str, Any]:
    while True:
        state = await p.expect("agenda")
        if any(item["text"] == text for item in state["items"]):
            return state


async def _stored_with_ticks(
    server: RapportServer, session_id: str, ticks: int
) -> TherapySession | None:
    row = await _stored(server, session_id)
    return row if _ticks(row) >= ticks else None


async def _rtp_grew(browser: FakeBrowser, since: int, by: int) -> bool:
    return await _rtp_received(browser) >= since + by
