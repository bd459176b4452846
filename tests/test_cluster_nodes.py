"""Several `rapport serve` nodes on 127.0.0.1 sharing a real PostgreSQL and a real Redis: a
socket landing on any node reaches the room's host, and a killed host's room moves on.

The participants are protocol-level (tests/signaling_helpers.py) with real aiortc media; the
reconnection a browser page does by itself is done here by hand, as soon as the node the socket
landed on closes it with 1012.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
import websockets

from server.db import Database
from server.models import TherapySession
from tests.media_helpers import FakeBrowser, PcmTrack, speech
from tests.server_process import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    THERAPIST_EMAIL,
    THERAPIST_PASSWORD,
    RapportServer,
    rapport_server_process,
)
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
)
from tests.support import eventually

# Fast failure detection for the test (defaults: 1 s heartbeat, 5 s TTL and lease).
FAST = {
    "RAPPORT_CLUSTER_HEARTBEAT_S": "0.5",
    "RAPPORT_CLUSTER_NODE_TTL_S": "2.5",
    "RAPPORT_CLUSTER_LEASE_S": "2.5",
    "RAPPORT_MEDIA_WORKERS": "1",
}


@contextlib.contextmanager
def cluster(
    tmp: Path,
    database_url: str,
    redis_url: str,
    nodes: list[tuple[str, bool]],
    node_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[list[RapportServer]]:
    """Start the nodes one after the other (the first creates the schema and the accounts);
    ``node_env`` adds settings for some nodes, by node id."""
    with contextlib.ExitStack() as stack:
        servers = []
        for i, (node_id, hosts) in enumerate(nodes):
            directory = tmp / node_id
            directory.mkdir()
            env = {
                **FAST,
                "RAPPORT_DATABASE_URL": database_url,
                "RAPPORT_REDIS_URL": redis_url,
                "RAPPORT_NODE_ID": node_id,
                "RAPPORT_CLUSTER_HOSTS_ROOMS": "true" if hosts else "false",
                **(node_env or {}).get(node_id, {}),
            }
            servers.append(
                stack.enter_context(rapport_server_process(directory, env, accounts=i == 0))
            )
        yield servers


async def _signed_in(node: RapportServer) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=node.url, timeout=15)
    response = await http.post(
        "/api/login", json={"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return http


async def _talking_client() -> FakeBrowser:
    return FakeBrowser(audio=PcmTrack(speech(30.0, voice="en+f3"), loop=True))


async def _signals(therapist: Participant, predicate: Any, timeout: float = 40) -> dict[str, Any]:
    """The first live snapshot the therapist receives that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        message = await therapist.expect("signals", timeout=max(0.1, deadline - time.monotonic()))
        snapshot: dict[str, Any] = message["snapshot"]
        if predicate(snapshot):
            return snapshot


async def _agenda_with(p: Participant, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        message = await p.expect("agenda", timeout=max(0.1, deadline - time.monotonic()))
        if any(item["text"] == text for item in message["items"]):
            return


def _metric(node: RapportServer, name: str) -> float:
    text = httpx.get(f"{node.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics of {node.url}")


async def test_sockets_on_a_non_hosting_node_reach_the_room(
    tmp_path: Path, postgres: Any, redis_url: str
) -> None:
    with cluster(
        tmp_path, postgres.new_database(), redis_url, [("edge", False), ("host", True)]
    ) as (
        edge,
        host,
    ):
        http = await _signed_in(edge)
        try:
            session = (await http.post("/api/sessions", json={"client_label": "C"})).json()
            # The therapist lands on the node that hosts no rooms, the client on the host.
            t = await Participant.connect(
                f"{edge.ws_url}/ws/sessions/{session['id']}", login_cookie(http)
            )
            await t.send({"type": "join"})
            await t.expect("joined")
            c = await Participant.connect(
                f"{host.ws_url}/ws/join/{invite_token(session['invite_url'])}",
                new_client_cookie(),
            )
            await c.send({"type": "join"})
            await t.send({"type": "admit", "participant_id": await next_waiting(t)})
            await c.expect("admitted")
            assert redis.Redis.from_url(redis_url).get(f"rapport:room:{session['id']}") == b"host"
            assert _metric(edge, 'rapport_cluster_relayed_sockets{node="edge"}') == 1
            assert _metric(host, 'rapport_node_info{node="host"}') == 1
            # Media goes straight to the host (the answer carries its candidates); the
            # therapist's offer and answer travel through the relay.
            await t.start_media()
            await c.start_media(await _talking_client())
            await _signals(t, lambda s: s["client_talk_s"] >= 2.0)
            # The agenda both ways: a client's proposal reaches the relayed therapist, and the
            # therapist's item (sent through the relay) reaches the client.
            await c.send({"type": "agenda_add", "text": "Sleep"})
            await _agenda_with(t, "Sleep")
            await t.send({"type": "agenda_add", "text": "Work"})
            await _agenda_with(c, "Work")
            # The admin, signed in on either node, sees both nodes and the call on the host.
            async with httpx.AsyncClient(base_url=edge.url, timeout=15) as admin:
                response = await admin.post(
                    "/api/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
                )
                assert response.status_code == 200, response.text
                view = (await admin.get("/api/admin/cluster")).json()
            assert view["mode"] == "cluster" and view["this_node"] == "edge"
            by_node = {n["info"]["node_id"]: n for n in view["nodes"]}
            assert set(by_node) == {"edge", "host"}
            assert all(n["healthy"] for n in view["nodes"])
            assert not by_node["edge"]["info"]["hosts_rooms"]
            assert [call["session_id"] for call in by_node["host"]["info"]["live_calls"]] == [
                session["id"]
            ]
            assert by_node["host"]["info"]["calls"] == 1 and view["live_calls"] == 1
            await t.close()
            await c.close()
        finally:
            await http.aclose()


async def _rejoin(url: str, cookie: str, *, client: bool) -> Participant:
    p = await Participant.connect(url, cookie)
    await p.send({"type": "join"})
    await p.expect("admitted" if client else "joined", timeout=20)
    return p


async def test_a_killed_host_moves_the_room_and_the_session_continues(
    tmp_path: Path, postgres: Any, redis_url: str
) -> None:
    nodes = [("edge", False), ("node-b", True), ("node-c", True)]
    database_url = postgres.new_database()
    with cluster(tmp_path, database_url, redis_url, nodes) as servers:
        edge, by_id = servers[0], {n: s for (n, _), s in zip(nodes, servers, strict=True)}
        http = await _signed_in(edge)
        directory = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            session = (await http.post("/api/sessions", json={"client_label": "C"})).json()
            t_url = f"{edge.ws_url}/ws/sessions/{session['id']}"
            c_url = f"{edge.ws_url}/ws/join/{invite_token(session['invite_url'])}"
            t = await Participant.connect(t_url, login_cookie(http))
            await t.send({"type": "join"})
            await t.expect("joined")
            cookie = new_client_cookie()
            c = await Participant.connect(c_url, cookie)
            await c.send({"type": "join"})
            await t.send({"type": "admit", "participant_id": await next_waiting(t)})
            await c.expect("admitted")
            await t.start_media()
            await c.start_media(await _talking_client())
            first_host = directory.get(f"rapport:room:{session['id']}")
            assert first_host in ("node-b", "node-c")

            # Read from the database itself: the REST read now answers the host's live figures.
            database = Database(database_url)

            async def persisted_talk() -> dict[str, Any] | None:
                async with database.session() as db:
                    row = await db.get(TherapySession, session["id"])
                    stored = (row.metrics if row is not None else None) or {}
                return stored if stored.get("client_talk_s", 0) >= 3.0 else None

            try:
                stored = await eventually(
                    persisted_talk, timeout=60, interval=0.5, message="persisted talk"
                )
            finally:
                await database.dispose()
            # A current snapshot (at least what is persisted), not one queued since the start.
            before = await _signals(t, lambda s: s["client_talk_s"] >= stored["client_talk_s"])
            read_at = time.monotonic()
            by_id[first_host].kill()
            # The edge notices the dead host and closes both sockets with 1012 ("reconnect").
            for p in (t, c):
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await p.ws.recv()
                assert p.ws.close_code == 1012, p.ws.close_code
            t = await _rejoin(t_url, login_cookie(http), client=False)
            c = await _rejoin(c_url, cookie, client=True)
            await t.start_media()
            await c.start_media(await _talking_client())
            new_host = directory.get(f"rapport:room:{session['id']}")
            assert new_host in ("node-b", "node-c") and new_host != first_host
            # One continuous record: the new host's first snapshot goes on from what was
            # persisted (at most the 5 s persistence interval lost), not from zero, and not
            # doubled (no more talk than the wall-clock time since ``before`` was read).
            first = await _signals(t, lambda s: True)
            elapsed = time.monotonic() - read_at
            assert first["duration_s"] >= before["duration_s"] - 5.0, (before, first)
            assert first["client_talk_s"] >= before["client_talk_s"] - 5.0, (before, first)
            assert first["client_talk_s"] <= before["client_talk_s"] + elapsed + 1.0
            after = await _signals(t, lambda s: s["client_talk_s"] > before["client_talk_s"] + 1)
            assert after["duration_s"] > before["duration_s"]
            await t.send({"type": "end"})
            await c.expect("ended", timeout=20)
            await t.close()
            await c.close()
        finally:
            await http.aclose()
            directory.close()


async def _closed_with(p: Participant) -> int | None:
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await p.ws.recv()
    return p.ws.close_code


async def test_a_drained_node_gives_its_room_up_before_closing_the_sockets(
    tmp_path: Path, postgres: Any, redis_url: str
) -> None:
    nodes = [("node-a", True), ("node-b", True)]
    # A's drain ends 2 s after SIGTERM with the call still running.
    env = {"node-a": {"RAPPORT_DRAIN_TIMEOUT_S": "2"}}
    with cluster(tmp_path, postgres.new_database(), redis_url, nodes, env) as (a, b):
        http = await _signed_in(b)
        directory = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            session = (await http.post("/api/sessions", json={"client_label": "C"})).json()
            sid = session["id"]
            directory.set(f"rapport:room:{sid}", "node-a", px=30_000)  # hosted on A
            # The therapist's socket landed on B (relayed to A), the client's on A; after the
            # drain both pages reconnect through B, as a load balancer skipping A would send them.
            t_url = f"{b.ws_url}/ws/sessions/{sid}"
            c_url = f"{b.ws_url}/ws/join/{invite_token(session['invite_url'])}"
            t = await Participant.connect(t_url, login_cookie(http))
            await t.send({"type": "join"})
            await t.expect("joined")
            cookie = new_client_cookie()
            c = await Participant.connect(
                f"{a.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
            )
            await c.send({"type": "join"})
            await t.send({"type": "admit", "participant_id": await next_waiting(t)})
            await c.expect("admitted")
            await t.start_media()
            await c.start_media(await _talking_client())
            before = await _signals(t, lambda s: s["client_talk_s"] >= 3.0)
            read_at = time.monotonic()
            a.process.send_signal(signal.SIGTERM)
            for p in (t, c):
                assert await _closed_with(p) == 1012
            # At once, not after the lease (30 s here): the room is placed on B.
            closed_at = time.monotonic()
            t = await _rejoin(t_url, login_cookie(http), client=False)
            c = await _rejoin(c_url, cookie, client=True)
            assert directory.get(f"rapport:room:{sid}") == "node-b"
            assert time.monotonic() - closed_at < 15.0
            await t.start_media()
            await c.start_media(await _talking_client())
            # One record, continued: B resumes the signals A flushed before closing (nothing
            # lost beyond a tick, nothing counted twice).
            first = await _signals(t, lambda s: True)
            elapsed = time.monotonic() - read_at
            assert first["client_talk_s"] >= before["client_talk_s"] - 1.0, (before, first)
            assert first["duration_s"] >= before["duration_s"] - 1.0, (before, first)
            assert first["client_talk_s"] <= before["client_talk_s"] + elapsed + 1.0
            listed = (await http.get("/api/sessions")).json()["sessions"]
            assert [(s["id"], s["status"]) for s in listed] == [(sid, "live")]
            # The room stays on B: nobody is sent away again.
            await _signals(t, lambda s: s["client_talk_s"] > before["client_talk_s"] + 1)
            assert directory.get(f"rapport:room:{sid}") == "node-b"
            assert t.ws.close_code is None and c.ws.close_code is None
            await t.send({"type": "end"})
            await c.expect("ended", timeout=20)
            await t.close()
            await c.close()
        finally:
            await http.aclose()
            directory.close()
