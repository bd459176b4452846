"""Talk taken back: a voice counted as a participant's that later turned out not to be theirs.

A TV playing before the therapist's first word is the only voice in their microphone, so it
seeds their level model and is counted as their talk; once their real, louder voice has
been heard taking turns, attribution can tell, and the engine takes that talk back. The
engine tests compare against exact truth: the same session fed "not speaking" in real time,
snapshot by snapshot from the retraction on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from media.alliance.attribution import Attributor
from media.alliance.engine import ROLES, Role, SessionClockEngine, SignalConfig, Snapshot
from media.alliance.live import LiveSignals
from media.alliance.offline import analyze_files
from media.alliance.vad import FrameFeatures, VoiceActivityDetector
from tests.fixtures.dialogues import have_tools
from tests.fixtures.rooms import CONDITIONS, generate_room_dialogue
from tests.media_helpers import BANDS as _BANDS
from tests.media_helpers import Level
from tests.media_helpers import level_frame as _frame

T, C = Role.THERAPIST, Role.CLIENT
F = 50  # frames per second at 20 ms

Spans = Sequence[tuple[int, int]]
Script = list[tuple[bool, bool]]


def _spans(*seconds: tuple[float, float]) -> list[tuple[int, int]]:
    return [(round(a * F), round(b * F)) for a, b in seconds]


def _inside(k: int, spans: Spans) -> bool:
    return any(a <= k < b for a, b in spans)


def _script(seconds: float, therapist: Spans, client: Spans) -> Script:
    return [(_inside(k, therapist), _inside(k, client)) for k in range(round(seconds * F))]


def _without(script: Script, spans: Spans) -> Script:
    """The truth: the therapist fed as not speaking in ``spans``."""
    return [(t and not _inside(k, spans), c) for k, (t, c) in enumerate(script)]


def _run(
    script: Script,
    retract_at: int | None = None,
    spans: Spans = (),
    config: SignalConfig | None = None,
) -> tuple[SessionClockEngine, list[Snapshot]]:
    """Feed ``script`` (retracting ``spans`` before frame ``retract_at``); the engine and the
    snapshot after every frame."""
    engine = SessionClockEngine(config or SignalConfig())
    snapshots = []
    for k, (t, c) in enumerate(script):
        if k == retract_at:
            assert engine.retract_talk(T, spans) > 0
        engine.advance({T: t, C: c})
        snapshots.append(engine.snapshot())
    return engine, snapshots


# Not redone by a retraction (documented on ``retract_talk``): the floor and the segments
# the retracted talk formed.
_FLOOR = ("turns", "interruptions", "backchannels")
_SEGMENTS = ("median_response_latency_s", "longest_monologue_s")


def _but_floor(got: Snapshot, expected: Snapshot) -> Snapshot:
    """``got`` with the fields a retraction does not redo taken from ``expected``."""
    window = dataclasses.replace(
        got.last_5min, **{f: getattr(expected.last_5min, f) for f in _FLOOR}
    )
    return dataclasses.replace(
        got, last_5min=window, **{f: getattr(expected, f) for f in _FLOOR + _SEGMENTS}
    )


def test_a_tv_before_the_first_words_taken_back_is_exactly_the_session_without_it() -> None:
    """The TV (counted as the therapist) plays 1-4.5 s and 6-8 s; the therapist speaks from
    12 s, the client answers at 21 s. Retracted at 13 s: from then on every snapshot is the
    session fed without the TV (but the longest monologue, the TV's 3.5 s until the
    therapist has spoken longer), and the final one and the timeline are, in every field
    (the TV held the floor before the therapist, as the therapist; nobody else spoke then).
    Its gaps (4.5-6 s, 8-12 s: one long silence) merge into one long silence from 0 s."""
    tv = _spans((1.0, 4.5), (6.0, 8.0))
    therapist = _spans((1.0, 3.0), (3.3, 4.5), (6.0, 8.0), (12.0, 20.0), (26.0, 30.0))
    script = _script(34.0, therapist, _spans((21.0, 25.0)))
    at = 13 * F
    live, got = _run(script, at, tv)
    truth, expected = _run(_without(script, tv))
    assert got[at - 1].therapist_talk_s == pytest.approx(expected[at - 1].therapist_talk_s + 5.5)
    for k in range(at, len(script)):
        assert _but_floor(got[k], expected[k]) == expected[k], k
    final = live.finalize()
    assert final == truth.finalize()
    assert final.long_silences == 2 and final.silence_s == pytest.approx(12.0 + 1 + 1 + 4)
    assert live.timeline() == truth.timeline()


@pytest.mark.parametrize("retract_s", [6.5, 10.0])
def test_a_retraction_completes_the_long_silence_that_really_happened(retract_s: float) -> None:
    """The client speaks 0-1 s and 7-9 s; a TV taken for the therapist 2-2.5 s and 4.5-5 s
    breaks the 6 s silence between into runs of 1-2 s: no long silence. Without the TV
    there was one; retracted during that silence (6.5 s: the current silence run is 5.5 s
    and already long) or after it (10 s), it is counted, in the totals and the window.
    (The TV's segments stay in the therapist's longest monologue: not redone.)"""
    tv = _spans((2.0, 2.5), (4.5, 5.0))
    script = _script(11.0, tv, _spans((0.0, 1.0), (7.0, 9.0)))
    at = round(retract_s * F)
    live, got = _run(script, at, tv)
    truth, expected = _run(_without(script, tv))
    assert got[at - 1].long_silences == 0
    for k in range(at, len(script)):
        assert _but_floor(got[k], expected[k]) == expected[k], k
    assert got[-1].long_silences == got[-1].last_5min.long_silences == 1
    if retract_s < 7.0:
        assert got[at].current_silence_s == pytest.approx(5.5 + 0.02)
    final = truth.finalize()
    assert _but_floor(live.finalize(), final) == final
    assert live.timeline() == truth.timeline()


def test_overlap_with_the_tv_becomes_the_clients_talk_alone() -> None:
    """The client talks 0.5-2.8 s and 4-6 s over a TV taken for the therapist 1-3 s. At
    3.1 s the client is in a pause not decided yet, so the TV's last frames are final for
    the therapist but not yet joined with the client's: they are taken back too. Overlap,
    talk and silence become the truth's; the floor (the client's talk was an interruption
    of "the therapist") is not redone."""
    tv = _spans((1.0, 3.0))
    script = _script(9.0, tv, _spans((0.5, 2.8), (4.0, 6.0)))
    at = round(3.1 * F)
    live, got = _run(script, at, tv)
    truth, expected = _run(_without(script, tv))
    assert got[at - 1].overlap_s == pytest.approx(1.8)
    assert got[-1].turns != expected[-1].turns  # the floor stays as it was decided
    for k in range(round(3.6 * F), len(script)):
        assert _but_floor(got[k], expected[k]) == expected[k], k
    final = live.finalize()
    assert final.overlap_s == 0.0
    assert _but_floor(final, truth.finalize()) == truth.finalize()
    assert live.timeline() == truth.timeline()


def test_frames_before_the_5_minute_window_are_left_as_counted() -> None:
    """With a 10 s window, a TV taken for the therapist 1-8 s retracted at 14 s: the window
    then holds 4-14 s, so 4-8 s are taken back (the window's totals are the truth's) and
    1-4 s stay in the session totals: exactly 3 s more talk than the truth, 3 s less
    silence."""
    config = SignalConfig(window_s=10.0)
    tv = _spans((1.0, 8.0))
    script = _script(30.0, _spans((1.0, 8.0), (20.0, 25.0)), _spans((26.0, 28.0)))
    at = 14 * F
    _, got = _run(script, at, tv, config)
    _, expected = _run(_without(script, tv), config=config)
    for g, e in zip(got[at:], expected[at:], strict=True):
        assert g.last_5min == e.last_5min
        assert g.therapist_talk_s == pytest.approx(e.therapist_talk_s + 3.0)
        assert g.silence_s == pytest.approx(e.silence_s - 3.0)
        assert g.long_silences == e.long_silences == 1


def test_nothing_is_counted_twice_and_an_empty_retraction_changes_nothing() -> None:
    tv = _spans((1.0, 4.0))
    script = _script(12.0, _spans((1.0, 4.0), (8.0, 10.0)), _spans((5.0, 7.0)))
    engine = SessionClockEngine(SignalConfig())
    for t, c in script[: 6 * F]:
        engine.advance({T: t, C: c})
    before = engine.snapshot()
    timeline = engine.timeline()
    assert engine.retract_talk(T, []) == 0
    assert engine.retract_talk(C, tv) == 0  # the client did not talk then
    assert engine.retract_talk(T, _spans((4.5, 5.5))) == 0  # nor the therapist
    assert engine.snapshot() == before and engine.timeline() == timeline
    assert engine.retract_talk(T, tv) == 3 * F
    once = engine.snapshot()
    assert once.therapist_talk_s == pytest.approx(before.therapist_talk_s - 3.0)
    assert engine.retract_talk(T, tv + tv) == 0
    assert engine.snapshot() == once
    engine.finalize()
    assert engine.retract_talk(T, _spans((8.0, 10.0))) == 0


# --- attribution: which frames are given back --------------------------------------------


def _conversation(
    seconds: float, therapist_db: float, *, therapist_from: float = 0.0
) -> list[tuple[Level, Level]]:
    """Turns: the therapist 2 s, a pause, the client 2 s, a pause (the therapist silent
    before ``therapist_from``, where the client talks alone, 2 s on, 2.5 s off)."""
    script: list[tuple[Level, Level]] = []
    while len(script) < seconds * F:
        t = therapist_db if len(script) >= therapist_from * F else None
        script += [(t, None)] * (2 * F) + [(None, None)] * (F // 2)
        script += [(None, -20.0)] * (2 * F) + [(None, None)] * (F // 2)
    return script[: round(seconds * F)]


def _with_tv(script: list[tuple[Level, Level]], tv_db: float) -> list[tuple[Level, Level]]:
    """A TV in the therapist's room, 1.2 s on, 0.4 s off, whoever talks: where the therapist
    talks their voice drowns it (their level), elsewhere the microphone hears the TV."""
    out = []
    for k, (t, c) in enumerate(script):
        tv = tv_db if k % 80 < 60 else None
        out.append((t if t is not None else tv, c))
    return out


def _given_back(script: list[tuple[Level, Level]]) -> tuple[list[bool], list[bool]]:
    """Per frame: attributed to the therapist, and given back later."""
    att = Attributor(_BANDS, _BANDS)
    accepted = []
    given = [False] * len(script)
    for t, c in script:
        accepted.append(att.step({T: _frame(t), C: _frame(c)})[T])
        for role, spans in att.take_retractions().items():
            assert role is T
            for start, end in spans:
                for k in range(start, end):
                    assert not given[k]  # once
                    given[k] = True
    return accepted, given


def test_a_tv_before_the_therapists_first_words_is_given_back() -> None:
    """A TV 20 dB under the therapist plays from the first frame; the client talks alone
    for 12 s, then therapist and client take turns for a minute. The TV is the first voice
    in the therapist's microphone and is attributed to them (nothing says otherwise yet);
    once the louder voice that takes turns has been heard, the TV's band plays whoever
    talks, and every frame of it attributed before the therapist's first word is given
    back; none of the therapist's own."""
    script = _with_tv(_conversation(72.0, -20.0, therapist_from=12.0), -40.0)
    accepted, given = _given_back(script)
    first = 12 * F
    tv_taken = sum(accepted[:first])
    assert tv_taken > 5 * F  # without the retraction, 5 s or more of it is "the therapist"
    assert sum(given[:first]) == tv_taken
    owner = [t == -20.0 for t, _ in script]
    assert not any(g and o for g, o in zip(given, owner, strict=True))


def test_a_quiet_owners_first_words_followed_by_louder_talk_keep_every_frame() -> None:
    """The therapist starts 14 dB softer for 12 s, then speaks up; both take turns with the
    client throughout. Their reference rises 14 dB, as it does when a louder voice shows up
    a TV, but the soft words' band takes turns like the rest of their voice: nothing is
    given back."""
    script = _conversation(12.0, -34.0) + _conversation(60.0, -20.0)
    att = Attributor(_BANDS, _BANDS)
    accepted = 0
    for t, c in script:
        accepted += att.step({T: _frame(t), C: _frame(c)})[T]
        assert att.take_retractions() == {}
    quiet = sum(t == -34.0 for t, _ in script)
    assert quiet == 6 * F  # three soft turns
    reference = att.reference_dbfs(T)
    assert reference is not None and reference >= -34.0 + 10.0
    assert accepted == sum(t is not None for t, _ in script)


# --- the live path: applied to the engine, recorded, replayed ----------------------------


@pytest.fixture
def nonzero_is_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact voice activity: a frame with any sample is speech, in a quiet room (as
    tests/test_session_clock.py); levels and bands are measured, so attribution decides."""
    analyze = VoiceActivityDetector.analyze

    def forced(
        self: VoiceActivityDetector, frame: np.ndarray, silero: float | None = None
    ) -> FrameFeatures:
        features = analyze(self, frame, silero=silero)
        return dataclasses.replace(features, speech=bool(np.any(frame)), floor_dbfs=-90.0)

    monkeypatch.setattr(VoiceActivityDetector, "analyze", forced)


_AMPLITUDE = {-20.0: 8000, -40.0: 800}  # white noise at about -17 and -37 dBFS


class _Call:
    """``LiveSignals`` fed a script of (therapist, client) levels as white-noise PCM (owner
    voices at about -17 dBFS, the TV 20 dB under), on a clock the test controls."""

    def __init__(self, signals: LiveSignals, now: float = 1000.0) -> None:
        self.signals = signals
        self.now = now
        self.rng = np.random.default_rng(5)
        for role in ROLES:
            signals.set_present(role, True)

    def run(self, script: list[tuple[Level, Level]]) -> None:
        for levels in script:
            for role, level in zip(ROLES, levels, strict=True):
                if level is None:
                    pcm = np.zeros(960, dtype=np.int16)
                else:
                    a = _AMPLITUDE[level]
                    pcm = self.rng.integers(-a, a, 960).astype(np.int16)
                self.signals.on_audio(role, pcm)
            self.now += 0.02
            self.signals.step(self.now)

    def therapist_seconds(self) -> list[bool]:
        return [s.therapist for s in self.signals.engine.timeline()]


@pytest.mark.usefixtures("nonzero_is_speech")
def test_a_retraction_on_the_live_path_is_replayed_after_a_restart() -> None:
    """The TV-first conversation above through ``LiveSignals``: the TV's talk before the
    therapist's first word leaves the therapist's totals and timeline, the input record
    carries the retraction, and a server restarted from that record has the very same
    snapshot."""
    script = _with_tv(_conversation(72.0, -20.0, therapist_from=12.0), -40.0)
    call = _Call(LiveSignals("s"))
    call.run(script[: 13 * F])
    assert sum(call.therapist_seconds()[:11]) >= 8  # the TV was the therapist's talk
    call.run(script[13 * F :])
    call.now += 1.0
    call.signals.step(call.now)
    signals = call.signals
    live = signals.snapshot()
    runs = signals.input_runs()
    assert not any(call.therapist_seconds()[:11])
    assert any(code == -3 for code, _ in runs)
    restored = LiveSignals.restore("s", runs)
    assert restored.engine.snapshot() == live
    assert restored.engine.timeline() == signals.engine.timeline()
    assert restored.engine.finalize() == signals.finish()


@pytest.mark.usefixtures("nonzero_is_speech")
def test_a_retraction_after_a_restart_lands_on_the_frames_it_names() -> None:
    """The server restarts 6 s into the TV: the restored session's attributor starts
    counting anew, its engine 6 s ahead. The TV heard after the restart is given back at
    the frames where the engine counted it (6-12 s), not 6 s earlier; the therapist's own
    talk from 12 s on stays."""
    script = _with_tv(_conversation(72.0, -20.0, therapist_from=12.0), -40.0)
    before = _Call(LiveSignals("s"))
    before.run(script[: 6 * F])
    assert sum(before.therapist_seconds()) >= 3
    call = _Call(LiveSignals.restore("s", before.signals.input_runs()), before.now)
    call.run(script[6 * F :])
    seconds = call.therapist_seconds()
    assert not any(seconds[6:11])  # given back
    assert sum(seconds[:5]) >= 3  # before the restart: that attributor is gone, as counted
    assert sum(seconds[12:]) >= 20  # the therapist's own talk
    assert any(code == -3 for code, _ in call.signals.input_runs())


# --- a real room: the TV before the therapist's first word --------------------------------


@pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and sox")
def test_a_tv_before_the_therapists_first_word_is_not_their_talk(tmp_path: Path) -> None:
    """The first minute of "background-25" seed 0, the accuracy report's failing dialogue:
    a TV plays from 1.1 s, the therapist first speaks at 13.1 s. Before the retraction
    the TV's 11 s before that word were the therapist's talk (29.8 s measured, 18.5 s
    true, the client's share 0.514 for 0.619); given back once the therapist's voice has
    been heard taking turns, 2.7 s over the truth remain (share 0.599)."""
    room = generate_room_dialogue(0, CONDITIONS["background-25"], 60.0, tmp_path)
    d = room.dialogue
    first_word = int(np.argmax(d.masks[T])) / F
    assert 12.0 < first_word < 14.0
    measured = analyze_files(d.therapist_wav, d.client_wav)
    assert measured.therapist_talk_s - d.truth.therapist_talk_s < 4.0  # 11.3 s before
    share, true_share = measured.client_share, d.truth.client_share
    assert share is not None and true_share is not None
    assert abs(share - true_share) < 0.03
