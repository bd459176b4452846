"""The alliance-signal engine against exact, frame-level ground truth.

Sequences are built from (value, seconds) runs of 20 ms frames: True = speech, False =
present and silent (or muted), None = absent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.alliance.engine import (
    ROLES,
    EventKind,
    ParticipantAudio,
    Role,
    SignalConfig,
    SignalEngine,
    SignalEvent,
    Snapshot,
)
from media.alliance.payload import snapshot_from_json, snapshot_json
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    engine_truth,
    frame_mask,
    reference_metrics,
    states_from_values,
    synthesize,
)

T, C = Role.THERAPIST, Role.CLIENT
FS = 0.02
Value = bool | None


def seq(*runs: tuple[Value, float]) -> list[Value]:
    """Frames from (value, seconds) runs; seconds must be whole frames."""
    out: list[Value] = []
    for value, seconds in runs:
        frames = round(seconds / FS)
        assert abs(frames * FS - seconds) < 1e-9, seconds
        out += [value] * frames
    return out


def pad(values: list[Value], n: int, fill: Value = False) -> list[Value]:
    return values + [fill] * (n - len(values))


def run(
    therapist: Sequence[Value], client: Sequence[Value], config: SignalConfig | None = None
) -> tuple[Snapshot, list[SignalEvent], SignalEngine]:
    n = max(len(therapist), len(client))
    t_vals, c_vals = pad(list(therapist), n), pad(list(client), n)
    engine = SignalEngine(config)
    events: list[SignalEvent] = []
    for t, c in zip(t_vals, c_vals, strict=True):
        events += engine.advance({T: t, C: c})
    final = engine.finalize()
    events += engine.drain_events()
    reference = reference_metrics(
        {T: states_from_values(t_vals), C: states_from_values(c_vals)}, config
    )
    assert final == reference, "engine and reference implementation disagree"
    return final, events, engine


def kinds(events: list[SignalEvent], kind: EventKind) -> list[SignalEvent]:
    return [e for e in events if e.kind is kind]


# --- segments --------------------------------------------------------------------------------


def test_pause_of_0_48_s_is_bridged() -> None:
    snap, events, _ = run(seq((True, 1.0), (False, 0.48), (True, 1.0), (False, 1.0)), [])
    assert snap.therapist_talk_s == pytest.approx(2.48)
    assert snap.longest_monologue_s.therapist == pytest.approx(2.48)
    assert len(kinds(events, EventKind.SPEECH_START)) == 1
    assert len(kinds(events, EventKind.SPEECH_END)) == 1


def test_pause_of_0_52_s_splits_the_segment() -> None:
    snap, events, _ = run(seq((True, 1.0), (False, 0.52), (True, 1.0), (False, 1.0)), [])
    assert snap.therapist_talk_s == pytest.approx(2.0)
    assert snap.longest_monologue_s.therapist == pytest.approx(1.0)
    ends = kinds(events, EventKind.SPEECH_END)
    assert [e.t_s for e in ends] == pytest.approx([1.0, 2.52])
    # The end of a segment is decided one bridge gap after its last speech frame.
    assert ends[0].decided_s == pytest.approx(1.5)


def test_blips_shorter_than_0_1_s_are_dropped() -> None:
    blips = seq(*[(True, 0.08), (False, 1.0)] * 5)
    snap, events, _ = run(blips, [])
    assert snap.therapist_talk_s == 0
    assert snap.silence_s == pytest.approx(len(blips) * FS)
    starts = kinds(events, EventKind.SPEECH_START)
    ends = kinds(events, EventKind.SPEECH_END)
    assert len(starts) == len(ends) == 5
    assert all(e.provisional for e in starts)
    assert all(e.details["dropped"] for e in ends)


def test_segment_of_exactly_0_1_s_is_kept() -> None:
    snap, _, _ = run(seq((True, 0.1), (False, 1.0)), [])
    assert snap.therapist_talk_s == pytest.approx(0.1)


def test_mute_during_talk_is_not_speech() -> None:
    # Muted (False) for 2 s in the middle of talking: two segments, mute time is silence.
    therapist = seq((True, 3.0), (False, 2.0), (True, 3.0))
    snap, _, _ = run(therapist, seq((False, 8.0)))
    assert snap.therapist_talk_s == pytest.approx(6.0)
    assert snap.silence_s == pytest.approx(2.0)


# --- backchannels, turns, interruptions, latency ----------------------------------------------


def test_backchannel_inside_the_speakers_segment() -> None:
    therapist = seq((True, 5.0), (False, 2.0))
    client = seq((False, 2.0), (True, 0.6), (False, 4.4))
    snap, events, _ = run(therapist, client)
    assert snap.backchannels == 1
    assert snap.turns == 0
    assert snap.interruptions.client == 0
    assert snap.overlap_s == pytest.approx(0.6)
    (bc,) = kinds(events, EventKind.BACKCHANNEL)
    assert bc.role is C and bc.t_s == pytest.approx(2.0)


def test_long_utterance_inside_the_speakers_segment_is_an_interruption() -> None:
    therapist = seq((True, 5.0), (False, 2.0))
    client = seq((False, 2.0), (True, 1.2), (False, 3.8))
    snap, _, _ = run(therapist, client)
    assert snap.backchannels == 0
    assert snap.turns == 1
    assert snap.interruptions.client == 1
    assert snap.median_response_latency_s.client is None  # an interruption is not a reply


def test_short_reply_after_the_speaker_is_neither_backchannel_nor_turn() -> None:
    therapist = seq((True, 3.0), (False, 3.0))
    client = seq((False, 3.5), (True, 0.6), (False, 1.9))
    snap, _, _ = run(therapist, client)
    assert snap.backchannels == 0
    assert snap.turns == 0


def test_interruption_and_negative_latency() -> None:
    therapist = seq((True, 5.0), (False, 5.0))
    client = seq((False, 4.0), (True, 4.0), (False, 2.0))
    snap, events, _ = run(therapist, client)
    assert snap.turns == 1
    assert snap.interruptions.client == 1
    assert snap.interruptions.therapist == 0
    assert snap.median_response_latency_s.client is None
    assert snap.median_response_latency_s.therapist is None
    (turn,) = kinds(events, EventKind.TURN_CHANGE)
    assert turn.role is C and turn.details["interruption"] is True
    # The interruption is known 1 s into the client's talk, before the overlap ends.
    assert turn.decided_s == pytest.approx(5.0)
    (interruption,) = kinds(events, EventKind.INTERRUPTION)
    assert interruption.t_s == pytest.approx(4.0)


def test_turns_and_latency_medians_per_direction() -> None:
    # T 0-2 | C 2.8-5 | T 6.2-8 | C 7.5-10 (interrupts) | T 10.4-12 | C 13-15
    therapist = seq((True, 2.0), (False, 4.2), (True, 1.8), (False, 2.4), (True, 1.6), (False, 3))
    client = seq(
        (False, 2.8),
        (True, 2.2),
        (False, 2.5),
        (True, 2.5),
        (False, 3.0),
        (True, 2.0),
        (False, 0.6),
    )
    snap, events, _ = run(therapist, client)
    assert snap.turns == 5
    assert snap.interruptions.client == 1
    # Client replies: 0.8, 1.0 (-> median 0.9; the interruption at 7.5 s is not a reply).
    # Therapist: 1.2, 0.4 -> median 0.8.
    assert snap.median_response_latency_s.client == pytest.approx(0.9)
    assert snap.median_response_latency_s.therapist == pytest.approx(0.8)
    changes = kinds(events, EventKind.TURN_CHANGE)
    assert [e.role for e in changes] == [C, T, C, T, C]
    assert [e.t_s for e in changes] == pytest.approx([2.8, 6.2, 7.5, 10.4, 13.0])


def test_reply_time_is_over_genuine_turn_changes_only() -> None:
    # T 0-5 | C 4-8 interrupts | T 7-10 interrupts | C 11.2-13 replies after 1.2 s |
    # T 12.5-15 interrupts | C 15.6-17 replies after 0.6 s.
    therapist = seq((True, 5.0), (False, 2.0), (True, 3.0), (False, 2.5), (True, 2.5), (False, 2))
    client = seq(
        (False, 4.0), (True, 4.0), (False, 3.2), (True, 1.8), (False, 2.6), (True, 1.4), (False, 0)
    )
    client = pad(client, len(therapist))
    snap, events, _ = run(therapist, client)
    assert snap.turns == 5
    assert snap.interruptions.client == 1
    assert snap.interruptions.therapist == 2
    # Client: replies 1.2 and 0.6 (the interruption at 4 s is not a reply) -> median 0.9.
    assert snap.median_response_latency_s.client == pytest.approx(0.9)
    # The therapist only ever interrupted: no reply time at all, never a negative one.
    assert snap.median_response_latency_s.therapist is None
    changes = kinds(events, EventKind.TURN_CHANGE)
    assert [e.details["interruption"] for e in changes] == [True, True, False, True, False]
    assert [e.details["latency_s"] for e in changes] == pytest.approx([None, None, 1.2, None, 0.6])
    assert len(kinds(events, EventKind.INTERRUPTION)) == 3


def test_first_floor_is_not_a_turn() -> None:
    snap, events, engine = run(seq((True, 2.0), (False, 1.0)), [])
    assert snap.turns == 0
    assert not kinds(events, EventKind.TURN_CHANGE)
    assert engine.floor_holder is T


# --- silence, absence, rejoin ---------------------------------------------------------------


@pytest.mark.parametrize(("gap", "expected"), [(2.98, 0), (3.0, 1), (3.02, 1)])
def test_long_silence_threshold(gap: float, expected: int) -> None:
    therapist = seq((True, 1.0), (False, gap + 1.0))
    client = seq((False, 1.0 + gap), (True, 1.0))
    snap, events, _ = run(therapist, client)
    assert snap.silence_s == pytest.approx(gap)
    assert snap.long_silences == expected
    assert len(kinds(events, EventKind.LONG_SILENCE_START)) == expected
    assert len(kinds(events, EventKind.LONG_SILENCE_END)) == expected
    if expected:
        (end,) = kinds(events, EventKind.LONG_SILENCE_END)
        assert end.duration_s == pytest.approx(gap)


def test_absent_time_is_not_silence() -> None:
    # Therapist waits 10 s alone, client joins, 5 s of silence together, client leaves 4 s.
    therapist = seq((False, 19.0))
    client = seq((None, 10.0), (False, 5.0), (None, 4.0))
    snap, _, _ = run(therapist, client)
    assert snap.duration_s == pytest.approx(19.0)
    assert snap.absent_s == pytest.approx(14.0)
    assert snap.silence_s == pytest.approx(5.0)
    assert snap.long_silences == 1
    assert snap.last_5min.absent_s == pytest.approx(14.0)


def test_session_clock_starts_at_first_presence() -> None:
    therapist = seq((None, 30.0), (True, 2.0), (False, 1.0))
    client = seq((None, 30.0), (False, 3.0))
    snap, events, _ = run(therapist, client)
    assert snap.duration_s == pytest.approx(3.0)
    assert snap.absent_s == 0
    assert kinds(events, EventKind.SPEECH_START)[0].t_s == 0


def test_absence_ends_an_open_segment_and_rejoin_resumes_without_double_counting() -> None:
    # The client drops out for 0.2 s mid-sentence (shorter than the bridge gap).
    client = seq(
        (True, 3.0), (None, 0.2), (True, 1.0), (False, 1.0), (None, 5.0), (True, 2.0), (False, 1.0)
    )
    therapist = seq((False, len(client) * FS))
    snap, events, _ = run(therapist, client)
    assert snap.client_talk_s == pytest.approx(6.0)
    assert len(kinds(events, EventKind.SPEECH_END)) == 3
    assert snap.duration_s == pytest.approx(len(client) * FS)
    assert snap.absent_s == pytest.approx(5.2)


def test_missing_role_means_absent() -> None:
    engine = SignalEngine()
    for _ in range(50):
        engine.advance({T: True})
    snap = engine.finalize()
    assert snap.therapist_talk_s == pytest.approx(1.0)
    assert snap.absent_s == pytest.approx(1.0)
    assert snap.silence_s == 0


# --- live view: provisional tail, speaking, current silence, window -------------------------


def test_speaking_and_current_silence_are_live() -> None:
    engine = SignalEngine()
    for _ in range(100):  # 2 s of client speech
        engine.advance({T: False, C: True})
    snap = engine.snapshot()
    assert snap.speaking == (C,)
    assert snap.client_talk_s == pytest.approx(2.0)  # provisional, no lag
    assert snap.current_silence_s == 0
    for _ in range(20):  # 0.4 s pause: could still be bridged
        engine.advance({T: False, C: False})
    snap = engine.snapshot()
    assert snap.speaking == (C,)
    assert snap.current_silence_s == pytest.approx(0.4)
    for _ in range(30):
        engine.advance({T: False, C: False})
    snap = engine.snapshot()
    assert snap.speaking == ()
    assert snap.current_silence_s == pytest.approx(1.0)
    assert snap.client_talk_s == pytest.approx(2.0)
    for _ in range(100):
        engine.advance({T: False, C: False})
    snap = engine.snapshot()
    assert snap.current_silence_s == pytest.approx(3.0)
    assert snap.long_silences == 1
    engine.advance({T: True, C: False})
    snap = engine.snapshot()
    assert snap.speaking == (T,)
    assert snap.current_silence_s == 0


def test_speech_start_is_immediate_and_speech_end_after_the_bridge_gap() -> None:
    engine = SignalEngine()
    engine.advance({T: False, C: False})
    events = engine.advance({T: True, C: False})
    assert [e.kind for e in events] == [EventKind.SPEECH_START]
    assert events[0].role is T and events[0].t_s == pytest.approx(0.02)
    for _ in range(49):
        assert not kinds(engine.advance({T: True, C: False}), EventKind.SPEECH_END)
    for i in range(25):
        events = engine.advance({T: False, C: False})
        assert bool(kinds(events, EventKind.SPEECH_END)) == (i == 24)
    (end,) = kinds(events, EventKind.SPEECH_END)
    assert end.t_s == pytest.approx(1.02) and end.duration_s == pytest.approx(1.0)


def test_last_5_minutes_window() -> None:
    # 6 minutes: therapist talks the first 2 minutes, client the last 4.
    therapist = seq((True, 120.0), (False, 240.0))
    client = seq((False, 120.0), (True, 240.0))
    snap, _, _ = run(therapist, client)
    window = snap.last_5min
    assert window.duration_s == pytest.approx(300.0)
    assert window.therapist_talk_s == pytest.approx(60.0)
    assert window.client_talk_s == pytest.approx(240.0)
    assert window.client_share == pytest.approx(0.8)
    assert window.turns == 1
    assert snap.client_share == pytest.approx(240 / 360)


def test_window_counts_events_by_start_time() -> None:
    cfg = SignalConfig(window_s=10.0)
    therapist = seq((True, 2.0), (False, 5.0), (True, 2.0), (False, 20.0))
    client = seq((False, 3.0), (True, 2.0), (False, 24.0))
    snap, _, _ = run(therapist, client, cfg)
    assert snap.turns == 2
    assert snap.long_silences == 1
    assert snap.last_5min.turns == 0  # both changes are older than 10 s
    assert snap.last_5min.long_silences == 1  # the silence is still going on
    assert snap.last_5min.duration_s == pytest.approx(10.0)
    assert snap.last_5min.silence_s == pytest.approx(10.0)


def test_client_share_is_none_without_talk() -> None:
    snap, _, _ = run(seq((False, 2.0)), seq((False, 2.0)))
    assert snap.client_share is None
    assert snap.last_5min.client_share is None
    assert snap.median_response_latency_s.client is None


def test_snapshot_dict_keys_and_round_trip() -> None:
    therapist = seq((True, 5.0), (False, 5.0))
    client = seq((False, 4.0), (True, 4.0), (False, 2.0))
    snap, _, _ = run(therapist, client)
    data = snapshot_json(snap)
    assert set(data) == {
        "duration_s", "therapist_talk_s", "client_talk_s", "client_share", "silence_s",
        "overlap_s", "long_silences", "longest_monologue_s", "turns", "interruptions",
        "backchannels", "median_response_latency_s", "absent_s", "last_5min", "speaking",
        "current_silence_s",
    }  # fmt: skip
    assert set(data["last_5min"]) == {
        "duration_s", "therapist_talk_s", "client_talk_s", "client_share", "silence_s",
        "overlap_s", "long_silences", "turns", "interruptions", "backchannels", "absent_s",
    }  # fmt: skip
    assert set(data["longest_monologue_s"]) == {"therapist", "client"}
    text = json.dumps(data)
    again = snapshot_from_json(json.loads(text))
    assert snapshot_json(again) == data


def test_timeline_majority_per_second() -> None:
    therapist = seq((True, 2.5), (False, 2.5))
    client = seq((False, 3.0), (None, 2.0))
    _, _, engine = run(therapist, client)
    timeline = engine.timeline()
    assert [s.second for s in timeline] == [0, 1, 2, 3, 4]
    assert [s.therapist for s in timeline] == [True, True, True, False, False]
    assert [s.client_absent for s in timeline] == [False, False, False, True, True]
    assert engine.timeline_since(3) == timeline[3:]


def test_advance_after_finalize_is_an_error() -> None:
    engine = SignalEngine()
    engine.advance({T: True, C: False})
    first = engine.finalize()
    assert engine.finalize() == first
    with pytest.raises(RuntimeError):
        engine.advance({T: True, C: False})


def test_state_stays_bounded_on_long_sessions() -> None:
    """One simulated hour of alternating talk: look-up structures must not grow."""
    engine = SignalEngine()
    pattern = seq((True, 3.0), (False, 1.0)) + seq((False, 4.0))
    client_pattern = seq((False, 4.0)) + seq((True, 3.0), (False, 1.0))
    for _ in range(450):
        for t, c in zip(pattern, client_pattern, strict=True):
            engine.advance({T: t, C: c})
        assert all(len(engine._tracks[r].segments) <= 3 for r in ROLES)
        assert len(engine._pending) <= 2
    snap = engine.snapshot()
    assert snap.turns == 899
    assert snap.last_5min.turns == 75


# --- engine == reference on random sessions ---------------------------------------------------

_runs = st.lists(
    st.tuples(
        st.sampled_from([True, True, False, False, None]),
        st.one_of(st.integers(1, 6), st.integers(1, 40), st.integers(20, 200)),
    ),
    min_size=1,
    max_size=40,
)
_configs = st.builds(
    SignalConfig,
    long_silence_s=st.sampled_from([3.0, 0.5]),
    backchannel_max_s=st.sampled_from([1.0, 1.5, 0.3]),
    turn_min_s=st.sampled_from([1.0, 0.4]),
    window_s=st.sampled_from([300.0, 2.0, 10.0]),
)


def _expand(runs: list[tuple[Value, int]]) -> list[Value]:
    return [v for v, n in runs for _ in range(n)]


@settings(
    max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(t_runs=_runs, c_runs=_runs, config=_configs)
def test_engine_matches_reference_implementation(
    t_runs: list[tuple[Value, int]], c_runs: list[tuple[Value, int]], config: SignalConfig
) -> None:
    t_vals, c_vals = _expand(t_runs), _expand(c_runs)
    n = max(len(t_vals), len(c_vals))
    t_vals, c_vals = pad(t_vals, n, None), pad(c_vals, n, None)
    engine = SignalEngine(config)
    open_roles: set[Role] = set()
    for i, (t, c) in enumerate(zip(t_vals, c_vals, strict=True)):
        for event in engine.advance({T: t, C: c}):
            if event.kind is EventKind.SPEECH_START and event.role is not None:
                open_roles.add(event.role)
            elif event.kind is EventKind.SPEECH_END and event.role is not None:
                open_roles.discard(event.role)
            assert event.decided_s >= event.t_s - 1e-9
        if i % 37 == 0:
            live = engine.snapshot()
            # "speaking" is exactly the set of started-but-not-ended segments.
            assert set(live.speaking) == open_roles
            prefix = reference_metrics(
                {T: states_from_values(t_vals[: i + 1]), C: states_from_values(c_vals[: i + 1])},
                config,
            )
            assert live.duration_s == pytest.approx(prefix.duration_s)
            assert live.absent_s == pytest.approx(prefix.absent_s)
            # The provisional tail may count a not-yet-confirmed candidate as talk.
            slack = config.min_segment_s + 1e-9
            assert abs(live.therapist_talk_s - prefix.therapist_talk_s) <= slack
            assert abs(live.client_talk_s - prefix.client_talk_s) <= slack
    final = engine.finalize()
    reference = reference_metrics(
        {T: states_from_values(t_vals), C: states_from_values(c_vals)}, config
    )
    assert final == reference
    medians = final.median_response_latency_s
    assert all(m is None or m >= 0 for m in (medians.therapist, medians.client))


# --- the audio path: ParticipantAudio + VAD at known times ------------------------------------


def _tone(seconds: float, level_dbfs: float = -20.0, f0: float = 200.0) -> np.ndarray:
    """A voice-like harmonic tone with a little vibrato (webrtcvad wants pitch energy)."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * (f0 * t + 3.0 * np.sin(2 * np.pi * 5 * t))
    x = np.zeros_like(phase)
    for h in range(1, 12):
        x = x + np.sin(h * phase) / h
    rms = float(np.sqrt(np.mean(x**2)))
    x = x / rms * 10 ** (level_dbfs / 20)
    return (x * 32767).astype(np.int16)


def _feed(feed: ParticipantAudio, tracks: dict[Role, np.ndarray]) -> Snapshot:
    n = max(t.size for t in tracks.values()) // FRAME_SAMPLES
    for role in ROLES:
        feed.set_present(role, True)
    for i in range(n):
        for role in ROLES:
            feed.push(role, tracks[role][i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        feed.tick()
    return feed.engine.finalize()


def test_participant_audio_with_tones_at_known_times() -> None:
    silence = np.zeros(SAMPLE_RATE, dtype=np.int16)
    therapist = np.concatenate(
        [silence, _tone(2.0), silence * 0, np.zeros(4 * SAMPLE_RATE, dtype=np.int16)]
    )
    client = np.concatenate(
        [np.zeros(4 * SAMPLE_RATE, dtype=np.int16), _tone(1.5, -30), silence, silence]
    )
    snap = _feed(ParticipantAudio(), {T: therapist[: 7 * SAMPLE_RATE], C: client})
    assert snap.therapist_talk_s == pytest.approx(2.0, abs=0.04)
    assert snap.client_talk_s == pytest.approx(1.5, abs=0.04)
    assert snap.turns == 1
    assert snap.median_response_latency_s.client == pytest.approx(1.0, abs=0.04)


def test_participant_audio_presence_and_mute() -> None:
    feed = ParticipantAudio()
    tone = _tone(1.0)
    feed.set_present(T, True)
    for i in range(50):
        feed.push(T, tone[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        feed.tick()
    feed.set_muted(T, True)
    for i in range(50):
        feed.push(T, tone[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        feed.tick()
    snap = feed.engine.finalize()
    assert snap.therapist_talk_s == pytest.approx(1.0, abs=0.04)
    assert snap.absent_s == pytest.approx(2.0)  # the client never came


def test_participant_audio_accepts_odd_chunk_sizes_and_bounds_backlog() -> None:
    feed = ParticipantAudio(max_backlog_frames=10)
    feed.set_present(T, True)
    tone = _tone(1.0)
    assert feed.push(T, tone[:500]) == 0
    assert feed.push(T, tone[500:1000]) == 1
    feed.push(T, tone[1000:])
    assert feed.queued(T) == 10
    feed.set_present(T, False)
    assert feed.queued(T) == 0


def test_participant_audio_with_espeak_speech_matches_truth_within_frames() -> None:
    lines = [
        ("Thank you for coming in today, how are you feeling?", "en-us", 160),
        ("I have been better, to be honest.", "en+f3", 170),
    ]
    n = 12 * SAMPLE_RATE
    tracks = {r: np.zeros(n, dtype=np.float64) for r in ROLES}
    masks = {r: np.zeros(n // FRAME_SAMPLES, dtype=bool) for r in ROLES}
    for role, start, (text, voice, speed) in zip((T, C), (1.0, 6.0), lines, strict=True):
        utt = synthesize(text, voice, speed) * 10 ** (-6 / 20)
        offset = round(start * SAMPLE_RATE)
        tracks[role][offset : offset + utt.size] = utt
        masks[role] |= frame_mask(utt, offset, n // FRAME_SAMPLES)
    truth = engine_truth(masks)
    pcm = {r: (tracks[r] * 32767).astype(np.int16) for r in ROLES}
    snap = _feed(ParticipantAudio(), pcm)
    # Clean speech: every segment edge within a couple of frames of the truth.
    assert snap.therapist_talk_s == pytest.approx(truth.therapist_talk_s, abs=4 * FS)
    assert snap.client_talk_s == pytest.approx(truth.client_talk_s, abs=4 * FS)
    assert snap.turns == truth.turns == 1
    assert snap.median_response_latency_s.client == pytest.approx(
        truth.median_response_latency_s.client, abs=3 * FS
    )
