"""Call quality: the scorer's thresholds, and scores on a real, impaired media path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from media.relay.call import Call
from media.relay.ice import MediaConfig
from media.relay.quality import (
    DirectionSample,
    KindSample,
    PeerStatsSampler,
    SmoothedScore,
    label_for,
    raw_score,
)
from tests.conftest import LiveServer
from tests.media_helpers import FakeBrowser, NetEmulator
from tests.signaling_helpers import open_room
from tests.support import eventually

CONFIG = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))


def _label(kind: str, loss: float) -> str:
    sample = DirectionSample(kinds={kind: KindSample(loss=loss)})
    return label_for(raw_score(sample))


def test_loss_thresholds_per_media_kind() -> None:
    assert _label("audio", 0.02) == "excellent"
    assert _label("audio", 0.03) == "good"  # above 2.5 % degrades
    assert _label("audio", 0.075) == "good"
    assert _label("audio", 0.08) == "poor"  # above 7.5 % is poor
    assert _label("video", 0.019) == "excellent"
    assert _label("video", 0.025) == "good"
    assert _label("video", 0.061) == "poor"


def test_rtt_freeze_and_bitrate_penalties() -> None:
    clean = DirectionSample(kinds={"audio": KindSample(), "video": KindSample()})
    assert raw_score(clean) == 100
    slow = DirectionSample(rtt_ms=600, kinds=clean.kinds)
    assert 60 <= raw_score(slow) < 85
    frozen = DirectionSample(kinds={"video": KindSample(freezes=3)})
    assert raw_score(frozen) == 76
    starved = DirectionSample(kinds={"video": KindSample(bitrate_bps=30_000)})
    assert raw_score(starved) < 90
    assert label_for(raw_score(DirectionSample(lost=True)), lost=True) == "lost"


def test_smoothing_falls_fast_and_recovers_slowly() -> None:
    smooth = SmoothedScore()
    good = DirectionSample(kinds={"audio": KindSample(loss=0.0)})
    bad = DirectionSample(kinds={"audio": KindSample(loss=0.2)})
    assert smooth.update(good) == (100.0, "excellent")
    score, label = smooth.update(bad)
    assert label == "poor"  # one bad sample shows at once
    score_after_one_good, label = smooth.update(good)
    assert label != "excellent" and score < score_after_one_good < 85  # not hidden by one
    for _ in range(8):
        score, label = smooth.update(good)
    assert label == "excellent"


async def _connected_pair() -> tuple[Call, FakeBrowser, FakeBrowser]:
    call = Call(CONFIG)
    therapist, client = FakeBrowser(), FakeBrowser()
    await therapist.accept(await call.connect("therapist", await therapist.offer()))
    await client.accept(await call.connect("client", await client.offer()))
    await client.wait_for("video", 5)
    await therapist.wait_for("video", 5)
    return call, therapist, client


async def _score_over(
    call: Call, sampler: PeerStatsSampler, smooth: SmoothedScore, seconds: float
) -> tuple[float, str, float]:
    """Sample the client's upstream every 0.5 s for ``seconds``.

    Returns the last score and label, and the mean of the samples' loss: one 0.5 s sample
    holds only ~25 audio packets, so at 15 % random loss a single sample shows 4 % or less
    about one time in ten, while the mean over the period does not.
    """
    peer = call.peers["client"]
    score, label, losses = 100.0, "excellent", []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        up, _ = sampler.sample(
            await peer.pc.getStats(), time.monotonic(), lost=peer.media_state == "lost"
        )
        losses.append(max((k.loss for k in up.kinds.values()), default=0.0))
        score, label = smooth.update(up)
    return score, label, sum(losses) / len(losses) if losses else 0.0


async def test_score_degrades_under_loss_and_recovers_on_a_real_path() -> None:
    call, therapist, client = await _connected_pair()
    net = NetEmulator(client.pc)
    sampler, smooth = PeerStatsSampler(), SmoothedScore()
    try:
        await _score_over(call, sampler, smooth, 1.0)
        clean_score, label, clean_loss = await _score_over(call, sampler, smooth, 2.0)
        assert clean_loss <= 0.025 and label in ("excellent", "good"), (clean_score, clean_loss)
        net.loss = 0.15
        lossy_score, label, loss = await _score_over(call, sampler, smooth, 3.0)
        assert loss > 0.075 and label == "poor", (lossy_score, loss)
        net.loss = 0.0
        score, label, loss = await _score_over(call, sampler, smooth, 4.0)
        assert label in ("excellent", "good") and score > lossy_score + 25, (score, loss)
        assert net.dropped > 0
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_delay_raises_rtt_and_lowers_the_score() -> None:
    call, therapist, client = await _connected_pair()
    net = NetEmulator(client.pc)
    sampler, smooth = PeerStatsSampler(), SmoothedScore()
    try:
        net.delay_s = 0.35  # the client's packets (incl. its receiver reports) arrive late
        peer = call.peers["client"]
        rtt = 0.0

        async def rtt_reached() -> bool:
            nonlocal rtt
            up, down = sampler.sample(await peer.pc.getStats(), time.monotonic())
            rtt = up.rtt_ms or 0.0
            smooth.update(down)
            return rtt >= 300

        await asyncio.sleep(0.5)  # the first sample needs a period to compare against
        with contextlib.suppress(TimeoutError):
            await eventually(rtt_reached, timeout=9.5, interval=0.5)
        assert rtt >= 300
        assert smooth.value is not None and smooth.value < 100
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_lost_within_3_s_of_media_stopping() -> None:
    call, therapist, client = await _connected_pair()
    net = NetEmulator(client.pc)
    try:
        net.blackhole = True
        stopped = time.monotonic()
        await eventually(lambda: call.peers["client"].media_state == "lost", timeout=6)
        elapsed = time.monotonic() - stopped
        assert elapsed <= 3.0 + 0.6  # 3 s of silence on the wire, checked twice a second
        sampler = PeerStatsSampler()
        up, _ = sampler.sample(
            await call.peers["client"].pc.getStats(),
            time.monotonic(),
            lost=call.peers["client"].media_state == "lost",
        )
        assert label_for(raw_score(up), up.lost) == "lost"
        net.blackhole = False
        await eventually(lambda: call.peers["client"].media_state == "connected", timeout=6)
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_participants_admins_and_prometheus_see_quality(
    live_server: LiveServer, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist, "secret-label")
    await t.start_media()
    await c.start_media()
    report = {"type": "stats", "rtt_ms": 40, "fps_in": 15, "candidate_type": "host", "freezes": 0}
    for _ in range(4):  # a small burst is tolerated (reports can arrive bunched), a flood not
        await c.send(report)
    assert (await c.error())["code"] == "rate_limited"
    assert len(c.seen("error")) == 0
    await c.send({"type": "stats", "rtt_ms": -5})
    assert (await c.error())["code"] == "invalid_message"

    quality = await c.expect("quality", timeout=10)
    assert quality["you"]["label"] in ("excellent", "good")
    # The therapist's first update may come before the client's side was first scored (peer
    # None, "not yet known"); within 10 s one must carry the client's label.
    deadline = asyncio.get_running_loop().time() + 10
    quality = await t.expect("quality", timeout=10)
    while quality["peer"] is None:
        quality = await t.expect("quality", timeout=deadline - asyncio.get_running_loop().time())
    assert quality["peer"]["label"] in ("excellent", "good")

    calls = (await admin.get("/api/admin/calls")).json()["calls"]
    assert [call["session_id"] for call in calls] == [session["id"]]
    assert calls[0]["participants"] == 2 and calls[0]["worst_quality"]["label"]
    assert "secret-label" not in str(calls)  # admins see quality, not clinical labels
    detail = (await admin.get(f"/api/admin/calls/{session['id']}")).json()
    history = detail["participants"]["client"]["history"]
    assert history and history[-1]["score_up"] > 0 and "rtt_ms" in history[-1]
    assert any(point["fps"] == 15 for point in history)
    health = (await admin.get("/api/admin/health")).json()
    assert health["peer_connections"] == 2 and health["database"] is True
    # The call runs in the server's one media worker, and the admin can see that.
    assert calls[0]["media_worker"] == 0
    [worker] = health["media_workers"]
    assert worker["alive"] and worker["calls"] == 1 and worker["peers"] == 2
    assert worker["pid"] != os.getpid() and health["media_worker_restarts"] == 0
    for path in ("/api/admin/calls", "/api/admin/health", "/api/admin/incidents"):
        assert (await therapist.get(path)).status_code == 403
    for path in (
        f"/api/sessions/{session['id']}/metrics",
        f"/api/sessions/{session['id']}/summary",
        "/api/sessions",
    ):
        assert (await admin.get(path)).status_code == 403

    text = (await admin.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert next(iter(families["rapport_peer_connections"].samples)).value == 2
    assert next(iter(families["rapport_active_sessions"].samples)).value == 1
    for name in (
        "rapport_rtt_seconds",
        "rapport_packet_loss_ratio",
        "rapport_jitter_seconds",
        "rapport_event_loop_lag_seconds",
        "rapport_signaling_messages",
        "rapport_signaling_errors",
        "rapport_quality_label_participants",
    ):
        assert name in families, name
    messages = {
        s.labels.get("type"): s.value
        for s in families["rapport_signaling_messages"].samples
        if s.name.endswith("_total")
    }
    assert messages["join"] >= 2 and messages["stats"] >= 1
    await t.send({"type": "end"})
    await c.expect("ended")
    await t.close()
    await c.close()
