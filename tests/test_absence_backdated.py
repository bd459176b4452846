"""Absence dated back to the last audio that arrived, not to when the stall was noticed.

The stall detector needs 3 s; until it fires a participant whose network died is still fed
as present and quiet. Those seconds must end up as absence, never as silence (nor as the
long silence they would complete). The pure-engine tests compare against exact truth: the
same session fed the absence in real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

from media.alliance.engine import Role, SessionClockEngine, SignalConfig
from tests.conftest import LiveServer
from tests.media_helpers import FakeBrowser, PcmTrack
from tests.signaling_helpers import open_room
from tests.support import eventually

T, C = Role.THERAPIST, Role.CLIENT
F = 50  # frames per second at 20 ms


def _script(
    stall_at: int, back_at: int, end: int
) -> Iterator[tuple[int, bool | None, bool | None]]:
    """(frame, therapist, client): the therapist talks 0-2 s, the client 2.5-4 s, then both
    are quiet; the client's network dies at ``stall_at`` and returns at ``back_at``, after
    which the therapist talks 1 s."""
    for k in range(end):
        t: bool | None = k < 2 * F or back_at + F <= k < back_at + 2 * F
        c: bool | None = 5 * F // 2 <= k < 4 * F
        if stall_at <= k < back_at:
            c = None
        yield k, t, c


def _truth(stall_at: int, back_at: int, end: int) -> SessionClockEngine:
    engine = SessionClockEngine(SignalConfig())
    for _, t, c in _script(stall_at, back_at, end):
        engine.advance({T: t, C: c})
    return engine


def _live(stall_at: int, noticed_at: int, back_at: int, end: int) -> SessionClockEngine:
    """What the server sees: present and quiet until the stall is noticed, then re-dated."""
    engine = SessionClockEngine(SignalConfig())
    for k, t, c in _script(stall_at, back_at, end):
        if k == noticed_at:
            assert engine.retract_presence(C, stall_at) == noticed_at - stall_at
        if stall_at <= k < noticed_at:
            c = False
        engine.advance({T: t, C: c})
    return engine


def test_a_stall_noticed_3_s_late_counts_as_absence_exactly() -> None:
    stall, noticed, back, end = 5 * F, 8 * F, 20 * F, 25 * F
    truth, live = _truth(stall, back, end), _live(stall, noticed, back, end)
    expected, got = truth.finalize(), live.finalize()
    assert got.silence_s == expected.silence_s
    assert got.absent_s == expected.absent_s == 15.0
    assert got.long_silences == expected.long_silences
    assert got.talk_s(T) == expected.talk_s(T) and got.talk_s(C) == expected.talk_s(C)
    assert got.last_5min.silence_s == expected.last_5min.silence_s
    assert got.last_5min.long_silences == expected.last_5min.long_silences
    assert live.timeline() == truth.timeline()
    # Without re-dating, the 3 s would be silence and complete a false long silence.
    unfixed = SessionClockEngine(SignalConfig())
    for k, t, c in _script(stall, back, end):
        unfixed.advance({T: t, C: False if stall <= k < noticed else c})
    wrong = unfixed.finalize()
    assert wrong.silence_s > expected.silence_s + 2.9
    assert wrong.long_silences == expected.long_silences + 1


def test_a_mid_session_snapshot_is_already_right_when_the_stall_is_noticed() -> None:
    stall, noticed = 5 * F, 8 * F
    truth, live = _truth(stall, 60 * F, noticed + 1), _live(stall, noticed, 60 * F, noticed + 1)
    expected, got = truth.snapshot(), live.snapshot()
    assert got.silence_s == expected.silence_s == 1.5  # 2-2.5 s and 4-5 s only
    assert got.long_silences == expected.long_silences == 0
    assert got.current_silence_s == 0.0
    assert abs(got.absent_s - expected.absent_s) < 1e-9


def test_a_real_long_silence_before_the_stall_stays_and_ends_where_absence_began() -> None:
    engine = SessionClockEngine(SignalConfig())
    for _ in range(F):  # talk 1 s, then 5 s of real silence, then a 3 s unnoticed stall
        engine.advance({T: True, C: False})
    for _ in range(8 * F):
        engine.advance({T: False, C: False})
    engine.retract_presence(C, 6 * F)
    engine.advance({T: False, C: None})
    snap = engine.finalize()
    assert snap.long_silences == 1
    assert abs(snap.silence_s - 5.0) < 1e-9
    assert abs(snap.absent_s - 3.02) < 1e-9


async def test_a_stalled_peer_adds_no_silence_through_the_real_server(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    """Both send silence; the client's tracks stop (RTP stops, the peer stays up). Once the
    server notices (3 s) the stalled stretch is absence: silence does not grow by it."""
    quiet = np.zeros(48_000, dtype=np.int16)
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    try:
        await t.start_media(FakeBrowser(audio=PcmTrack(quiet, loop=True)))
        c_browser = FakeBrowser(audio=PcmTrack(quiet, loop=True))
        await c.start_media(c_browser)
        signals = live_server.app.state.signals  # type: ignore[attr-defined]

        def snap() -> Any:
            live = signals.sessions.get(session["id"])
            return None if live is None else live.snapshot()

        await eventually(lambda: (s := snap()) is not None and s.silence_s >= 4.0, timeout=20)
        before = snap()
        c_browser.audio.stop()
        c_browser.video.stop()
        await t.expect("peer_state", media="lost", timeout=10)
        after = await eventually(
            lambda: (s := snap()) is not None and s.absent_s >= before.absent_s + 3.0 and s,
            timeout=10,
        )
        # Silence measured when the tracks stopped: the stall added (next to) none of it.
        print(
            f"silence {before.silence_s:.2f} -> {after.silence_s:.2f} s, "
            f"absent {before.absent_s:.2f} -> {after.absent_s:.2f} s"
        )
        assert after.silence_s <= before.silence_s + 0.5
        assert after.long_silences == before.long_silences
    finally:
        await t.close()
        await c.close()
        await asyncio.sleep(0)
