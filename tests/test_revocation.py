"""Revocation reaches people already connected (issue 12, items 7 and 8).

Real sockets against a live server: a renewed or expired link, a denial, a removal and a
sign-out act on open sockets within a second; the waiting room is bounded; "end" writes the
database before it tells anyone.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import httpx
import pytest

from tests.conftest import NO_MEDIA_WORKER, PASSWORD, LiveServer, http_client
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
    open_room,
    open_socket,
)
from tests.support import eventually

pytestmark = [pytest.mark.asyncio, NO_MEDIA_WORKER]

# The acceptance deadline for revocation to reach an open socket.
WITHIN_S = 1.0


async def _knocker(
    server: LiveServer,
    invite_url: str,
    cookie: str | None = None,
    *,
    local_host: str = "127.0.0.1",
    join: bool = True,
) -> Participant:
    """A client socket (from ``local_host``: any 127/8 address is this machine) that knocks."""
    ws = await open_socket(
        f"{server.ws_url}/ws/join/{invite_token(invite_url)}",
        additional_headers={"Cookie": cookie or new_client_cookie()},
        local_addr=(local_host, 0),
    )
    c = Participant(ws)
    await c.expect("welcome")
    if join:
        await c.send({"type": "join", "display_name": "K"})
    return c


async def _open(server: LiveServer, invite_url: str, cookie: str | None = None) -> Participant:
    """A client socket on ``invite_url`` that is refused before any welcome."""
    ws = await open_socket(
        f"{server.ws_url}/ws/join/{invite_token(invite_url)}",
        additional_headers={"Cookie": cookie or new_client_cookie()},
    )
    return Participant(ws)


async def _refused(c: Participant, code: str, close_code: int, within: float = WITHIN_S) -> str:
    """The socket is told ``code`` (fatal) and closed with ``close_code``, within ``within``."""
    error = await c.expect("error", timeout=within, code=code)
    assert error["fatal"] is True, error
    await asyncio.wait_for(c.ws.wait_closed(), within)
    assert c.ws.close_code == close_code, (c.ws.close_code, error)
    return str(error["message"])


async def _waiting_or_error(c: Participant, within: float = 10.0) -> dict[str, Any]:
    """The knock's answer: "waiting", or the error that refused it."""

    async def _next() -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await c.ws.recv())
            if message["type"] in ("waiting", "error"):
                return message

    return await asyncio.wait_for(_next(), within)


async def _alive(c: Participant) -> None:
    await c.send({"type": "ping", "t": 7.0})
    await c.expect("pong", timeout=5, t=7.0)


async def _lobby_becomes(t: Participant, size: int, within: float = WITHIN_S) -> None:
    """The therapist's lobby shows ``size`` people within ``within`` (earlier updates skipped)."""

    async def _until() -> None:
        while len((await t.expect("lobby", timeout=within))["waiting"]) != size:
            pass

    await asyncio.wait_for(_until(), within)


async def _has(admin: httpx.AsyncClient, session_id: str, action: str) -> bool:
    events = (await admin.get("/api/admin/audit", params={"session_id": session_id})).json()
    return action in [e["action"] for e in events["events"]]


# ----------------------------------------------------------------- 1. renewal and expiry
async def test_renewal_closes_old_link_sockets_and_keeps_the_admitted_client_only_if_asked(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    waiting = await _knocker(live_server, session["invite_url"])
    await _lobby_becomes(t, 1)
    lurker = await _knocker(live_server, session["invite_url"], join=False)

    renewed = await therapist.post(f"/api/sessions/{session['id']}/invite")
    assert renewed.status_code == 200 and renewed.json()["closed_connections"] == 2
    message = await _refused(waiting, "invite_revoked", 4410)
    assert "new one" in message
    await _refused(lurker, "invite_revoked", 4410)
    await _lobby_becomes(t, 0)
    await _alive(c)  # kept: the therapist admitted them (the default)

    # The new link works; a renewal that does not keep participants shows everyone out.
    newcomer = await _knocker(live_server, renewed.json()["invite_url"])
    await _lobby_becomes(t, 1)
    again = await therapist.post(
        f"/api/sessions/{session['id']}/invite", json={"keep_participants": False}
    )
    assert again.json()["closed_connections"] == 2
    await _refused(c, "invite_revoked", 4410)
    await _refused(newcomer, "invite_revoked", 4410)
    await t.expect("peer_state", timeout=WITHIN_S, role="client", present=False)
    await _lobby_becomes(t, 0)
    await eventually(
        lambda: _has(admin, session["id"], "client_link_revoked"), message="no revocation audit"
    )
    await t.close()


async def test_a_kept_client_reconnects_on_the_old_link_and_nobody_else_does(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    """After a renewal that kept participants, the admitted client's page still holds the old
    link: when their socket drops, their own browser must get back in on it, while a new
    browser on that link, and anyone after a renewal without keep, stays refused."""
    session, t, c, cookie = await open_room(live_server.ws_url, therapist)
    old_url = session["invite_url"]
    renewed = await therapist.post(f"/api/sessions/{session['id']}/invite")
    assert renewed.status_code == 200
    await _alive(c)
    await c.close()  # the kept client's socket drops; their page retries on the old link

    back = await _knocker(live_server, old_url, cookie)
    await back.expect("admitted", timeout=5)
    await _alive(back)
    await _refused(await _open(live_server, old_url), "unknown", 4404)

    # Without keep, the old links are forgotten: the client is shown out and stays out.
    again = await therapist.post(
        f"/api/sessions/{session['id']}/invite", json={"keep_participants": False}
    )
    assert again.status_code == 200
    await _refused(back, "invite_revoked", 4410)
    for url in (old_url, renewed.json()["invite_url"]):
        await _refused(await _open(live_server, url, cookie), "unknown", 4404)
    await t.close()


async def test_a_link_that_expires_while_waiting_is_refused_and_cannot_be_admitted(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    # 0.0006 h = 2.16 s
    response = await therapist.post("/api/sessions", json={"invite_ttl_hours": 0.0006})
    session = response.json()
    t = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await t.send({"type": "join"})
    await t.expect("joined")
    c = await _knocker(live_server, session["invite_url"])
    participant_id = await next_waiting(t)
    await _refused(c, "expired", 4410, within=2.2 + WITHIN_S)
    await _lobby_becomes(t, 0)
    await t.send({"type": "admit", "participant_id": participant_id})
    assert (await t.error())["code"] == "unknown_participant"
    await t.close()


# ----------------------------------------------------------------- 2. remove
async def test_therapist_removes_the_admitted_client_who_cannot_come_back(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, cookie = await open_room(live_server.ws_url, therapist)
    state = await t.expect("peer_state", role="client", present=True)
    participant_id = state["participant_id"]
    assert isinstance(participant_id, int)

    await c.send({"type": "remove", "participant_id": participant_id})
    assert (await c.error())["code"] == "forbidden"
    await t.send({"type": "remove", "participant_id": participant_id + 1000})
    assert (await t.error())["code"] == "unknown_participant"

    await t.send({"type": "remove", "participant_id": participant_id})
    removed = await c.expect("removed", timeout=WITHIN_S)
    assert "removed" in removed["message"]
    await asyncio.wait_for(c.ws.wait_closed(), WITHIN_S)
    assert c.ws.close_code == 4003
    await t.expect("peer_state", timeout=WITHIN_S, role="client", present=False)
    await eventually(
        lambda: _has(admin, session["id"], "client_removed"), message="no client_removed audit"
    )

    back = await Participant.connect(
        f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
    )
    await _refused(back, "denied", 4003)
    await t.close()


# ----------------------------------------------------------------- 3. denial, knock limits
async def test_a_denied_browser_stays_denied_in_every_tab_and_on_every_retry(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    cookie = new_client_cookie()
    knocking = await _knocker(live_server, session["invite_url"], cookie)
    other_tab = await _knocker(live_server, session["invite_url"], cookie, join=False)
    participant_id = await next_waiting(t)
    await t.send({"type": "deny", "participant_id": participant_id})
    await knocking.expect("denied", timeout=WITHIN_S)
    await _refused(other_tab, "denied", 4003)
    for _ in range(5):
        again = await Participant.connect(
            f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
        )
        await _refused(again, "denied", 4003)
    await _lobby_becomes(t, 0)
    await _alive(c)
    await t.close()


async def test_knocking_is_rate_limited_per_browser_and_per_address(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    cookie = new_client_cookie()
    knocker = await _knocker(live_server, session["invite_url"], cookie, join=False)
    for _ in range(5):
        await knocker.send({"type": "join"})
        await knocker.expect("waiting")
        await knocker.send({"type": "leave"})
        await knocker.expect("left")
    await knocker.send({"type": "join"})
    message = await _refused(knocker, "rate_limited", 4429)
    assert "this browser" in message

    # Many browsers from one address: each knocks once, the address's budget (a burst of 30,
    # then 30 a minute) runs out. How many get in depends on how fast this machine knocks
    # (a loaded CI machine took over 2 s for 30 knocks, and the refill let the 31st in), so
    # the count is checked against the budget for the time the knocks took.
    refused = None
    admitted = 0
    started = asyncio.get_running_loop().time()
    for _ in range(200):
        k = await _knocker(live_server, session["invite_url"], local_host="127.0.0.9")
        reply = await _waiting_or_error(k)
        if reply["type"] == "error":
            refused = reply
            break
        admitted += 1
        await k.send({"type": "leave"})
        await k.expect("left")
        await k.close()
    elapsed = asyncio.get_running_loop().time() - started
    assert refused is not None and refused["code"] == "rate_limited", admitted
    assert "your network" in refused["message"]
    assert 30 <= admitted <= 30 + elapsed / 2 + 1, (admitted, elapsed)
    await _alive(c)
    await t.close()


# ----------------------------------------------------------------- 4. lobby caps
async def test_the_waiting_room_is_capped_per_address_and_per_session(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    same = [await _knocker(live_server, session["invite_url"]) for _ in range(3)]
    for k in same:
        await k.expect("waiting")
    extra = await _knocker(live_server, session["invite_url"])
    assert "network" in await _refused(extra, "lobby_full", 4429)
    await _lobby_becomes(t, 3)

    others = [
        await _knocker(live_server, session["invite_url"], local_host=f"127.0.0.{n}")
        for n in (2, 3)
    ]
    for k in others:
        await k.expect("waiting")
    sixth = await _knocker(live_server, session["invite_url"], local_host="127.0.0.4")
    assert "5 people" in await _refused(sixth, "lobby_full", 4429)
    await _lobby_becomes(t, 5)
    await _alive(c)
    await t.close()


# ----------------------------------------------------------------- 5. sign-out
async def test_logout_closes_the_therapists_socket(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    _, t, c, _ = await open_room(live_server.ws_url, therapist)
    response = await therapist.post("/api/logout")
    assert response.status_code == 204
    await _refused(t, "unauthorized", 4401)
    await c.expect("peer_state", timeout=WITHIN_S, role="therapist", present=False)


async def test_sign_out_everywhere_ends_every_sign_in_and_socket(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    async with http_client(live_server, timeout=10) as laptop:
        signed = await laptop.post(
            "/api/login", json={"email": "dr.t@example.org", "password": PASSWORD}
        )
        assert signed.status_code == 200
        assert (await laptop.post("/api/logout-all")).status_code == 204
        await _refused(t, "unauthorized", 4401)
        assert (await laptop.get("/api/me")).status_code == 401
    assert (await therapist.get("/api/me")).status_code == 401
    reopened = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await _refused(reopened, "unauthorized", 4401)
    await c.close()


# ----------------------------------------------------------------- 6. end
async def test_end_writes_the_database_first_and_a_failed_write_leaves_the_room_running(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    path = live_server.settings.database_url.split("///", 1)[1]
    lock = sqlite3.connect(path, timeout=1, isolation_level=None, check_same_thread=False)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # a real failure: the write times out (busy 5 s)
        await t.send({"type": "end"})
        error = await t.expect("error", timeout=15, ref="end")
        assert error["code"] == "internal" and "still running" in error["message"]
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert not c.seen("ended")
    await _alive(c)
    got = await therapist.get(f"/api/sessions/{session['id']}")
    assert got.json()["status"] != "ended"

    await t.send({"type": "end"})
    await c.expect("ended", timeout=5)
    await t.expect("ended", timeout=5)
    got = await therapist.get(f"/api/sessions/{session['id']}")
    assert got.json()["status"] == "ended"
