"""Media that stops without a goodbye: how soon the room, both quality indicators and the
audit log say so. Real server, a real media worker, real aiortc peers; the dead client's
datagrams are dropped at its ICE connection (no RTCP BYE, no DTLS close, no `leave`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from media import rtp_lost
from media.relay.peer import STALL_AFTER_S
from media.relay.quality import RTP_LOST_AFTER_S
from tests.conftest import LiveServer
from tests.media_helpers import FakeBrowser, NetEmulator
from tests.signaling_helpers import Participant, open_room
from tests.support import eventually

# The acceptance: the other side sees a dead client within 3 s.
DEAD_SEEN_WITHIN_S = 3.0


def test_rtp_age_marks_a_direction_lost_only_when_there_was_media_to_send() -> None:
    assert RTP_LOST_AFTER_S == STALL_AFTER_S  # the room's "lost" and the label's agree
    assert rtp_lost({"up": 0.1, "down": 0.1}, 0.1) == (False, False)
    assert rtp_lost({"up": 1.6, "down": 0.1}, 0.1) == (True, False)
    # Nothing went down because the other side sent nothing: not this link's fault.
    assert rtp_lost({"up": 0.1, "down": 5.0}, 5.0) == (False, False)
    assert rtp_lost({"up": 0.1, "down": 5.0}, None) == (False, False)
    # The server had the other side's media and none of it left for this participant.
    assert rtp_lost({"up": 0.1, "down": 1.6}, 0.1) == (False, True)
    assert rtp_lost({"up": None, "down": None}, None) == (False, False)


async def _quality_label(p: Participant, who: str, label: str, deadline: float) -> float:
    """Seconds until a `quality` message gives ``who`` (you/peer) ``label``."""
    while True:
        q = await p.expect("quality", timeout=max(0.01, deadline - time.monotonic()))
        level = q[who]
        if level is not None and level["label"] == label:
            return time.monotonic()


async def test_a_dead_client_is_lost_everywhere_within_3_s_and_audited_when_long(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    try:
        await t.start_media(FakeBrowser())
        await c.start_media(FakeBrowser())
        assert t.browser is not None and c.browser is not None
        await t.browser.wait_for("video", 10)
        await c.browser.wait_for("video", 10)
        await t.expect("peer_state", timeout=10, role="client", media="connected")
        # Healthy first: the client's quality scored, and not lost.
        q = await t.expect("quality", timeout=10)
        while q["peer"] is None:
            q = await t.expect("quality", timeout=10)
        assert q["peer"]["label"] in ("excellent", "good"), q
        room = live_server.app.state.rooms.rooms[session["id"]]  # type: ignore[attr-defined]
        room.media_lost_audit_after_s = 2.0  # 30 s in production; the same path, sooner
        t.inbox.clear()
        c.inbox.clear()

        net = NetEmulator(c.browser.pc)
        net.blackhole = True  # the client's network is gone; its signalling socket is not
        cut = time.monotonic()
        deadline = cut + DEAD_SEEN_WITHIN_S
        state = await t.expect(
            "peer_state", timeout=DEAD_SEEN_WITHIN_S, role="client", media="lost"
        )
        state_after = time.monotonic() - cut
        assert state["present"] is True
        seen_by_therapist, seen_by_client = await asyncio.gather(
            _quality_label(t, "peer", "lost", deadline),
            _quality_label(c, "you", "lost", deadline),
        )
        print(
            f"client cut: peer_state lost after {state_after:.2f} s, quality lost for the "
            f"therapist after {seen_by_therapist - cut:.2f} s, for the client after "
            f"{seen_by_client - cut:.2f} s"
        )

        async def audited() -> list[dict[str, Any]]:
            events = await admin.get("/api/admin/audit", params={"session_id": session["id"]})
            return [e for e in events.json()["events"] if e["action"] == "media_lost"]

        entries = await eventually(audited, timeout=10, message="a media_lost audit entry")
        [entry] = entries
        assert entry["actor"].startswith("client:")
        assert entry["detail"] == "client media lost for 2 s"

        # Back: the outage's timer is gone (a short blip, cancelled the same way, is never
        # audited) and the one entry stays one.
        net.blackhole = False
        await t.expect("peer_state", timeout=10, role="client", media="connected")
        assert "client" not in room._media_lost_timers
        assert len(await audited()) == 1
    finally:
        await t.close()
        await c.close()
