"""Reads of a live room's in-memory state from any node of a cluster (issue 15): the
therapist's metrics, timeline and summary, and the admin's live calls and call quality, asked
of the node hosting the room by whichever node the HTTP request landed on.

Two `rapport serve` nodes share a real PostgreSQL and Redis; the room is pinned on node A (its
lease written in Redis before the first socket), the participants talk with real aiortc media,
and every read sent to node B is compared with the same read on A just before and just after:
live figures only grow, so B's must lie between A's two (what is persisted lags behind them).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.server_process import ADMIN_EMAIL, ADMIN_PASSWORD, RapportServer
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
)
from tests.support import eventually
from tests.test_cluster_nodes import (
    _closed_with,
    _signals,
    _signed_in,
    _talking_client,
    cluster,
)


async def _admin(node: RapportServer) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=node.url, timeout=15)
    response = await http.post(
        "/api/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return http


async def _get(http: httpx.AsyncClient, path: str) -> Any:
    response = await http.get(path)
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()


async def test_live_reads_sent_to_another_node_answer_the_hosts_live_figures(
    tmp_path: Path, postgres: Any, redis_url: str
) -> None:
    nodes = [("node-a", True), ("node-b", True)]
    # A keeps its room through the few seconds it is stopped below (its lease outlasts them).
    env = {"node-a": {"RAPPORT_CLUSTER_LEASE_S": "30"}}
    with cluster(tmp_path, postgres.new_database(), redis_url, nodes, env) as (a, b):
        on_a, on_b = await _signed_in(a), await _signed_in(b)
        admin_a, admin_b = await _admin(a), await _admin(b)
        directory = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            session = (await on_a.post("/api/sessions", json={"client_label": "C"})).json()
            sid = session["id"]
            # Pinned on A: placement finds a live host's lease and keeps it (A renews it).
            directory.set(f"rapport:room:{sid}", "node-a", px=30_000)
            t = await Participant.connect(f"{a.ws_url}/ws/sessions/{sid}", login_cookie(on_a))
            await t.send({"type": "join"})
            await t.expect("joined")
            c = await Participant.connect(
                f"{a.ws_url}/ws/join/{invite_token(session['invite_url'])}", new_client_cookie()
            )
            await c.send({"type": "join"})
            waiting = await next_waiting(t)
            # A client in the waiting room on A: erasing their data from B is refused too.
            erase = await on_b.post("/api/clients/delete", json={"label": "C"})
            assert erase.status_code == 409, erase.text
            await t.send({"type": "admit", "participant_id": waiting})
            await c.expect("admitted")
            await t.start_media()
            await c.start_media(await _talking_client())
            await _signals(t, lambda s: s["client_talk_s"] >= 2.0)
            assert directory.get(f"rapport:room:{sid}") == "node-a"

            # Several rounds a second or more apart: persisted figures (written every few
            # seconds) fall behind the live ones in most of them.
            for _ in range(4):
                before = await _get(on_a, f"/api/sessions/{sid}/metrics")
                remote = await _get(on_b, f"/api/sessions/{sid}/metrics")
                after = await _get(on_a, f"/api/sessions/{sid}/metrics")
                for key in ("duration_s", "client_talk_s"):
                    assert before[key] <= remote[key] <= after[key], (key, before, remote, after)

                before = (await _get(on_a, f"/api/sessions/{sid}/timeline"))["seconds"]
                remote = (await _get(on_b, f"/api/sessions/{sid}/timeline"))["seconds"]
                after = (await _get(on_a, f"/api/sessions/{sid}/timeline"))["seconds"]
                assert len(before) <= len(remote) <= len(after), (before, remote, after)
                assert remote[: len(before) - 1] == before[:-1]

                before = (await _get(on_a, f"/api/sessions/{sid}/summary"))["metrics"]
                remote = (await _get(on_b, f"/api/sessions/{sid}/summary"))["metrics"]
                after = (await _get(on_a, f"/api/sessions/{sid}/summary"))["metrics"]
                assert before["duration_s"] <= remote["duration_s"] <= after["duration_s"]

                # The admin on B: the call in the live list, and its quality detail as A has it.
                calls = (await _get(admin_b, "/api/admin/calls"))["calls"]
                assert [(x["session_id"], x["participants"]) for x in calls] == [(sid, 2)]
                before = (await _get(admin_a, f"/api/admin/calls/{sid}"))["participants"]
                remote = (await _get(admin_b, f"/api/admin/calls/{sid}"))["participants"]
                after = (await _get(admin_a, f"/api/admin/calls/{sid}"))["participants"]
                assert set(remote) == set(before) == {"therapist", "client"}
                for role in remote:
                    history = [p["t"] for p in remote[role]["history"]]
                    first = [p["t"] for p in before[role]["history"]]
                    last = [p["t"] for p in after[role]["history"]]
                    assert len(first) <= len(history) <= len(last), role
                    assert history[: len(first)] == first and last[: len(history)] == history
                await _signals(t, lambda s: True)  # a second or more later
            # A call that is not live anywhere is still a precise 404 on either node.
            missing = await admin_b.get("/api/admin/calls/no-such-call")
            assert missing.status_code == 404

            # A host that does not answer (stopped; for B first silent, then dead): B answers
            # within its ask timeout with the persisted figures, the same on every read.
            live = await _get(on_a, f"/api/sessions/{sid}/metrics")
            os.kill(a.process.pid, signal.SIGSTOP)
            try:
                first = await _get(on_b, f"/api/sessions/{sid}/metrics")
                again = await _get(on_b, f"/api/sessions/{sid}/metrics")
                assert first == again
                assert live["duration_s"] - 6.0 <= first["duration_s"] <= live["duration_s"]
                absent = await admin_b.get(f"/api/admin/calls/{sid}")
                assert absent.status_code == 404
            finally:
                os.kill(a.process.pid, signal.SIGCONT)

            # Revocations sent to B reach the sockets in A's room: a replaced link closes the
            # client's socket (came in on the old link) and a sign-out the therapist's.
            async def a_is_back() -> bool:
                view = await _get(admin_b, "/api/admin/cluster")
                return "node-a" in {n["info"]["node_id"] for n in view["nodes"]}

            await eventually(a_is_back, timeout=30, interval=0.2, message="node-a back")
            renewed = await on_b.post(
                f"/api/sessions/{sid}/invite", json={"keep_participants": False}
            )
            assert renewed.status_code == 200, renewed.text
            assert renewed.json()["closed_connections"] == 1
            assert (await c.error(timeout=20))["code"] == "invite_revoked"
            async with httpx.AsyncClient(base_url=b.url, cookies=on_a.cookies) as same_login:
                assert (await same_login.post("/api/logout")).status_code == 204
            assert (await t.error(timeout=20))["code"] == "unauthorized"
            assert await _closed_with(t) == 4401 and await _closed_with(c) == 4410
        finally:
            for http in (on_a, on_b, admin_a, admin_b):
                await http.aclose()
            directory.close()
