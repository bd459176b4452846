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
from .helpers import new_page, wait_video

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
