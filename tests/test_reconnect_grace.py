"""A dropped socket is not a departure: the seat is held for a grace period.

Real sockets to a live server (no media worker: nothing here sends an offer). A socket that
closes without `leave` is what a network blip, a reload or a server restart looks like to the
room; the other person must see "reconnecting", the same identity must get its seat back with
no admission step, and only a member who never comes back is released and audited, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx

from media import MediaConfig, Role
from server.settings import Settings
from signaling.room import Member, Room
from signaling.rooms import RoomRegistry
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.signaling_helpers import (
    MemoryChannel,
    Participant,
    invite_token,
    login_cookie,
    open_room,
)
from tests.support import eventually


def _grace(server: LiveServer, seconds: float) -> None:
    """Rooms created from now on hold a dropped seat for ``seconds``."""
    rooms: RoomRegistry = server.app.state.rooms  # type: ignore[attr-defined]
    rooms.limits = dataclasses.replace(rooms.limits, reconnect_grace_s=seconds)


async def _audit(admin: httpx.AsyncClient, session_id: str) -> list[str]:
    events = (
        await admin.get("/api/admin/audit", params={"session_id": session_id, "limit": 500})
    ).json()
    return [e["action"] for e in reversed(events["events"])]


def _peer_states(p: Participant, role: str) -> list[dict[str, Any]]:
    return [m for m in p.seen("peer_state") if m["role"] == role]


def test_the_grace_period_is_a_setting(monkeypatch: Any) -> None:
    assert Settings().reconnect_grace_s == 60.0
    monkeypatch.setenv("RAPPORT_RECONNECT_GRACE_S", "12.5")
    assert Settings().reconnect_grace_s == 12.5


@NO_MEDIA_WORKER
async def test_a_dropped_client_is_reconnecting_and_takes_its_seat_back_without_admission(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, cookie = await open_room(live_server.ws_url, therapist)
    await t.expect("peer_state", role="client", present=True)
    t.inbox.clear()

    await c.ws.close()  # no `leave`: the network went away
    state = await t.expect("peer_state", role="client", reconnecting=True)
    assert state["present"] is True
    assert not [s for s in _peer_states(t, "client") if s["present"] is False]
    assert not t.seen("left")

    # The same browser identity comes back: straight into the call, nobody admits it.
    c2 = await Participant.connect(
        f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
    )
    await c2.send({"type": "join", "display_name": "K"})
    assert (await c2.expect("admitted"))["rejoined"] is True
    await t.expect("peer_state", role="client", present=True, reconnecting=False)
    assert not [lobby for lobby in t.seen("lobby") if lobby["waiting"]]
    assert not [s for s in _peer_states(t, "client") if s["present"] is False]

    actions = await _audit(admin, session["id"])
    assert "client_reconnected" in actions, actions
    assert "client_disconnected" not in actions, actions
    await c2.close()
    await t.close()


@NO_MEDIA_WORKER
async def test_after_the_grace_the_seat_is_released_and_audited_once(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    _grace(live_server, 1.0)
    session, t, c, _cookie = await open_room(live_server.ws_url, therapist)
    await t.expect("peer_state", role="client", present=True)
    t.inbox.clear()

    await c.ws.close()
    await t.expect("peer_state", role="client", reconnecting=True, present=True)
    gone = await t.expect("peer_state", role="client", present=False, timeout=5)
    assert gone["reconnecting"] is False

    async def audited() -> list[str] | None:
        actions = await _audit(admin, session["id"])
        return actions if "client_disconnected" in actions else None

    actions = await eventually(audited, timeout=5, interval=0.1)
    assert actions.count("client_disconnected") == 1, actions
    assert "client_reconnected" not in actions
    # The room goes on for the therapist: pings answered, nothing else released.
    await t.send({"type": "ping", "t": 7})
    assert (await t.expect("pong"))["t"] == 7
    assert "therapist_disconnected" not in actions
    await t.close()


@NO_MEDIA_WORKER
async def test_a_reconnecting_therapist_takes_its_seat_back_even_from_a_stale_socket(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, _cookie = await open_room(live_server.ws_url, therapist)
    url = f"{live_server.ws_url}/ws/sessions/{session['id']}"

    # The old socket is still open server-side (its death not yet noticed): the automatic
    # reconnect takes the seat over instead of meeting "already open in another tab".
    t2 = await Participant.connect(url, login_cookie(therapist))
    await t2.send({"type": "join", "takeover": True})
    await t2.expect("joined")
    await t.expect("replaced")
    c.inbox.clear()

    # Now it drops for real: the client sees the therapist reconnecting, not gone.
    await t2.ws.close()
    state = await c.expect("peer_state", role="therapist", reconnecting=True)
    assert state["present"] is True
    t3 = await Participant.connect(url, login_cookie(therapist))
    await t3.send({"type": "join", "takeover": True})
    await t3.expect("joined")
    await c.expect("peer_state", role="therapist", present=True, reconnecting=False)
    assert not [s for s in _peer_states(c, "therapist") if s["present"] is False]

    actions = await _audit(admin, session["id"])
    assert "therapist_reconnected" in actions, actions
    assert "therapist_disconnected" not in actions, actions
    await t.close()
    await c.close()
    await t3.close()


class _Hooks:
    async def audit(self, session_id: str, action: str, actor: str, detail: str = "") -> None:
        pass

    async def participant_decided(self, participant_id: int, admitted: bool) -> None:
        pass

    async def session_live(self, session_id: str) -> None:
        pass

    async def session_ended(self, session_id: str) -> None:
        pass

    async def load_agenda(self, session_id: str) -> dict[str, Any] | None:
        return None

    async def save_agenda(self, session_id: str, agenda: dict[str, Any]) -> None:
        pass


async def test_shutdown_closes_sockets_with_service_restart_so_pages_retry() -> None:
    room = Room("s1", _Hooks(), MediaConfig(media_addresses=("127.0.0.1",)))
    channel = MemoryChannel()
    task = asyncio.ensure_future(
        room.serve(Member(role=Role.THERAPIST, channel=channel, actor="user:1"))
    )
    channel.inbox.put_nowait(json.dumps({"type": "join"}))
    await eventually(lambda: room.therapist is not None, timeout=2)
    await room.close()
    await asyncio.wait_for(task, 2)
    assert channel.close_code == 1012
