"""The session clock on the live path: signals count only while both people are in the call.

These drive ``LiveSignals`` exactly as the server does (decoded PCM in through ``on_audio``,
presence from the room through ``set_present``, ``step`` on a 20 ms clock), but with a clock
the test controls, so a minute of absence takes a fraction of a second. Voice activity is
stubbed to "any non-zero sample is speech": what is under test is which frames count, not
the detector, so every expectation below is exact to the frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pytest

from media.alliance.engine import Role, Snapshot
from media.alliance.live import LiveSignals
from media.alliance.vad import FrameFeatures, VoiceActivityDetector

T, C = Role.THERAPIST, Role.CLIENT
FRAME_S = 0.02
FRAME = 960  # 20 ms at 48 kHz
EXACT = 1e-6


@pytest.fixture(autouse=True)
def _nonzero_is_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact truth: a frame with any sample is speech. The detector still measures the frame
    (levels, bands) so the attribution stage downstream sees real evidence; the verdict is
    forced, and so is a quiet room under it (steady white noise would otherwise be learned
    as the room's floor, and a talker at the floor is no talker)."""
    analyze = VoiceActivityDetector.analyze

    def forced(
        self: VoiceActivityDetector, frame: np.ndarray, silero: float | None = None
    ) -> FrameFeatures:
        speech = bool(np.any(frame))
        features = analyze(self, frame, silero=silero)
        return dataclasses.replace(features, speech=speech, floor_dbfs=-90.0)

    monkeypatch.setattr(VoiceActivityDetector, "analyze", forced)


class Call:
    """A session's live signals driven frame by frame on a controllable clock."""

    def __init__(self) -> None:
        self.signals = LiveSignals("s")
        self.now = 1000.0
        self.present: set[Role] = set()
        self.rng = np.random.default_rng(3)

    def set_present(self, role: Role, present: bool) -> None:
        (self.present.add if present else self.present.discard)(role)
        self.signals.set_present(role, present)

    def run(self, seconds: float, talking: Iterable[Role] = (), senders: int = 1) -> None:
        """``seconds`` of call; present people send audio (``senders`` copies of each frame,
        as when an old and a new peer both deliver during a reconnect)."""
        talking = set(talking)
        for _ in range(round(seconds / FRAME_S)):
            for role in self.present:
                for _copy in range(senders):
                    if role in talking:
                        pcm = self.rng.integers(-8000, 8000, FRAME).astype(np.int16)
                    else:
                        pcm = np.zeros(FRAME, dtype=np.int16)
                    self.signals.on_audio(role, pcm)
            self.now += FRAME_S
            self.signals.step(self.now)

    def finish(self) -> Snapshot:
        return self.signals.finish()

    def replayed(self) -> Snapshot:
        """What a restarted server rebuilds from the stored input."""
        restored = LiveSignals.restore("s", self.signals.input_runs())
        return restored.engine.finalize()


def assert_accounted(snap: Snapshot) -> None:
    """Every second of the session is exactly one of talk, silence or absence."""
    together = snap.duration_s - snap.absent_s
    talk = snap.therapist_talk_s + snap.client_talk_s - snap.overlap_s
    assert talk + snap.silence_s == pytest.approx(together, abs=EXACT)


def test_therapist_talking_in_the_waiting_room_is_not_talk_and_not_silence() -> None:
    call = Call()
    call.set_present(T, True)
    call.run(10.0, talking={T})  # the client is still in the waiting room
    waited = call.signals.snapshot()
    assert waited.therapist_talk_s == 0.0
    assert waited.silence_s == 0.0
    assert waited.speaking == ()
    assert waited.absent_s == pytest.approx(waited.duration_s, abs=EXACT)

    call.set_present(C, True)  # admitted; the therapist goes on talking, the client listens
    call.run(5.0, talking={T})
    snap = call.finish()
    together = snap.duration_s - snap.absent_s
    assert together == pytest.approx(5.0, abs=0.1)
    assert snap.therapist_talk_s == pytest.approx(together, abs=EXACT)
    assert snap.longest_monologue_s.therapist == pytest.approx(together, abs=EXACT)
    assert snap.client_talk_s == 0.0
    assert snap.silence_s == 0.0
    assert snap.absent_s == pytest.approx(10.0, abs=0.1)
    assert snap.client_share == 0.0
    assert_accounted(snap)
    assert call.replayed() == snap


@pytest.mark.parametrize("how", ["left_and_rejoined", "media_stalled"])
def test_client_away_for_a_minute_is_absence_not_balance_or_silence(how: str) -> None:
    call = Call()
    call.set_present(T, True)
    call.set_present(C, True)
    call.run(5.0, talking={T})
    before = call.signals.snapshot()
    if how == "left_and_rejoined":
        call.set_present(C, False)
        call.run(60.0, talking={T})  # the therapist keeps talking to an empty room
    else:
        # The room reports media "lost" (no RTP for 3 s) as absence; until then the dead
        # peer's track simply delivers nothing, which is "present, not speaking".
        call.present.discard(C)
        call.run(3.0, talking={T})
        call.set_present(C, False)
        call.run(57.0, talking={T})
    away = call.signals.snapshot()
    call.set_present(C, True)
    call.run(5.0, talking={T})
    snap = call.finish()

    # A stall is noticed 3 s late; the absence is then dated back to the client's last audio,
    # so the therapist's talk to a client who was already gone leaves the totals: both ways
    # of being away count the same.
    assert away.therapist_talk_s == pytest.approx(before.therapist_talk_s, abs=0.1)
    assert snap.duration_s == pytest.approx(70.0, abs=0.1)
    assert snap.absent_s == pytest.approx(60.0, abs=0.1)
    assert snap.therapist_talk_s == pytest.approx(10.0, abs=0.1)
    assert snap.silence_s == 0.0
    assert snap.therapist_talk_s == pytest.approx(snap.duration_s - snap.absent_s, abs=EXACT)
    assert snap.client_talk_s == 0.0
    assert snap.long_silences == 0
    assert_accounted(snap)
    assert call.replayed() == snap


def test_client_talk_across_an_absence_does_not_bridge_it() -> None:
    """An absence shorter than the bridge gap still ends the segment on both sides."""
    call = Call()
    call.set_present(T, True)
    call.set_present(C, True)
    call.run(3.0, talking={T, C})
    call.set_present(C, False)
    call.run(0.2, talking={T})
    call.set_present(C, True)
    call.run(3.0, talking={T, C})
    snap = call.finish()
    assert snap.absent_s == pytest.approx(0.2, abs=0.04)
    together = snap.duration_s - snap.absent_s
    assert snap.therapist_talk_s == pytest.approx(together, abs=EXACT)
    assert snap.overlap_s == pytest.approx(snap.client_talk_s, abs=EXACT)
    assert snap.longest_monologue_s.therapist <= 3.1
    assert_accounted(snap)


@pytest.mark.parametrize("present_during_swap", [False, True])
def test_reconnect_counts_no_second_twice(present_during_swap: bool) -> None:
    """The client's peer is replaced: seconds around the swap are counted once.

    With ``present_during_swap`` the room never reports the gap and, for two seconds, the old
    and the new peer both deliver audio: twice as many frames as seconds.
    """
    call = Call()
    call.set_present(T, True)
    call.set_present(C, True)
    call.run(5.0, talking={C})
    if not present_during_swap:
        call.set_present(C, False)
        call.run(1.0)
        call.set_present(C, True)
    call.run(2.0, talking={C}, senders=2)
    call.run(5.0, talking={C})
    snap = call.finish()
    wall = 12.0 if present_during_swap else 13.0
    assert snap.duration_s == pytest.approx(wall, abs=0.1)
    assert snap.absent_s == pytest.approx(wall - 12.0, abs=0.1)
    assert snap.client_talk_s == pytest.approx(snap.duration_s - snap.absent_s, abs=EXACT)
    assert snap.client_talk_s <= 12.0 + EXACT
    assert snap.therapist_talk_s == 0.0
    assert_accounted(snap)
    assert call.replayed() == snap
