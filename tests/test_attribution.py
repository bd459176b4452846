"""Attribution against exact truth: echo of the other participant and a TV in the room must
not count as a participant's talk, while real double-talk must survive.

The rooms are tests/fixtures/rooms.py's (the dialogue's clean speech plus the degradation,
truth from the clean speech only); dialogues are one minute so the file stays quick.
Without attribution (the bare VAD verdicts) every test here fails: echo at −25 dB adds
40–55 % to the listener's talk and tens of seconds of phantom overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from media.alliance.attribution import AttributionTuning, Attributor
from media.alliance.engine import ROLES, ParticipantAudio, Role, Snapshot
from media.alliance.offline import analyze_files
from media.alliance.vad import VoiceActivityDetector
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    engine_truth,
    frame_mask,
    have_tools,
    read_wav,
    synthesize,
    synthetic_voice,
)
from tests.fixtures.rooms import (
    CONDITIONS,
    RoomCondition,
    RoomDialogue,
    fft_convolve,
    generate_room_dialogue,
    room_ir,
)

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and sox")

SECONDS = 60.0
T, C = Role.THERAPIST, Role.CLIENT


def _rel(measured: float, truth: float) -> float:
    return abs(measured - truth) / truth


def _assert_room_bar(
    m: Snapshot, t: Snapshot, talk_rel: float = 0.10, overlap_abs: float = 3.0
) -> None:
    """The real-room bar of tests/fixtures/room_report.py (``talk_rel`` and ``overlap_abs``
    loosen it only where the product bar is not met yet; the report says so)."""
    assert m.client_share == pytest.approx(t.client_share, abs=0.03)
    assert _rel(m.therapist_talk_s, t.therapist_talk_s) <= talk_rel
    assert _rel(m.client_talk_s, t.client_talk_s) <= talk_rel
    assert _rel(m.silence_s, t.silence_s) <= 0.10 or abs(m.silence_s - t.silence_s) <= 3
    assert _rel(m.overlap_s, t.overlap_s) <= 0.30 or abs(m.overlap_s - t.overlap_s) <= overlap_abs
    assert abs(m.long_silences - t.long_silences) <= 1


def _room(seed: int, condition: RoomCondition, tmp_path: Path) -> RoomDialogue:
    return generate_room_dialogue(seed, condition, SECONDS, tmp_path)


@pytest.mark.parametrize("seed", [2, 5])
def test_residual_echo_at_minus_25_db_is_not_the_listeners_talk(seed: int, tmp_path: Path) -> None:
    condition = RoomCondition("echo-test", echo_db=-25.0, echo_delay_ms=(80.0, 80.0))
    d = _room(seed, condition, tmp_path).dialogue
    _assert_room_bar(analyze_files(d.therapist_wav, d.client_wav), d.truth)


def test_loud_echo_with_long_delay_and_wandering_gain(tmp_path: Path) -> None:
    condition = RoomCondition(
        "echo-test", echo_db=-15.0, echo_delay_ms=(230.0, 250.0), echo_wander_db=2.0
    )
    d = _room(4, condition, tmp_path).dialogue
    _assert_room_bar(analyze_files(d.therapist_wav, d.client_wav), d.truth)


@pytest.mark.parametrize("seed", [1, 6])
def test_tv_at_minus_15_db_is_not_the_listeners_talk(seed: int, tmp_path: Path) -> None:
    """A TV 15 dB under the speaker, on three quarters of the time: without attribution
    talk is +60…130 % and silence nearly vanishes. Talk is held to 15 % and overlap to 4 s,
    not the bar's 10 % and 3 s (seed 6 with recorded background voices: +3.3 s): the level
    model cannot know the TV from its owner before the owner has spoken."""
    d = _room(seed, RoomCondition("tv-test", background_db=-15.0), tmp_path).dialogue
    measured = analyze_files(d.therapist_wav, d.client_wav)
    _assert_room_bar(measured, d.truth, talk_rel=0.15, overlap_abs=4.0)


def _echo_of(x: np.ndarray, level_db: float, delay_ms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # FFT convolution: np.convolve took minutes on 48 s at 48 kHz.
    y = fft_convolve(x, room_ir(0.3, 3.0, rng))
    delay = round(delay_ms * SAMPLE_RATE / 1000)
    y = np.concatenate([np.zeros(delay), y[: y.size - delay]])
    return y * 10 ** (level_db / 20)


def test_double_talk_survives_loud_echo() -> None:
    """Both talk at once for seconds at a time, each mic also carrying the other at −15 dB:
    the overlap is real and must be measured as such."""
    n = 48 * SAMPLE_RATE
    frames = n // FRAME_SAMPLES
    speech = {r: np.zeros(n) for r in ROLES}
    masks = {r: np.zeros(frames, dtype=bool) for r in ROLES}
    script = [
        # 20 s of ordinary turns: the room is learned from these.
        (T, 0.5, "How have things been since we last met?"),
        (C, 3.0, "Honestly, it has been a pretty rough couple of weeks."),
        (T, 6.5, "What was that like for you?"),
        (C, 8.5, "I slept badly most nights, maybe four or five hours."),
        (T, 12.5, "Can you say a little more about that?"),
        (C, 15.0, "I felt like nobody was listening to me at all."),
        # Then both talk at once, over and over.
        (T, 21.0, "How have things been since we last met, and what would you like to focus on?"),
        (C, 23.0, "Honestly it has been a pretty rough couple of weeks at work."),
        (C, 29.5, "I keep thinking about what my boss said on Monday morning."),
        (T, 31.0, "Let's slow down for a moment and stay with that feeling."),
        (T, 37.0, "That makes a lot of sense."),
        (C, 38.0, "I don't know why I reacted like that."),
        (T, 41.5, "It takes courage to talk about this."),
        (C, 42.5, "Part of me knows it's not my fault."),
    ]
    voice = {T: "en-us", C: "en+f3"}
    for role, start, text in script:
        utt = synthesize(text, voice[role], 165).astype(np.float64) * 10 ** (-6 / 20)
        offset = round(start * SAMPLE_RATE)
        speech[role][offset : offset + utt.size] += utt
        masks[role] |= frame_mask(utt.astype(np.float32), offset, frames)
    truth = engine_truth(masks)
    assert truth.overlap_s > 5.0
    rng = np.random.default_rng(0)
    pcm = {}
    for i, role in enumerate(ROLES):
        other = speech[C if role is T else T]
        x = speech[role] + _echo_of(other, -15.0, 60.0 + 90.0 * i, i)
        x += rng.standard_normal(n) * 10 ** (-50 / 20)
        pcm[role] = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    m = _run(ParticipantAudio(), pcm)
    # Not lost (the point). Echo still leaks into the pauses of double-talk after only
    # 20 s of learning (measured +2.3 s overlap, +10.5 % client talk): held to the room
    # bar's "30 % or 3 s" and 15 % here.
    assert m.overlap_s >= 0.85 * truth.overlap_s
    assert m.overlap_s - truth.overlap_s <= max(3.0, 0.3 * truth.overlap_s)
    assert m.therapist_talk_s == pytest.approx(truth.therapist_talk_s, rel=0.15)
    assert m.client_talk_s == pytest.approx(truth.client_talk_s, rel=0.15)


def _run(
    feed: ParticipantAudio, pcm: dict[Role, np.ndarray], wobble: int = 0, seed: int = 0
) -> Snapshot:
    """Drive ParticipantAudio as the live path does; with ``wobble`` the client's frames
    reach the clock up to that many frames early or late, changing every second or so."""
    rng = np.random.default_rng(seed)
    n = min(x.size for x in pcm.values()) // FRAME_SAMPLES
    for role in ROLES:
        feed.set_present(role, True)
    ahead = 0
    pushed = dict.fromkeys(ROLES, 0)
    for i in range(n):
        if wobble and rng.random() < 0.02:
            ahead = int(rng.integers(0, wobble + 1))
        for role in ROLES:
            want = min(n, i + 1 + (ahead if role is C else 0))
            while pushed[role] < want:
                k = pushed[role]
                feed.push(role, pcm[role][k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES])
                pushed[role] += 1
        feed.tick()
    return feed.engine.finalize()


def test_echo_attribution_tolerates_frame_jitter_between_tracks(tmp_path: Path) -> None:
    condition = RoomCondition("echo-test", echo_db=-25.0, echo_delay_ms=(120.0, 120.0))
    d = _room(2, condition, tmp_path).dialogue
    pcm = {role: read_wav(d.wav(role))[0] for role in ROLES}
    _assert_room_bar(_run(ParticipantAudio(max_backlog_frames=None), pcm, wobble=3), d.truth)


def _ticks(feed: ParticipantAudio, pcm: dict[Role, np.ndarray]) -> Iterator[int]:
    """Both present; push one frame per role and tick, yielding each frame's index after
    its tick (the test inspects ``feed`` there)."""
    for role in ROLES:
        feed.set_present(role, True)
    n = min(x.size for x in pcm.values()) // FRAME_SAMPLES
    for i in range(n):
        for role in ROLES:
            feed.push(role, pcm[role][i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        feed.tick()
        yield i


def test_engine_and_replay_record_get_attributed_verdicts(tmp_path: Path) -> None:
    condition = RoomCondition("echo-test", echo_db=-15.0, echo_delay_ms=(80.0, 80.0))
    d = _room(3, condition, tmp_path).dialogue
    pcm = {role: read_wav(d.wav(role))[0] for role in ROLES}
    feed = ParticipantAudio()
    raw = 0
    fed = 0
    n = min(x.size for x in pcm.values()) // FRAME_SAMPLES
    for _ in _ticks(feed, pcm):
        for role in ROLES:
            raw += feed.last_raw[role]
            fed += bool(feed.last_values[role])
    truth = sum(int(d.masks[role][:n].sum()) for role in ROLES)
    # The detector alone hears the echo as speech; what the engine got mostly does not.
    assert raw - truth > 0.2 * truth
    # (Fewer frames than the truth is fine: quiet frames inside words are bridged.)
    assert fed - truth < 0.1 * (raw - truth)
    assert fed > 0.7 * truth


@pytest.mark.parametrize(
    ("seed", "drift_db"),
    [(1, None), (2, -12.0)],
    ids=["noise", "noise-and-speaker-moved-away"],
)
def test_no_echo_no_echo_veto_over_the_others_talk(
    seed: int, drift_db: float | None, tmp_path: Path
) -> None:
    """A noisy room with no loudspeaker leak at all (fan, hum, typing, a door; with the
    speaker 12 dB quieter for a minute in the second case): nothing in either microphone
    follows the other's voice, so the echo veto must leave the truth speech alone. Without
    the regression cap (``echo_reg_cap_db``) the echo gain learns the microphone's noise
    over the far power (near 0 dB in some bands) and vetoes 11-13 % of a participant's
    heard truth frames, their quiet words whenever the other talks; with it, 2-8 %. The
    cap is tested alone here (no room-rate gate). With the defaults it waits for 10 s of
    the other's sure talk (``room_min_s``), which in a one-minute room is most of it (11 %
    vetoed, measured); the three-minute "combined" room below holds the defaults to the
    bar."""
    condition = replace(CONDITIONS["noise"], name="no-echo-test", drift_db=drift_db)
    d = _room(seed, condition, tmp_path).dialogue
    pcm = {role: read_wav(d.wav(role))[0] for role in ROLES}
    feed = ParticipantAudio(
        attribution=AttributionTuning(echo_reg_cap_db=10.0, echo_cap_room_rate=None)
    )
    heard = dict.fromkeys(ROLES, 0)
    echo = dict.fromkeys(ROLES, 0)
    for i in _ticks(feed, pcm):
        for role in ROLES:
            if d.masks[role][i] and feed.last_raw[role]:
                heard[role] += 1
                echo[role] += feed.attributor.vetoed[role] == "echo"
    for role in ROLES:
        assert heard[role] > 500
        assert echo[role] <= 0.09 * heard[role], (role, echo[role], heard[role])


def test_a_speaker_who_moves_away_keeps_their_talk_in_a_room_with_echo_and_noise(
    tmp_path: Path,
) -> None:
    """Seed 1 of the "combined" room (echo −25 dB, fan, hum, typing, a door, Opus 24 kbps
    with 5 % loss, each speaker 12 dB quieter for a minute), three minutes. While a speaker
    has moved away their words over the other's talk sit under their old level, and the
    echo gain learned from them vetoed those words as echo: silence +15.4 %, client talk
    −9.3 % with the uncapped gain. The regression cap keeps the gain to what follows the
    other's voice (silence +4.7 %, client talk −0.9 %), and the room-rate gate leaves it
    uncapped where a TV is heard over the other's talk."""
    d = generate_room_dialogue(1, CONDITIONS["combined"], 180.0, tmp_path).dialogue
    m = analyze_files(d.therapist_wav, d.client_wav)
    _assert_room_bar(m, d.truth)


def test_echo_delay_is_found() -> None:
    """The far voice appears in the near mic 140 ms later, 20 dB down: the estimate settles
    on 7 frames (± the one frame a sample-level delay can straddle)."""
    far = synthetic_voice(20.0, -20.0, seed=1)
    near = _echo_of(far, -20.0, 140.0, 2) + np.random.default_rng(3).standard_normal(
        far.size
    ) * 10 ** (-55 / 20)
    detectors = {r: VoiceActivityDetector() for r in ROLES}
    att = Attributor(detectors[T].n_bands, detectors[T].n_gate_bands)
    pcm = {T: far, C: near}
    for i in range(far.size // FRAME_SAMPLES):
        frames = {
            r: detectors[r].analyze(
                np.round(pcm[r][i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] * 32767).astype(
                    np.int16
                )
            )
            for r in ROLES
        }
        att.step(frames)
    assert att.echo_delay_frames(C) in (7, 8)
