"""Live alliance signals through the real server, real sockets and real aiortc media."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.media_helpers import FakeBrowser, PcmTrack, speech
from tests.signaling_helpers import Participant, invite_token, open_room

SILENCE = np.zeros(48_000, dtype=np.int16)


async def _call(
    server: LiveServer, therapist: httpx.AsyncClient, t_audio: PcmTrack, c_audio: PcmTrack
) -> tuple[dict[str, str], Participant, Participant, str]:
    session, t, c, cookie = await open_room(server.ws_url, therapist)
    await t.start_media(FakeBrowser(audio=t_audio))
    await c.start_media(FakeBrowser(audio=c_audio))
    return session, t, c, cookie


async def _signals_until(
    t: Participant, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    """The first ``signals`` snapshot matching ``predicate`` (messages awaited, not polled)."""

    async def _wait() -> dict[str, Any]:
        while True:
            message = await t.expect("signals", timeout=timeout)
            snapshot: dict[str, Any] = message["snapshot"]
            if predicate(snapshot):
                return snapshot

    return await asyncio.wait_for(_wait(), timeout)


@pytest.mark.parametrize("live_server", [0, 2], indirect=True, ids=["in-process", "2-workers"])
async def test_therapist_gets_live_signals_and_client_never_does(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    t_audio = PcmTrack(speech(4.0))
    c_audio = PcmTrack(SILENCE)
    session, t, c, _ = await _call(live_server, therapist, t_audio, c_audio)
    speaking = await t.expect("speaking", timeout=20)
    while speaking["speaking"] != ["therapist"]:
        speaking = await t.expect("speaking", timeout=20)
    snap = await _signals_until(t, lambda s: s["therapist_talk_s"] >= 2.0)
    assert snap["client_talk_s"] == 0.0 and snap["client_share"] == 0.0

    # Now the client talks while the therapist is quiet.
    c_audio.restart(speech(4.0, voice="en+f3"))
    snap = await _signals_until(t, lambda s: s["client_talk_s"] >= 2.0)
    assert 0.0 < snap["client_share"] < 1.0

    metrics = (await therapist.get(f"/api/sessions/{session['id']}/metrics")).json()
    assert metrics["client_talk_s"] >= 2.0 and "last_5min" in metrics
    timeline = (await therapist.get(f"/api/sessions/{session['id']}/timeline")).json()
    assert any(s["therapist"] for s in timeline["seconds"])
    assert any(s["client"] for s in timeline["seconds"])

    await t.send({"type": "end"})
    await c.expect("ended")
    # The client's socket never carried a metric.
    assert not c.seen("signals") and not c.seen("speaking")
    stored = (await therapist.get(f"/api/sessions/{session['id']}/metrics")).json()
    assert stored["client_talk_s"] >= metrics["client_talk_s"]
    assert stored["speaking"] == []
    await t.close()
    await c.close()


async def test_muted_speech_is_not_counted_and_absence_is_not_silence(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    t_audio = PcmTrack(SILENCE)
    c_audio = PcmTrack(speech(30.0, voice="en+f3"), loop=True)
    session, t, c, cookie = await _call(live_server, therapist, t_audio, c_audio)
    await c.send({"type": "mute", "audio": True, "video": False})
    await t.expect("peer_state", audio_muted=True)
    muted_from = await _signals_until(t, lambda s: s["duration_s"] > 0)
    later = await _signals_until(t, lambda s: s["duration_s"] >= muted_from["duration_s"] + 2.0)
    # Speaking into a muted microphone adds no talk time.
    assert later["client_talk_s"] <= muted_from["client_talk_s"] + 0.1

    # The client leaves: that time is absence, not silence.
    await c.send({"type": "leave"})
    await c.expect("left")
    before = await _signals_until(t, lambda s: s["absent_s"] > 0)
    after = await _signals_until(t, lambda s: s["absent_s"] >= before["absent_s"] + 1.5)
    assert after["silence_s"] <= before["silence_s"] + 0.3
    await c.close()

    # Rejoin after a reload: the same session clock goes on, nothing counted twice.
    c = await Participant.connect(
        f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
    )
    await c.send({"type": "join"})
    await c.expect("admitted")
    await c.start_media(FakeBrowser(audio=PcmTrack(speech(6.0, voice="en+f3"))))
    rejoined = await _signals_until(t, lambda s: s["client_talk_s"] >= 1.0)
    assert rejoined["duration_s"] >= after["duration_s"]
    total = (
        rejoined["therapist_talk_s"]
        + rejoined["client_talk_s"]
        + rejoined["silence_s"]
        + rejoined["absent_s"]
        - rejoined["overlap_s"]
    )
    assert abs(total - rejoined["duration_s"]) < 0.6
    await t.send({"type": "end"})
    await c.expect("ended")
    await t.close()
    await c.close()
