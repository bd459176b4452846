"""The signal thread's wake-up period changes its cost, never the signals.

The thread wakes every ``RAPPORT_SIGNAL_TICK_MS`` and runs every 20 ms frame that fell due
since. These tests replay one recorded input (two people's audio, each frame arriving with
its own network jitter, and the thread held up twice) on a clock the test controls, waking
the session every 20, 60 or 100 ms, and compare everything the session produced: each
published update, the engine's whole input, the final snapshot and the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from media.alliance.engine import Role
from media.alliance.live import LiveSignals, SignalsUpdate, SignalThread
from tests.media_helpers import speech
from tests.support import eventually_sync

T, C = Role.THERAPIST, Role.CLIENT
FRAME = 960  # 20 ms at 48 kHz
FRAME_S = 0.02
START = 1000.0


@dataclass(frozen=True)
class Recording:
    """Audio as it reached the server: (arrival time, role, 20 ms of PCM), in arrival order."""

    arrivals: list[tuple[float, Role, np.ndarray]]
    seconds: float


@pytest.fixture(scope="module")
def recording() -> Recording:
    """Both people take turns (real synthetic speech, with pauses), every frame late by its
    own 1-55 ms of jitter (within the 60 ms the live clock lags behind)."""
    seconds = 12.0
    n = int(seconds / FRAME_S)
    talk = speech(7.0)
    pcm = {T: np.zeros(n * FRAME, dtype=np.int16), C: np.zeros(n * FRAME, dtype=np.int16)}
    pcm[T][: 4 * 48_000] = talk[: 4 * 48_000]
    pcm[C][5 * 48_000 : 5 * 48_000 + 3 * 48_000] = talk[4 * 48_000 :]
    pcm[T][9 * 48_000 : 9 * 48_000 + 2 * 48_000] = talk[: 2 * 48_000]  # a reply
    rng = np.random.default_rng(7)
    arrivals = []
    for role in (T, C):
        jitter = rng.uniform(0.001, 0.055, n)
        for i in range(n):
            # Frames of one track arrive in order even when jitter says otherwise.
            at = START + i * FRAME_S + jitter[i]
            arrivals.append((at, role, pcm[role][i * FRAME : (i + 1) * FRAME]))
    by_role: dict[Role, float] = {}
    ordered = []
    for at, role, frame in arrivals:
        at = max(at, by_role.get(role, 0.0))
        by_role[role] = at
        ordered.append((at, role, frame))
    ordered.sort(key=lambda a: a[0])
    return Recording(ordered, seconds)


def _wake_ups(period_s: float, seconds: float, stalls: list[tuple[float, float]]) -> list[float]:
    """The thread's wake-up times: every ``period_s``, except inside a stall (the thread was
    held up), after which it wakes once at the stall's end. The first wake-up starts the
    session clock; the others fall half a millisecond after a frame boundary, as real ones
    fall anywhere, rather than on it, where rounding alone could move a frame by one."""
    times = [START, START + seconds + 0.0005]  # all periods end at the same moment
    k = 1
    while k * period_s < seconds:
        t = k * period_s + 0.0005
        held = [end for start, end in stalls if start < t < end]
        times.append(START + (held[0] if held else t))
        k += 1
    return sorted(set(times))


def _replay(rec: Recording, period_s: float) -> tuple[LiveSignals, list[SignalsUpdate]]:
    signals = LiveSignals("s")
    signals.set_present(T, True)
    signals.set_present(C, True)
    stalls = [(3.01, 3.25), (7.5, 7.9)]  # held up 240 ms and 400 ms (both periods)
    updates: list[SignalsUpdate] = []
    arrivals = iter(rec.arrivals)
    pending = next(arrivals, None)
    for now in _wake_ups(period_s, rec.seconds, stalls):
        while pending is not None and pending[0] <= now:
            signals.on_audio(pending[1].value, pending[2])
            pending = next(arrivals, None)
        updates.extend(signals.step(now))
    return signals, updates


def _content(update: SignalsUpdate) -> tuple[object, ...]:
    """An update without its send time (which follows the wake-up, by design)."""
    return (update.speaking, update.speaking_changed, update.snapshot, update.events)


def test_the_signals_do_not_depend_on_the_wake_up_period(recording: Recording) -> None:
    reference, reference_updates = _replay(recording, 0.02)
    final = reference.finish()
    # Not vacuous: both talked, the indicator changed several times, snapshots went out.
    assert final.therapist_talk_s > 3.0 and final.client_talk_s > 1.5
    assert sum(u.speaking_changed for u in reference_updates) >= 4
    assert sum(u.snapshot is not None for u in reference_updates) >= 20
    assert reference.frames_dropped == 0

    for period in (0.06, 0.1):
        signals, updates = _replay(recording, period)
        assert signals.input_runs() == reference.input_runs(), period
        assert [_content(u) for u in updates] == [_content(u) for u in reference_updates]
        assert signals.finish() == final
        assert signals.timeline() == reference.timeline()
        assert signals.frames_dropped == 0


def test_a_stalled_thread_runs_every_due_frame_with_its_own_audio_in_one_step() -> None:
    """Held up for 200 ms, the thread catches up in one wake-up: ten frames per person, each
    fed the audio that arrived for it, none dropped."""
    signals = LiveSignals("s")
    signals.set_present(T, True)
    signals.set_present(C, True)
    sent = 0

    def deliver(until: float) -> None:
        nonlocal sent
        while START + sent * FRAME_S + 0.005 <= until:
            for role in (T, C):
                tone = np.full(FRAME, 100 + sent, dtype=np.int16)
                signals.on_audio(role.value, tone)
            sent += 1

    signals.step(START)  # starts the session clock
    for k in range(1, 51):  # a second at 20 ms wake-ups (just after each frame boundary)
        now = START + k * FRAME_S + 0.0005
        deliver(now)
        signals.step(now)
    ticks_before = signals.engine.frames
    now = START + 60 * FRAME_S + 0.0005  # held up 200 ms while audio kept arriving
    deliver(now)
    signals.step(now)

    assert signals.engine.frames - ticks_before == 10
    assert signals.frames_dropped == 0
    # Each frame consumed one frame of audio; only the clock lag's 3 remain queued.
    for role in (T, C):
        assert signals._audio.queued(role) == 3
        assert signals._last_audio_tick[role] == signals.engine.frames


def test_the_thread_sleeps_while_nobody_is_present_and_wakes_for_a_join() -> None:
    published: list[SignalsUpdate] = []
    thread = SignalThread(published.append, tick_s=0.06)
    signals = LiveSignals("s")
    try:
        thread.add(signals)
        eventually_sync(lambda: thread.idles >= 1, timeout=20)
        assert thread.wakeups == 0  # nobody present: no wake-up stepped anything

        signals.set_present(T.value, True)
        eventually_sync(lambda: any(u.snapshot is not None for u in published), timeout=20)

        signals.set_present(T.value, False)
        eventually_sync(lambda: thread.idles >= 2, timeout=20)
        woken = thread.wakeups
        signals.set_present(T.value, True)
        eventually_sync(lambda: thread.wakeups > woken, timeout=20)
    finally:
        thread.stop()
