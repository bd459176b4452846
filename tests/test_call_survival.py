"""What is left of issue 16 (calls that survive) on the server's side: a held seat is not a
presence, and a page may ask for fresh ICE servers without rejoining.

Real sockets to a live server, no media worker (nothing here sends an offer).
"""

from __future__ import annotations

import dataclasses
import json
import re

import httpx

from signaling.rooms import RoomRegistry
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
    open_room,
)
from tests.support import eventually
from tests.test_turn import (
    SECRET,
    TTL_S,
    WITH_TURN,
    assert_fresh_turn,
    credentials_in,
    drain,
)


def _gauge(text: str, name: str, role: str) -> float | None:
    match = re.search(rf'^{name}{{role="{role}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


@NO_MEDIA_WORKER
async def test_a_held_seat_is_reconnecting_not_present_in_the_admin_view_and_metrics(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    rooms: RoomRegistry = live_server.app.state.rooms  # type: ignore[attr-defined]
    rooms.limits = dataclasses.replace(rooms.limits, reconnect_grace_s=60)
    session, t, c, _ = await open_room(live_server.ws_url, therapist)

    async def row() -> dict[str, int]:
        calls = (await admin.get("/api/admin/calls")).json()["calls"]
        call = next(x for x in calls if x["session_id"] == session["id"])
        return {"participants": call["participants"], "reconnecting": call.get("reconnecting")}

    async def gauges_are(present: float, reconnecting: float) -> bool:
        """/metrics' client gauges, which the quality hub refreshes on its own clock."""
        text = (await admin.get("/metrics")).text
        return (
            _gauge(text, "rapport_participants", "client"),
            _gauge(text, "rapport_participants_reconnecting", "client"),
        ) == (present, reconnecting)

    assert await row() == {"participants": 2, "reconnecting": 0}
    await eventually(lambda: gauges_are(1, 0), timeout=10, message="client gauges not (1, 0)")

    await c.ws.close()  # no `leave`: the network went away; the seat is held
    await t.expect("peer_state", role="client", reconnecting=True)
    assert await row() == {"participants": 1, "reconnecting": 1}
    await eventually(lambda: gauges_are(0, 1), timeout=10, message="client gauges not (0, 1)")
    await t.close()


@WITH_TURN
async def test_ice_refresh_gives_fresh_turn_credentials_in_the_call_and_none_before(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = (await therapist.post("/api/sessions", json={"client_label": "C"})).json()
    ws = live_server.ws_url
    t = await Participant.connect(f"{ws}/ws/sessions/{session['id']}", login_cookie(therapist))
    # Not joined yet: nothing to refresh.
    await t.send({"type": "ice_refresh"})
    refused = await t.error()
    assert (refused["code"], refused["ref"]) == ("not_joined", "ice_refresh")
    await t.send({"type": "join"})
    joined = await t.expect("joined")
    assert joined["ice_ttl_s"] == TTL_S

    c = await Participant.connect(
        f"{ws}/ws/join/{invite_token(session['invite_url'])}", new_client_cookie()
    )
    await c.send({"type": "join", "display_name": "Kim"})
    await c.expect("waiting")
    await c.send({"type": "ice_refresh"})  # a waiting socket gets no relay
    refused = await c.error()
    assert (refused["code"], refused["ref"]) == ("not_admitted", "ice_refresh")
    assert credentials_in(await drain(c)) == []

    await t.send({"type": "admit", "participant_id": await next_waiting(t)})
    admitted = await c.expect("admitted")
    assert admitted["ice_ttl_s"] == TTL_S
    pseudonym = assert_fresh_turn(admitted).split(":")[1]
    for p in (c, t):
        await p.send({"type": "ice_refresh"})
        fresh = await p.expect("ice_servers")
        assert fresh["ice_ttl_s"] == TTL_S
        assert_fresh_turn(fresh)  # issued now, valid for a whole lifetime
    assert assert_fresh_turn(fresh).split(":")[1] != pseudonym  # the therapist's own
    assert SECRET not in json.dumps([*await drain(t), *await drain(c)])
    for p in (t, c):
        await p.close()
