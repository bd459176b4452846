"""What is left of issue 16 (calls that survive) on the server's side: a held seat is not a
presence, and a page may ask for fresh ICE servers without rejoining.

Real sockets to a live server, no media worker (nothing here sends an offer).
"""

from __future__ import annotations

import dataclasses
import re

import httpx

from signaling.rooms import RoomRegistry
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.signaling_helpers import open_room
from tests.support import eventually


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
