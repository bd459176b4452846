"""Flood control: sliding windows of messages and bytes per socket, connects per identity.

The unit tests drive ``SocketLimiter`` on a simulated clock (exact, fast); the socket tests
send a real flood to a real server and check it is closed with 1008 and a precise error.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from signaling.limits import ConnectLimiter, Limits, SocketLimiter, Verdict
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.signaling_helpers import Participant, login_cookie

KIB60 = json.dumps({"type": "ping", "t": 1, "pad": "x" * (60 * 1024)})


def test_a_large_message_flood_is_closed_although_the_bucket_refills() -> None:
    """The issue's flood: 60 KiB messages, 900 a second. The old counter reset on every
    message the bucket let through, so it never closed; the window does within a second."""
    limiter = SocketLimiter(Limits())
    closed_at = None
    for i in range(18_000):
        now = i / 900
        if limiter.check(len(KIB60), now) is Verdict.CLOSE:
            closed_at = now
            break
    assert closed_at is not None and closed_at < 1.0
    # Not more than the window's byte budget got through before that.
    accepted = 18_000 - limiter.refused
    assert accepted  # some, as a burst: the first 34 messages fit 2 MiB
    assert limiter.refused >= Limits().max_strikes


def test_slow_large_messages_are_bounded_by_bytes_not_count() -> None:
    """Ten 60 KiB messages a second pass the bucket (50/s) but not the byte window."""
    limiter = SocketLimiter(Limits())
    verdicts = [limiter.check(len(KIB60), i / 10) for i in range(100)]
    assert verdicts[:34] == [Verdict.ACCEPT] * 34
    assert Verdict.WINDOW in verdicts
    # Over any 10 s no more than 2 MiB was accepted.
    accepted = [i / 10 for i, v in enumerate(verdicts) if v is Verdict.ACCEPT]
    for t in accepted:
        in_window = sum(1 for u in accepted if t - 10 < u <= t)
        assert in_window * len(KIB60) <= Limits().window_bytes


def test_oversized_messages_are_strikes_and_close_when_sustained() -> None:
    limiter = SocketLimiter(Limits())
    verdicts = [limiter.check(70_000, i / 100) for i in range(400)]
    assert verdicts[0] is Verdict.TOO_LARGE
    assert Verdict.CLOSE in verdicts


def test_a_normal_session_never_trips_any_limit() -> None:
    """An hour of a busy page: stats every 2 s, a ping every 5 s, an offer now and then, and
    agenda typing bursts (an edit a keystroke, 10/s for 20 s) every minute."""
    limiter = SocketLimiter(Limits())
    events: list[tuple[float, int]] = []
    for t in range(0, 3600, 2):
        events.append((t + 0.01, 600))  # stats
    for t in range(0, 3600, 5):
        events.append((t + 0.02, 30))  # ping
    for t in range(0, 3600, 300):
        events.append((t + 0.03, 9_000))  # a renegotiation's offer
    for minute in range(60):
        for k in range(200):
            events.append((minute * 60 + 30 + k / 10, 250))  # agenda keystrokes
    events.sort()
    verdicts = [limiter.check(size, now) for now, size in events]
    assert set(verdicts) == {Verdict.ACCEPT}
    assert limiter.refused == 0


def test_a_short_burst_is_refused_in_part_but_not_closed() -> None:
    limiter = SocketLimiter(Limits())
    verdicts = [limiter.check(30, i / 10_000) for i in range(250)]
    assert verdicts.count(Verdict.ACCEPT) >= 100
    assert Verdict.RATE in verdicts and Verdict.CLOSE not in verdicts


def test_connects_per_identity_refill_and_are_separate() -> None:
    limiter = ConnectLimiter(capacity=3, per_second=1.0)
    assert [limiter.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.take("b", 0.0)  # another identity has its own bucket
    assert limiter.take("a", 1.01)  # refilled
    small = ConnectLimiter(capacity=1, per_second=0.001, max_keys=2)
    for key in ("x", "y", "z"):
        assert small.take(key, 0.0)
    assert len(small._buckets) == 2


@NO_MEDIA_WORKER
async def test_a_socket_flooding_60_kib_messages_is_closed_with_1008(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = (await therapist.post("/api/sessions", json={"client_label": "F"})).json()
    t = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await t.expect("welcome")

    async def flood() -> int:
        sent = 0
        try:
            while sent < 18_000:
                await t.ws.send(KIB60)
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0)
        except websockets.ConnectionClosed:
            pass
        return sent

    sender = asyncio.ensure_future(flood())
    fatal = await t.expect("error", timeout=30, fatal=True)
    assert fatal["code"] == "rate_limited"
    assert "the connection was closed" in fatal["message"]
    assert "in any 10 s" in fatal["message"]
    sent = await asyncio.wait_for(sender, 30)
    assert sent < 18_000  # the server closed it before the flood was through
    await asyncio.wait_for(t.ws.wait_closed(), 10)
    assert t.ws.close_code == 1008


@NO_MEDIA_WORKER
async def test_reconnecting_in_a_tight_loop_is_refused_with_4429(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = (await therapist.post("/api/sessions", json={"client_label": "R"})).json()
    url = f"{live_server.ws_url}/ws/sessions/{session['id']}"
    refused = None
    for _ in range(40):
        p = await Participant.connect(url, login_cookie(therapist))
        first = json.loads(await p.ws.recv())
        if first["type"] == "error":
            refused = first
            await asyncio.wait_for(p.ws.wait_closed(), 10)
            assert p.ws.close_code == 4429
            break
        await p.ws.close()
    assert refused is not None and refused["code"] == "rate_limited"
    # Another session of the same therapist is not affected.
    other = (await therapist.post("/api/sessions", json={"client_label": "S"})).json()
    p = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{other['id']}", login_cookie(therapist)
    )
    assert (await p.expect("welcome"))["role"] == "therapist"
    await p.close()
