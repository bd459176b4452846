"""Two nodes, one session, real Chromium: the therapist's page on a node that hosts no rooms,
the client's on the node hosting the room. Video both ways, the live panel and the agenda both
ways all work through the relay (PostgreSQL and Redis throwaway instances on 127.0.0.1)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.server_process import THERAPIST_EMAIL, THERAPIST_PASSWORD
from tests.test_cluster_nodes import cluster

from .conftest import Browsers
from .helpers import VIDEO_PLAYING_JS, new_page, wait_for, wait_video

pytestmark = pytest.mark.browser

REMOTE = '[data-testid="remote-video"]'


def _relayed(node_url: str, node_id: str) -> float:
    text = httpx.get(f"{node_url}/metrics", timeout=5).text
    match = re.search(rf'^rapport_cluster_relayed_sockets{{node="{node_id}"}} (\S+)$', text, re.M)
    assert match, text[-2000:]
    return float(match.group(1))


def test_therapist_and_client_on_different_nodes_hold_a_session(
    tmp_path: Path, postgres: Any, redis_url: str, browsers: Browsers, console_log: list[str]
) -> None:
    nodes = [("edge", False), ("host", True)]
    with cluster(tmp_path, postgres.new_database(), redis_url, nodes) as (edge, host):
        t_ctx, t = new_page(browsers.therapist, edge.url, console_log, "therapist")
        c_ctx, c = new_page(browsers.client, host.url, console_log, "client")
        try:
            login = {"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
            assert t.request.post("/api/login", data=login).ok
            created = t.request.post("/api/sessions", data={"client_label": "Cluster"})
            assert created.status == 201, created.text()
            session = created.json()
            t.goto(f"/sessions/{session['id']}", wait_until="domcontentloaded")
            # The invite names the public address; this client's load balancer sent it to
            # the hosting node.
            c.goto("/join/" + session["invite_url"].rsplit("/join/", 1)[1])
            expect(c.get_by_test_id("join-button")).to_be_enabled()
            c.get_by_test_id("display-name").fill("Robin")
            c.get_by_test_id("join-button").click()
            t.get_by_test_id("admit-button").click()
            started = time.monotonic()
            wait_video(t, "call", REMOTE)
            wait_video(c, "call", REMOTE)
            print(f"cluster: both videos playing {time.monotonic() - started:.1f} s after admit")
            assert _relayed(edge.url, "edge") == 1  # the therapist's socket, relayed to host
            # Live signals reach the therapist's panel through the relay.
            expect(t.get_by_test_id("talk-balance")).to_have_text(
                re.compile(r"^\d{1,3}%$"), timeout=40_000
            )
            # The agenda both ways.
            t.get_by_test_id("agenda-input").fill("How the week went")
            t.get_by_test_id("agenda-add").click()
            c_items = c.get_by_test_id("agenda-item")
            t_items = t.get_by_test_id("agenda-item")
            expect(c_items.filter(has_text="How the week went")).to_be_visible(timeout=10_000)
            c.get_by_test_id("agenda-input").fill("My sister's visit")
            c.get_by_test_id("agenda-add").click()
            proposal = t_items.filter(has_text="My sister's visit")
            expect(proposal.get_by_test_id("agenda-proposed")).to_be_visible(timeout=10_000)
            proposal.get_by_test_id("agenda-accept").click()
            expect(c_items.filter(has_text="My sister's visit")).to_have_attribute(
                "data-accepted", "true", timeout=10_000
            )
            expect(t.get_by_test_id("connection-status")).to_have_text("Connected")
            expect(c.get_by_test_id("connection-status")).to_have_text("Connected")
        finally:
            t_ctx.close()
            c_ctx.close()


def test_a_killed_hosting_node_moves_the_call_with_no_click(
    tmp_path: Path, postgres: Any, redis_url: str, browsers: Browsers, console_log: list[str]
) -> None:
    """Both pages behind one node that hosts nothing (a load balancer's choice); the room is on
    one of two media nodes. SIGKILL it: the pages reconnect by themselves and the call is back
    on the other node within 20 s, in the same session record."""
    nodes = [("edge", False), ("node-b", True), ("node-c", True)]
    with cluster(tmp_path, postgres.new_database(), redis_url, nodes) as servers:
        edge, by_id = servers[0], {n: s for (n, _), s in zip(nodes, servers, strict=True)}
        t_ctx, t = new_page(browsers.therapist, edge.url, console_log, "therapist")
        c_ctx, c = new_page(browsers.client, edge.url, console_log, "client")
        http = edge.signed_in(THERAPIST_EMAIL, THERAPIST_PASSWORD)
        try:
            login = {"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
            assert t.request.post("/api/login", data=login).ok
            session = http.post("/api/sessions", json={"client_label": "Failover"}).json()
            t.goto(f"/sessions/{session['id']}", wait_until="domcontentloaded")
            c.goto(session["invite_url"], wait_until="domcontentloaded")
            expect(c.get_by_test_id("join-button")).to_be_enabled()
            c.get_by_test_id("display-name").fill("Robin")
            c.get_by_test_id("join-button").click()
            t.get_by_test_id("admit-button").click()
            wait_video(t, "call", REMOTE)
            wait_video(c, "call", REMOTE)

            def stored() -> dict[str, Any] | None:
                # The edge hosts nothing: its answer is the persisted record.
                res = http.get(f"/api/sessions/{session['id']}/metrics")
                return res.json() if res.status_code == 200 else None

            before = wait_for(
                lambda: (m := stored()) and m["client_talk_s"] > 3 and m,
                timeout=60,
                what="persisted talk from the client",
            )
            measured = time.monotonic()
            for page in (t, c):
                page.evaluate(
                    "window.__clicks = 0; addEventListener('click', () => window.__clicks++, true)"
                )
            host_id = _host_of(redis_url, session["id"])
            by_id[host_id].kill()
            killed = time.monotonic()
            videos_advance([t, c], "after-failover", killed + 20)
            print(f"failover: both videos advancing {time.monotonic() - killed:.1f} s after kill")
            new_host = _host_of(redis_url, session["id"])
            assert new_host in ("node-b", "node-c") and new_host != host_id
            for page in (t, c):
                assert page.evaluate("window.__clicks") == 0
            grown = wait_for(
                lambda: (m := stored()) and m["client_talk_s"] > before["client_talk_s"] + 2 and m,
                timeout=60,
                what="talk totals growing past their value before the kill",
            )
            # One record, continued (not from zero) and not doubled: the client's talk grew
            # by no more than the wall-clock time since it was read.
            assert grown["duration_s"] >= before["duration_s"]
            gained = grown["client_talk_s"] - before["client_talk_s"]
            assert gained <= time.monotonic() - measured + 1.0, (before, grown)
        finally:
            http.close()
            t_ctx.close()
            c_ctx.close()


def _host_of(redis_url: str, session_id: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return str(client.get(f"rapport:room:{session_id}"))
    finally:
        client.close()


def videos_advance(pages: list[Any], key: str, deadline: float, min_frames: int = 10) -> None:
    for page in pages:
        left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        page.wait_for_function(
            VIDEO_PLAYING_JS, arg=[REMOTE, key, min_frames], polling=100, timeout=left_ms
        )
